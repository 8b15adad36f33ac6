"""Reading image and depth files: the one ingestion path of prepare and the photo start.

Images open as 8-bit RGB (grayscale, 16-bit, palette, CMYK and alpha converted with a note),
are resized with Lanczos so the short side is the resolution and centre-cropped; depth arrays are
resized with nearest neighbour and cropped the same way, then turned into the z-buffer encoding
(docs/method.md §3). An input that cannot be used raises Skip with the reason: prepare records it
in its summary and skips the file, the photo start (ivd_jax.sampling.photo) reports it as a
ConfigError.

Raw depth comes in four kinds (DEPTH_KINDS): 'midas' (MiDaS raw disparity at the reference's
scale), 'metric' (planar depth), 'inverse' (disparity 1 / planar depth) and 'zbuf' (already the
z-buffer encoding in [0, 1]).
"""
import importlib
import pathlib
import zipfile
from typing import Any, Callable, List, Mapping, Sequence, Tuple

import numpy as np
from PIL import Image
from PIL import ImageOps
from scipy import ndimage

from ivd_jax import errors
from ivd_jax.geometry import depth as depth_lib

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm', '.pbm')
DEPTH_EXTENSIONS = ('.npz', '.npy')
DEPTH_MAP_EXTENSIONS = ('.png', '.npy', '.npz')
DEPTH_KINDS = ('midas', 'metric', 'inverse', 'zbuf')
# 16-bit depth PNGs hold round(DEPTH_PNG_MAX * zbuf).
DEPTH_PNG_MAX = 65535
# Images with a shorter side are skipped: a few pixels blown up to the resolution are no photo.
MIN_IMAGE_SIZE = 8
# What makes a raw depth value invalid, per kind (MiDaS disparity <= 0 is a point at infinity,
# which the reference puts on the far plane).
_INVALID = {'midas': 'NaN or inf', 'zbuf': 'NaN or inf', 'metric': 'NaN, inf or <= 0',
            'inverse': 'NaN, inf or <= 0'}


class Skip(Exception):
  """An input that cannot be used; the message is the reason recorded in the summary."""


def load_rgb(path: pathlib.Path, min_size: int = MIN_IMAGE_SIZE
             ) -> Tuple[Image.Image, List[str]]:
  """Opens an image as 8-bit RGB, converting other modes; returns (image, conversion notes).

  An image whose short side is under `min_size` pixels is a Skip.
  """
  notes = []
  try:
    with Image.open(path) as opened:
      if getattr(opened, 'n_frames', 1) > 1:
        notes.append(f'{opened.n_frames} frames, first used')
      opened.load()
      image = ImageOps.exif_transpose(opened)
      if image is opened:
        image = opened.copy()
  except Image.DecompressionBombError as e:
    raise Skip(f'image too large to decode safely ({e})') from e
  except (OSError, SyntaxError, ValueError) as e:
    # PIL raises UnidentifiedImageError (an OSError) for non-images and OSError("image file is
    # truncated") for cut-off files.
    raise Skip(f'corrupt, truncated or unreadable image: {e}') from e
  mode = image.mode
  if image.width < 1 or image.height < 1:
    raise Skip(f'empty image ({image.width}x{image.height})')
  if min(image.width, image.height) < min_size:
    raise Skip(f'image is only {image.width}x{image.height} px; its short side must be at least '
               f'{min_size} px')
  if mode == 'RGB':
    return image, notes
  if mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I'):
    values = np.asarray(image, np.float64)
    top = 65535.0 if values.max(initial=0) > 255 or mode.startswith('I;16') else 255.0
    gray = np.round(np.clip(values / top, 0, 1) * 255).astype(np.uint8)
    notes.append(f'16-bit grayscale ({mode}) -> 8-bit RGB')
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1)), notes
  if mode == 'F':
    raise Skip('floating-point image (mode F) has no defined colour range; convert it to 8-bit')
  has_alpha = mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (
      mode == 'P' and 'transparency' in image.info)
  if has_alpha:
    # Compositing on white keeps transparent regions from showing arbitrary hidden colours.
    rgba = image.convert('RGBA')
    background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    notes.append(f'alpha ({mode}) composited on white')
    return Image.alpha_composite(background, rgba).convert('RGB'), notes
  notes.append(f'{mode} -> RGB')
  return image.convert('RGB'), notes


def crop_geometry(width: int, height: int, resolution: int) -> Tuple[int, int, int, int]:
  """(resized width, resized height, left, top): short side -> resolution, centre crop."""
  scale = resolution / min(width, height)
  new_w = max(resolution, int(round(width * scale)))
  new_h = max(resolution, int(round(height * scale)))
  return new_w, new_h, (new_w - resolution) // 2, (new_h - resolution) // 2


def resize_crop_rgb(image: Image.Image, resolution: int) -> np.ndarray:
  """Lanczos resize of the short side to `resolution`, centre crop: uint8 [R, R, 3]."""
  new_w, new_h, left, top = crop_geometry(image.width, image.height, resolution)
  if (new_w, new_h) != image.size:
    image = image.resize((new_w, new_h), Image.LANCZOS)
  return np.asarray(image.crop((left, top, left + resolution, top + resolution)), np.uint8)


