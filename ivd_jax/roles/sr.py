"""The super-resolution network G_sr: an RGBD image from its low-resolution copy.

The reference (its 256_128 `SuperResCFG` configs) trains on pairs of a high-resolution RGBD image
and a low-resolution copy: colour Lanczos-resized, then blurred with a 3 x 3 Gaussian of sigma
~ U(0, 1) + 1e-3; depth nearest-resized. The network sees [x_t, the copy upsampled bilinearly
(half-pixel centres)], 8 channels, and predicts eps like G_u (label dropout included).

Here the copy is made inside the jitted train step from the high-resolution batch: a separable
Lanczos-3 and a 3 x 3 blur cost a small fraction of a UNet step, need no second image per record
and draw a new blur every step. The reference resizes the ORIGINAL photo to each size; the copy of
the high-resolution crop differs from that only within the Lanczos support at the crop's border.
Every function is jittable; resizes match PIL's LANCZOS / NEAREST and torch's bilinear
(align_corners=False) exactly (tests/test_sr.py).
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp

from ivd_jax import errors
from ivd_jax.roles import augment

# The reference adds this to its blur sigma, so no copy is ever left unblurred.
MIN_BLUR_SIGMA = 1e-3


def lanczos_resize(image: jax.Array, size: int) -> jax.Array:
  """[..., H, W, C] -> [..., size, size, C], PIL's LANCZOS (Lanczos-3, widened when shrinking)."""
  shape = image.shape[:-3] + (size, size, image.shape[-1])
  return jax.image.resize(image, shape, 'lanczos3', antialias=True)


def nearest_resize(image: jax.Array, size: int) -> jax.Array:
  """[..., H, W, C] -> [..., size, size, C] like PIL's NEAREST (source floor((i + .5) H / size))."""
  h, w = image.shape[-3:-1]
  rows = jnp.floor((jnp.arange(size) + 0.5) * h / size).astype(jnp.int32)
  cols = jnp.floor((jnp.arange(size) + 0.5) * w / size).astype(jnp.int32)
  return jnp.take(jnp.take(image, rows, axis=-3), cols, axis=-2)


def bilinear_upsample(image: jax.Array, size: int) -> jax.Array:
  """[..., h, w, C] -> [..., size, size, C], torch's bilinear with align_corners=False."""
  shape = image.shape[:-3] + (size, size, image.shape[-1])
  return jax.image.resize(image, shape, 'bilinear', antialias=False)


def low_resolution_copy(rgbd: jax.Array, key: jax.Array, *, low_resolution: int,
                        blur_sigma_max: float) -> jax.Array:
  """The reference's low-resolution training copy of a batch.

  Args:
    rgbd: [B, H, W, 4] in the network encoding [-1, 1].
    key: draws one blur sigma per example.
    low_resolution: the copy's size.
    blur_sigma_max: sigma ~ U(0, blur_sigma_max) + 1e-3 of the 3 x 3 Gaussian on the colour.

  Returns:
    [B, low_resolution, low_resolution, 4] in [-1, 1].
  """
  colour = jnp.clip(lanczos_resize(rgbd[..., :3], low_resolution), -1.0, 1.0)
  sigma = jax.random.uniform(key, (rgbd.shape[0],)) * blur_sigma_max + MIN_BLUR_SIGMA
  colour = jax.vmap(augment.gaussian_blur)(colour, sigma)
  return jnp.concatenate([colour, nearest_resize(rgbd[..., 3:], low_resolution)], -1)


def condition_from_low(low: jax.Array, resolution: int) -> dict[str, jax.Array]:
  """The network's condition from a low-resolution RGBD [B, h, w, 4] (network encoding).

  y_rgb / y_depth: the copy upsampled bilinearly to `resolution` (computed once, not at every
  network call); mask_rgb / mask: ones, since the copy covers every pixel (the names and the
  picture of G_c's condition, so training previews show it the same way).
  """
  up = bilinear_upsample(low, resolution)
  ones = jnp.ones(up.shape[:-1] + (1,), up.dtype)
  return dict(y_rgb=up[..., :3], y_depth=up[..., 3:], mask_rgb=ones, mask=ones)


def low_resolution_of(config: Any) -> int:
  """config.sr.low_resolution; checkpoints without an `sr` section (the reference's 256_128
  networks) take half the network's size."""
  sr = config.get('sr') if hasattr(config, 'get') else None
  if sr and sr.get('low_resolution'):
    return int(sr['low_resolution'])
  return int(config['model']['image_size']) // 2


def training_condition(x0: jax.Array, key: jax.Array, config: Any) -> dict[str, jax.Array]:
  """Role.make_condition of G_sr: the reference's low-resolution copy of x0, upsampled."""
  resolution = x0.shape[1]
  low = low_resolution_of(config)
  if not 0 < low < resolution:
    raise errors.ConfigError('sr.low_resolution', f'{low} px is not below the network\'s '
                             f'{resolution} px', f'use a smaller size, e.g. {resolution // 2}')
  copy = low_resolution_copy(x0, key, low_resolution=low,
                             blur_sigma_max=float(config.sr.blur_sigma_max))
  return condition_from_low(copy, resolution)


def network_input(x_t: jax.Array, condition: Optional[dict[str, jax.Array]],
                  key: jax.Array) -> jax.Array:
  """Role.network_input of G_sr: [x_t (4), upsampled low-resolution RGBD (4)]."""
  del key  # the condition has no holes to fill with noise
  return jnp.concatenate([x_t, condition['y_rgb'], condition['y_depth']], -1)
