"""The G_c network input of docs/method.md §6.

Channel order [x_t (4), mask_rgb (1), y_rgb (3), y_depth (1), mask (1)]; the holes of the warped
condition are filled with FRESH standard normal noise at every network call.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ivd_jax.errors import UserError


def conditional_input(x_t: jax.Array, y_rgb: jax.Array, y_depth: jax.Array,
                      mask_rgb: jax.Array, mask: jax.Array, *, key: jax.Array) -> jax.Array:
  """Assembles the 10-channel G_c input.

  Args:
    x_t: [B, H, W, 4] noisy RGBD.
    y_rgb: [B, H, W, 3] warped colour in [-1, 1].
    y_depth: [B, H, W, 1] warped depth in [-1, 1].
    mask_rgb: [B, H, W, 1] 1 where the warped colour is valid.
    mask: [B, H, W, 1] 1 where the warped depth is valid.
    key: Draws the hole noise; use a new key at every call.

  Returns:
    [B, H, W, 10] float32.
  """
  shapes = {'x_t': (x_t, 4), 'y_rgb': (y_rgb, 3), 'y_depth': (y_depth, 1),
            'mask_rgb': (mask_rgb, 1), 'mask': (mask, 1)}
  for name, (value, channels) in shapes.items():
    if value.shape != x_t.shape[:3] + (channels,):
      raise UserError(f'{name} has shape {value.shape}; expected {x_t.shape[:3] + (channels,)}. '
                      'Fix: pass NHWC arrays of the same batch and size.')
  k_rgb, k_depth = jax.random.split(key)
  n_rgb = jax.random.normal(k_rgb, y_rgb.shape, jnp.float32)
  n_depth = jax.random.normal(k_depth, y_depth.shape, jnp.float32)
  y_rgb = y_rgb * mask_rgb + n_rgb * (1.0 - mask_rgb)
  y_depth = y_depth * mask + n_depth * (1.0 - mask)
  return jnp.concatenate([x_t, mask_rgb, y_rgb, y_depth, mask], axis=-1).astype(jnp.float32)