def resize_crop_depth(depth: np.ndarray, resolution: int) -> np.ndarray:
  """Nearest resize and the same centre crop as resize_crop_rgb: float32 [R, R]."""
  height, width = depth.shape
  new_w, new_h, left, top = crop_geometry(width, height, resolution)
  # Nearest sampling at pixel centres (PIL's NEAREST on a float32 'F' image).
  resized = np.asarray(Image.fromarray(depth.astype(np.float32)).resize(
      (new_w, new_h), Image.NEAREST))
  return resized[top:top + resolution, left:left + resolution]


def load_problem(e: Exception) -> str:
  """Why np.load failed, without numpy's advice to load untrusted files with pickle."""
  if isinstance(e, ValueError) and 'pickle' in str(e):
    return ('not a NumPy array of numbers (it holds pickled Python objects, or is no NumPy file '
            'at all); pickled files are never loaded')
  if isinstance(e, EOFError):
    return 'the file is empty or cut off'
  if isinstance(e, zipfile.BadZipFile):
    return f'not an .npz (zip) archive ({e})'
  return f'{type(e).__name__}: {e}'


def read_array(path: pathlib.Path) -> np.ndarray:
  """A depth file as float32 [H, W]: .npz (array arr_0), .npy or an image (raw pixel values).

  NumPy files are read with allow_pickle=False: a file of pickled objects is a Skip.
  """
  try:
    if path.suffix == '.npz':
      with np.load(path, allow_pickle=False) as npz:
        if 'arr_0' not in npz.files:
          raise Skip(f'depth file {path.name} has no array arr_0 (has {npz.files})')
        array = npz['arr_0']
    elif path.suffix == '.npy':
      array = np.load(path, allow_pickle=False)
    else:
      with Image.open(path) as image:
        image.load()
        array = np.asarray(image)
  except Skip:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # np.load raises ValueError/OSError/EOFError/zipfile errors on damaged files.
    raise Skip(f'unreadable depth file {path.name}: {load_problem(e)}') from e
  array = np.asarray(array)
  while array.ndim > 2 and array.shape[0] == 1:  # [1, H, W]
    array = array[0]
  while array.ndim > 2 and array.shape[-1] == 1:  # [H, W, 1]
    array = array[..., 0]
  if array.ndim != 2:
    raise Skip(f'depth file {path.name} has shape {np.shape(array)}; expected [H, W]')
  if not np.issubdtype(array.dtype, np.number):
    raise Skip(f'depth file {path.name} has dtype {array.dtype}; expected numbers')
  return array.astype(np.float32)


def match_image_size(depth: np.ndarray, width: int, height: int, name: str,
                     notes: List[str]) -> np.ndarray:
  """Depth at another size but the same aspect ratio is resized (nearest); otherwise skipped."""
  h, w = depth.shape
  if (h, w) == (height, width):
    return depth
  if abs(w / h - width / height) > 0.01 * (width / height):
    raise Skip(f'depth {name} is {w}x{h} but the image is {width}x{height} (aspect ratio differs)')
  notes.append(f'depth {w}x{h} resized to the image size {width}x{height}')
  resized = Image.fromarray(depth.astype(np.float32)).resize((width, height), Image.NEAREST)
  return np.asarray(resized)


def repair_depth(depth: np.ndarray, valid: np.ndarray, max_invalid: float, name: str,
                 notes: List[str], invalid: str = 'NaN/inf/<=0',
                 field: str = 'data.max_invalid_depth') -> np.ndarray:
  """Fills a few invalid depth values from the nearest valid pixel; too many: Skip."""
  num_invalid = int(valid.size - np.count_nonzero(valid))
  if not num_invalid:
    return depth
  fraction = num_invalid / valid.size
  if fraction > max_invalid:
    raise Skip(f'depth {name} has {100 * fraction:.1f}% invalid values ({invalid}); at most '
               f'{100 * max_invalid:.1f}% are filled (config.{field})')
  _, (rows, cols) = ndimage.distance_transform_edt(~valid, return_indices=True)
  notes.append(f'{num_invalid} invalid depth values filled from nearest valid pixels')
  return depth[rows, cols]


