"""Pictures on the host: uint8 conversion, colourised depth, grids and PNG files.

Everything works on numpy arrays in the warp encoding (RGB and the z-buffer depth channel both in
[0, 1], docs/method.md "Depth"). Nothing here compiles.
"""
from typing import Optional

import imageio.v3 as iio
import numpy as np

from ivd_jax.io import paths

# Coefficients of the polynomial fit to the Turbo colour map (Mikhailov 2019, Apache 2.0), so the
# depth pictures need no matplotlib: channel = sum_k c_k x^k for x in [0, 1].
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
], np.float64)


def to_uint8(x01: np.ndarray) -> np.ndarray:
  """[0, 1] floats -> uint8 with rounding; values outside are clipped."""
  return np.round(np.clip(np.asarray(x01, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def colourise_depth(zbuf: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
  """Turbo-coloured picture of a z-buffer depth map (near = red, far = blue).

  Args:
    zbuf: [..., H, W] or [..., H, W, 1] z-buffer depth in [0, 1] (0 = near plane).
    mask: optional [..., H, W(, 1)] validity; invalid pixels are drawn black.

  Returns:
    uint8 [..., H, W, 3].
  """
  z = np.asarray(zbuf, np.float64)
  if z.ndim >= 3 and z.shape[-1] == 1:
    z = z[..., 0]
  # The z-buffer encoding is already disparity-like; stretching it per image with its own range
  # keeps both near and far content readable whatever near/far the depth was encoded with.
  x = 1.0 - np.clip(z, 0.0, 1.0)
  powers = np.stack([x**k for k in range(_TURBO.shape[1])], axis=-1)  # [..., H, W, 6]
  rgb = np.clip(powers @ _TURBO.T, 0.0, 1.0)
  if mask is not None:
    m = np.asarray(mask)
    if m.ndim == rgb.ndim:
      m = m[..., 0]
    rgb = rgb * (m[..., None] > 0.5)
  return to_uint8(rgb)


def image_grid(images: np.ndarray, cols: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles [N, H, W, C] uint8 images row-major into one [R*(H+pad)-pad, ...] picture."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  cols = max(1, min(cols, n))
  rows = -(-n // cols)
  grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, images.dtype)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[i]
  return grid


def save_png(path: str, image: np.ndarray) -> str:
  """Writes a uint8 [H, W, 3] (or [H, W]) image; floats are taken as [0, 1]. Local or gs://."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = to_uint8(image)
  paths.write_bytes(path, iio.imwrite('<bytes>', image, extension='.png'))
  return path
