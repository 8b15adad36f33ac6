"""The G_c network input of METHOD 6.

Channel order [x_t (4), mask_rgb (1), y_rgb (3), y_depth (1), mask (1)]; the holes of the warped
condition are filled with FRESH standard normal noise at every network call.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ivd_jax.errors import UserError

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


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


def conditional_eps_fn(net_fn: EpsFn, y_rgb: jax.Array, y_depth: jax.Array, mask_rgb: jax.Array,
                       mask: jax.Array, *, key: jax.Array) -> EpsFn:
  """Wraps a 10-channel network into a sampler eps_fn(x_t, t) with fresh hole noise per call.

  The hole noise key is `key` folded with the call's timestep, so every sampler step draws new
  noise while a run stays reproducible. `net_fn(inputs [B, H, W, 10], t)` may itself apply
  classifier-free guidance (samplers.guided_eps_fn); both of its branches then see the same
  input, as in the reference.
  """
  def eps_fn(x_t: jax.Array, t: jax.Array) -> jax.Array:
    step_key = jax.random.fold_in(key, t[0])
    return net_fn(conditional_input(x_t, y_rgb, y_depth, mask_rgb, mask, key=step_key), t)
  return eps_fn