def checked_depth(raw: np.ndarray, kind: str, max_invalid: float, name: str,
                  notes: List[str], field: str = 'data.max_invalid_depth') -> np.ndarray:
  """Raw depth of one image, a few invalid values filled; Skip with the reason when unusable.

  The one validity rule of prepare and the photo start. Invalid values: NaN and inf, and for
  planar depth and disparity ('metric', 'inverse') values <= 0; MiDaS disparity <= 0 is a point
  at infinity (the far plane, as in the reference). Refused: no valid value, MiDaS disparity
  that is nowhere positive, one value everywhere (no depth to give), or more than `max_invalid`
  of the pixels invalid (config `field`).
  """
  valid = valid_depth(raw, kind)
  invalid = _INVALID.get(kind, 'NaN or inf')
  if not valid.any():
    raise Skip(f'depth {name} has no valid value (every one is {invalid})')
  values = raw[valid]
  lo, hi = float(values.min()), float(values.max())
  if kind == 'midas' and hi <= 0:
    raise Skip(f'MiDaS disparity {name} is zero or negative everywhere (max {hi:g}): every '
               'point at infinity, no depth')
  if hi - lo <= 1e-6 * max(abs(lo), abs(hi)):
    raise Skip(f'depth {name} is constant ({lo:g} at every valid pixel): it holds no depth')
  return repair_depth(raw, valid, max_invalid, name, notes, invalid, field)


def find_depth_file(image_rel: pathlib.PurePath, root: pathlib.Path,
                    extensions: Sequence[str], image_path: pathlib.Path) -> pathlib.Path:
  """<root>/<image dir>/<stem><ext> for the first existing ext; Skip when there is none."""
  base = root / image_rel.parent
  for ext in extensions:
    candidate = base / (image_rel.stem + ext)
    if candidate != image_path and candidate.is_file():
      return candidate
  raise Skip(f'no depth file {image_rel.stem}{{{",".join(extensions)}}} in {base}')


def zbuf_to_uint16(zbuf: np.ndarray) -> np.ndarray:
  """z-buffer depth in [0, 1] -> the 16-bit values of a depth PNG (clipped, rounded)."""
  return np.round(np.clip(np.asarray(zbuf, np.float64), 0.0, 1.0) * DEPTH_PNG_MAX).astype(
      np.uint16)


def zbuf_from_uint16(depth: np.ndarray) -> np.ndarray:
  """Inverse of zbuf_to_uint16: float32 z-buffer in [0, 1]."""
  return np.asarray(depth, np.float32) / DEPTH_PNG_MAX


def valid_depth(raw: np.ndarray, kind: str) -> np.ndarray:
  """Pixels whose raw value converts: finite, and positive for planar depth and disparity."""
  finite = np.isfinite(raw)
  return finite & (raw > 0) if kind in ('metric', 'inverse') else finite


def zbuf_from_raw(crop: np.ndarray, kind: str, near: float, far: float,
                  scale: float = 1.0) -> np.ndarray:
  """Raw depth of one cropped image -> z-buffer [R, R] in [0, 1] (docs/method.md §3).

  Args:
    crop: [R, R] raw values, repaired (valid_depth everywhere) and cropped like the image.
    kind: one of DEPTH_KINDS.
    near, far: the z-buffer encoding's planes.
    scale: raw value * scale = planar depth ('metric') or disparity ('inverse'); the other kinds
      ignore it ('midas' normalises its own scale per image).

  Returns:
    float32 [R, R].
  """
  if kind == 'midas':
    return np.asarray(depth_lib.zbuf_from_midas(np.asarray(crop, np.float32), near, far))
  if kind == 'zbuf':
    return np.asarray(crop, np.float32)
  if kind not in DEPTH_KINDS:
    raise ValueError(f'unknown depth kind {kind!r}; use one of {DEPTH_KINDS}')
  values = crop.astype(np.float64) * scale
  planar = values if kind == 'metric' else 1.0 / values
  return np.asarray(depth_lib.zbuf_from_depth(planar, near, far), np.float32)


def parse_estimator_spec(spec: str, field: str) -> Tuple[str, str]:
  """('package.module', 'factory') of a depth estimator spec; ConfigError naming `field`."""
  module_name, _, attr = str(spec).partition(':')
  if not module_name or not attr:
    raise errors.ConfigError(
        field, f'{spec!r} does not name a depth estimator',
        "use 'package.module:factory', e.g. 'ivd_jax.models.depth_estimator:estimator'")
  return module_name, attr


def load_estimator(spec: str, kwargs: Mapping[str, Any], field: str
                   ) -> Callable[[np.ndarray], np.ndarray]:
  """The depth estimator fn(uint8 [B, H, W, 3]) -> MiDaS-scale disparity of factory(**kwargs)."""
  module_name, attr = parse_estimator_spec(spec, field)
  try:
    factory = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise errors.ConfigError(field, f'cannot import {spec!r} ({e})',
                             "name an importable factory as 'package.module:callable'") from e
  return factory(**dict(kwargs))


def estimate_disparity(estimator: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                       field: str) -> np.ndarray:
  """Raw disparity float32 [B, H, W] of uint8 images [B, H, W, 3]; checks the estimator's shape."""
  disparity = np.asarray(estimator(images), np.float32)
  if disparity.ndim == 4 and disparity.shape[-1] == 1:
    disparity = disparity[..., 0]
  if disparity.ndim != 3 or disparity.shape[0] != len(images):
    raise errors.UserError(
        f'the depth estimator returned shape {disparity.shape} for {len(images)} images; it '
        f'must return raw disparity [B, H, W] (config.{field})')
  return disparity
