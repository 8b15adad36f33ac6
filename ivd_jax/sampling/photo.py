"""A real photograph and its depth as view 0 of a view set (the `photo` sample preset).

The photo is read exactly as prepare reads a folder image (ivd_jax.io.ingest): 16-bit, grayscale,
palette, CMYK and alpha images converted to 8-bit RGB, Lanczos resize of the short side and centre
crop; the depth nearest-resized to the image (same aspect ratio), checked by prepare's rule
(ingest.checked_depth: no valid value, MiDaS disparity nowhere positive, constant depth, or more
than sample.max_invalid_depth of it NaN / inf / (depth) <= 0 is refused), a few invalid values
filled from the nearest valid pixel, cropped the same way and converted to the z-buffer encoding of
the data the networks were trained on (docs/method.md §3). sample.source_depth_kind says what the depth file
holds:
  midas      raw MiDaS disparity at the reference's scale (.npz key arr_0, or .npy)
  zbuf       the z-buffer in [0, 1] (.npy / .npz), or a 16-bit PNG as prepare writes it
  depth      planar metric depth (.npy / .npz)
  estimator  no file: sample.estimator ('package.module:factory', called with
             sample.estimator_kwargs) estimates MiDaS-scale disparity from the cropped photo
"""
import pathlib
from typing import Any, List

from absl import logging
import numpy as np

from ivd_jax import errors
from ivd_jax.io import ingest
from ivd_jax.io import paths

# sample.source_depth_kind of a depth file -> ingest's depth kind.
_FILE_KINDS = {'midas': 'midas', 'zbuf': 'zbuf', 'depth': 'metric'}
_KINDS = tuple(_FILE_KINDS) + ('estimator',)


def _read_depth_file(s: Any, width: int, height: int, notes: List[str]) -> np.ndarray:
  """The raw values of sample.source_depth at the photo's size, float32 [height, width]."""
  if not paths.is_file(s.source_depth):  # a local path or gs://
    raise errors.ConfigError('sample.source_depth', f'{s.source_depth!r} is not a file',
                             "give the photo's depth file, or source_depth_kind='estimator'")
  path = pathlib.Path(paths.basename(s.source_depth))
  try:
    with paths.local_copy(s.source_depth) as local:
      raw = ingest.match_image_size(ingest.read_array(pathlib.Path(local)), width, height,
                                    path.name, notes)
  except ingest.Skip as e:
    raise errors.ConfigError(
        'sample.source_depth', str(e),
        'give a [H, W] depth map (.npy, .npz with arr_0, or a 16-bit PNG) with the aspect ratio '
        'of the photo') from e
  if s.source_depth_kind == 'zbuf' and path.suffix.lower() == '.png':
    raw = ingest.zbuf_from_uint16(raw)
  return raw


def _estimate(s: Any, rgb: np.ndarray) -> np.ndarray:
  """MiDaS-scale disparity [R, R] of the cropped photo from sample.estimator."""
  estimator = ingest.load_estimator(s.estimator, s.estimator_kwargs, 'sample.estimator')
  return ingest.estimate_disparity(estimator, rgb[None], 'sample.estimator')[0]


def load_source_view(sample_config: Any, resolution: int, *, near: float,
                     far: float) -> np.ndarray:
  """A real photo and its depth as view 0.

  Args:
    sample_config: config.sample (source_image, source_depth, source_depth_kind, estimator,
      estimator_kwargs).
    resolution: the networks' image size R.
    near, far: the z-buffer encoding of the networks' training data.

  Returns:
    float32 [R, R, 4] in [0, 1]: RGB and the z-buffer depth.

  Raises:
    errors.ConfigError: naming the sample.* field, for a missing or unreadable file, depth that
      does not fit the photo or fails ingest.checked_depth, or an unknown depth kind.
  """
  s = sample_config
  kind = s.source_depth_kind
  if kind not in _KINDS:
    raise errors.ConfigError('sample.source_depth_kind', f'unknown kind {kind!r}',
                             f'use one of {_KINDS}')
  if not paths.is_file(s.source_image):  # a local path or gs://
    raise errors.ConfigError('sample.source_image', f'{s.source_image!r} is not a file',
                             'give the path of an image')
  try:
    with paths.local_copy(s.source_image) as local:
      image, notes = ingest.load_rgb(pathlib.Path(local))
  except ingest.Skip as e:
    raise errors.ConfigError('sample.source_image', f'{s.source_image}: {e}',
                             'give a PNG, JPEG or other image PIL can read') from e
  rgb = ingest.resize_crop_rgb(image, resolution)
  if kind == 'estimator':
    raw, raw_kind, field = _estimate(s, rgb), 'midas', 'sample.estimator'
    name = 'from the estimator'
  else:
    raw = _read_depth_file(s, image.width, image.height, notes)
    raw_kind, field = _FILE_KINDS[kind], 'sample.source_depth'
    name = paths.basename(s.source_depth)
  finite = raw[np.isfinite(raw)]
  if raw_kind == 'zbuf' and finite.size and not (finite.min() >= 0.0 and finite.max() <= 1.0):
    raise errors.ConfigError(
        'sample.source_depth', f'z-buffer values span [{finite.min():g}, {finite.max():g}], not '
        '[0, 1]', "give the z-buffer in [0, 1], or set source_depth_kind to 'midas' or 'depth'")
  max_invalid = s.get('max_invalid_depth')
  if max_invalid is None or not 0 <= float(max_invalid) < 1:
    raise errors.ConfigError('sample.max_invalid_depth', f'{max_invalid!r}',
                             'use a fraction in [0, 1) (configs/sampling.py:sample_section)')
  try:
    raw = ingest.checked_depth(raw, raw_kind, float(max_invalid), name, notes,
                               'sample.max_invalid_depth')
  except ingest.Skip as e:
    raise errors.ConfigError(
        field, str(e), 'give a depth map with finite, varying values (positive for depth), or '
        'another source_depth_kind') from None
  zbuf = ingest.zbuf_from_raw(ingest.resize_crop_depth(raw, resolution), raw_kind, near, far)
  zbuf = np.clip(zbuf, 0.0, 1.0)  # float rounding at the planes
  for note in notes:
    logging.info('photo %s: %s', s.source_image, note)
  return np.concatenate([rgb.astype(np.float32) / 255.0, zbuf[..., None]], axis=-1)
