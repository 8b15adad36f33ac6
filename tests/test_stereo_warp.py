"""A real RGB-D check of the warp: Middlebury 2014 'motorcycle' (scikit-image's stereo pair).

The left image is lifted to 3D with the ground-truth disparity and warped into the right camera;
inside the warp's mask it must reproduce the real right photograph.
"""
import numpy as np
from PIL import Image
import pytest
import skimage.data

from ivd_jax.geometry import depth as depth_lib
from ivd_jax.geometry import warp

# Calibration of the 4x down-sampled pair shipped with scikit-image (its docstring).
FOCAL_PX, CX, CY, DOFFS_PX, BASELINE_M = 994.978, 311.193, 254.877, 31.086, 0.193001
HALF_PX = 244.0  # half side of the square crop centred on each camera's principal point
RES = 128
NEAR, FAR = 0.5, 100.0


def centred_crop(image: np.ndarray, cx: float, cy: float, resample) -> np.ndarray:
  """Square crop centred on the principal point (sub-pixel box; PIL pixel centres at i + .5),
  resized to RES: a centred pinhole camera with fov 2 atan(HALF_PX / FOCAL_PX)."""
  box = (cx + 0.5 - HALF_PX, cy + 0.5 - HALF_PX, cx + 0.5 + HALF_PX, cy + 0.5 + HALF_PX)
  return np.asarray(Image.fromarray(image).resize((RES, RES), resample, box=box))


@pytest.fixture(scope='module')
def stereo():
  left, right, disparity = skimage.data.stereo_motorcycle()
  fov_deg = float(np.degrees(2 * np.arctan(HALF_PX / FOCAL_PX)))
  left_rgb = centred_crop(left, CX, CY, Image.LANCZOS) / 255.0
  # The right camera's principal point is DOFFS_PX to the right of the left one's.
  right_rgb = centred_crop(right, CX + DOFFS_PX, CY, Image.LANCZOS) / 255.0
  # Middlebury: Z = baseline * f / (d + doffs); pixels without ground truth are NaN/inf.
  with np.errstate(divide='ignore', invalid='ignore'):
    depth = BASELINE_M * FOCAL_PX / (disparity.astype(np.float64) + DOFFS_PX)
  depth = np.where(np.isfinite(disparity), depth, np.nan).astype(np.float32)
  depth = centred_crop(depth, CX, CY, Image.NEAREST)
  zbuf = np.asarray(depth_lib.zbuf_from_depth(depth, NEAR, FAR))  # NaN stays NaN: invalid
  rgbd = np.concatenate([left_rgb, zbuf[..., None]], -1).astype(np.float32)
  left_view = np.eye(4, dtype=np.float32)  # rectified: same orientation, looking down -z
  right_view = np.eye(4, dtype=np.float32)
  right_view[0, 3] = -BASELINE_M  # the right camera sits BASELINE_M along +x
  out = warp.warp_rgbd(rgbd, left_view, right_view, near=NEAR, far=FAR, fov_deg=fov_deg)
  return dict(left=left_rgb, right=right_rgb, depth=depth, rgbd=np.asarray(out.rgbd),
              mask=np.asarray(out.mask[..., 0]) > 0)


def psnr(a, b, mask):
  return float(-10 * np.log10(((a - b) ** 2)[mask].mean()))


def test_warp_left_to_right_reproduces_the_right_photo(stereo):
  """Measured at 128 px (crop 488 px around each principal point, fov 27.56 deg): 58.6 % of
  the right view is covered, colour PSNR 28.5 dB inside the mask, against 11.8 dB for the
  unwarped left image on the same pixels."""
  mask = stereo['mask']
  assert np.isnan(stereo['depth']).mean() > 0.05  # the real map has holes
  assert 2.0 < np.nanmin(stereo['depth']) and np.nanmax(stereo['depth']) < 5.1  # metres
  assert 0.5 < mask.mean() < 0.7
  warped = psnr(stereo['rgbd'][..., :3], stereo['right'], mask)
  unwarped = psnr(stereo['left'], stereo['right'], mask)
  assert warped > 27.5, warped
  assert warped - unwarped > 15.0, (warped, unwarped)
  assert np.isfinite(stereo['rgbd']).all()
  assert (stereo['rgbd'][~mask] == 0).all()


def test_disoccluded_border_is_not_covered(stereo):
  """The right camera sees beyond the left image's right border: those columns stay empty."""
  mask = stereo['mask']
  # The nearest point (2.1 m) moves f * B / Z = 91 px (23 px at 128) between the views; the
  # farthest (5 m) 38 px (10 px at 128): the last ~10 columns cannot be seen from the left.
  assert mask[:, -8:].mean() < 0.02
  assert mask[:, :RES // 2].mean() > 0.6
