"""G_c training pairs made from single RGBD images, on device (docs/method.md §5).

One image is warped to a random camera and back (forward_backward_warp): what survives is the part
of the image that the random camera sees, with the artifacts of two warps, exactly the kind of
condition G_c meets when sampling. Everything here is jittable and runs inside the train step;
use make_training_pairs for a batch in the network encoding.
"""
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from ivd_jax.roles import augment
from ivd_jax.geometry import cameras
from ivd_jax.geometry import warp

# docs/method.md §5 defaults.
PREWARP_NOISE = 0.005
BLUR_PROB = 0.8
BLUR_SIGMA_MAX = 1.0
EROSION_SIZES = (1, 3, 5, 7, 9)


def make_training_pair(rgbd01: jax.Array, key: jax.Array, *, near: float, far: float,
                       fov_deg: float = 45.0, ssaa: int = 3, atol: float = 0.02,
                       rtol: float = 0.02, prewarp_noise: float = PREWARP_NOISE,
                       blur_prob: float = BLUR_PROB, blur_sigma_max: float = BLUR_SIGMA_MAX,
                       erosion_sizes: Sequence[int] = EROSION_SIZES) -> dict[str, jax.Array]:
  """The condition of one G_c training example.

  Args:
    rgbd01: [H, W, 4] RGB and z-buffer depth in [0, 1] (the warp encoding), seen from
      cameras.SOURCE_VIEW.
    key: PRNG key of this example.
    near, far: the depth encoding's planes (training data: 0.5, 100).
    fov_deg, ssaa, atol, rtol: warp settings (docs/method.md §4 training values by default).
    prewarp_noise: sigma ~ U(0, prewarp_noise) of the noise added to RGBD before warping.
    blur_prob: probability that the condition's colour is the ORIGINAL colour blurred with a
      3x3 Gaussian, sigma ~ U(0, blur_sigma_max) + 1e-3, instead of the warped colour.
    erosion_sizes: mask_rgb = erode(mask, k x k) with k drawn uniformly from these.

  Returns:
    dict(y_rgb [H, W, 3], y_depth [H, W, 1], mask_rgb [H, W, 1], mask [H, W, 1]) in [0, 1],
    y_rgb zero outside mask_rgb and y_depth zero outside mask.
  """
  k_view, k_noise, k_blur, k_sigma, k_erode = jax.random.split(key, 5)
  mid_view = cameras.random_training_view(k_view)
  noisy = augment.add_gaussian_noise(rgbd01, k_noise, prewarp_noise)
  warped = warp.forward_backward_warp(noisy, cameras.SOURCE_VIEW, mid_view, near=near, far=far,
                                      fov_deg=fov_deg, ssaa=ssaa, atol=atol, rtol=rtol)
  mask = warped.mask.astype(jnp.float32)
  y_rgb = warped.rgbd[..., :3]
  y_depth = warped.rgbd[..., 3:] * mask

  sigma = jax.random.uniform(k_sigma, (), jnp.float32) * blur_sigma_max + 1e-3
  blurred = augment.gaussian_blur(rgbd01[..., :3], sigma, size=3)
  y_rgb = jnp.where(jax.random.uniform(k_blur, ()) < blur_prob, blurred, y_rgb)

  # Every erosion size is computed (cheap next to the warp) and one is picked: the size must be
  # static inside erode, the choice is random per example.
  eroded = jnp.stack([warp.erode(mask, int(k)) for k in erosion_sizes])
  mask_rgb = eroded[jax.random.randint(k_erode, (), 0, len(erosion_sizes))]
  return dict(y_rgb=y_rgb * mask_rgb, y_depth=y_depth, mask_rgb=mask_rgb, mask=mask)


def make_training_pairs(rgbd: jax.Array, key: jax.Array, *, near: float, far: float,
                        **kwargs: Any) -> dict[str, jax.Array]:
  """Batched pairs in the network encoding.

  Args:
    rgbd: [B, H, W, 4] RGBD batch in [-1, 1] (what the input pipeline yields).
    key: one key for the batch; example i uses fold_in(key, i), so an example's pair does not
      depend on the batch size or on how the batch is sharded.
    near, far, **kwargs: as make_training_pair.

  Returns:
    dict(y_rgb [B, H, W, 3], y_depth [B, H, W, 1]) in [-1, 1] and dict entries mask_rgb, mask
    [B, H, W, 1] in {0, 1}.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(rgbd.shape[0]))
  rgbd01 = (rgbd.astype(jnp.float32) + 1.0) * 0.5
  pair = jax.vmap(lambda x, k: make_training_pair(x, k, near=near, far=far, **kwargs))(
      rgbd01, keys)
  pair['y_rgb'] = pair['y_rgb'] * 2.0 - 1.0
  pair['y_depth'] = pair['y_depth'] * 2.0 - 1.0
  return pair
