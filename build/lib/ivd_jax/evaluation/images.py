"""The images to score: read from a folder or an .npz, or chosen from sampled view sets."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ivd_jax import errors
from ivd_jax.evaluation import fid
from ivd_jax.io import ingest
from ivd_jax.io import paths

# Scored views of each view set: every view but view 0 (the protocol), view 0 only, or all.
VIEW_CHOICES = ('novel', 'first', 'all')
# Float images may overshoot [0, 1] by this much (a quarter of an 8-bit step) before they are
# refused as being in another range (0..255, [-1, 1]).
_FLOAT_RANGE_TOL = 1e-3


@dataclasses.dataclass
class Generated:
  """Images to score (uint8 [N, H, W, 3]) and, when known, the view sets they come from."""
  images: np.ndarray
  source: str
  rgbd: Optional[np.ndarray] = None  # [S, V, H, W, 4] in [0, 1]
  views: Optional[np.ndarray] = None  # [S, V, 4, 4]
  settings: Optional[dict] = None
  seconds: float = 0.0


def select_views(rgb: np.ndarray, views: str) -> np.ndarray:
  """[N, V, H, W, 3] -> the scored images (VIEW_CHOICES), flattened instance-major."""
  if views == 'first':
    rgb = rgb[:, :1]
  elif views == 'novel':
    if rgb.shape[1] < 2:
      raise errors.ConfigError('eval.views', "'novel' needs view sets of >= 2 views",
                               'use --config.eval.views=first or all')
    rgb = rgb[:, 1:]
  return rgb.reshape((-1,) + rgb.shape[2:])


def from_view_sets(rgbd: np.ndarray, views: str, limit: int = 0) -> np.ndarray:
  """uint8 images to score from view sets [N, V, H, W, 4] in [0, 1] (at most `limit`)."""
  rgb = select_views(np.asarray(rgbd)[..., :3], views)
  return fid.images_to_uint8(rgb[:limit] if limit else rgb, (0.0, 1.0))


def _folder_files(path: str) -> list[str]:
  return sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                if f.lower().endswith(ingest.IMAGE_EXTENSIONS))


def _to_uint8(images: np.ndarray, path: str, field: str, what: str = 'images') -> np.ndarray:
  """uint8 images of a file: uint8 as is, integers in 0..255, floats in [0, 1]; other values are
  refused (floats in 0..255 would all be clipped to white)."""
  images = np.asarray(images)
  if images.dtype == np.uint8 or not images.size:
    return images.astype(np.uint8)
  lo, hi = float(np.min(images)), float(np.max(images))
  if np.issubdtype(images.dtype, np.integer):
    if lo >= 0 and hi <= 255:
      return images.astype(np.uint8)
    raise errors.ConfigError(f'eval.{field}', f'{path}: integer {what} span [{lo:g}, {hi:g}], '
                             'not 0..255', 'save uint8 images (or floats in [0, 1])')
  if not np.issubdtype(images.dtype, np.floating):
    raise errors.ConfigError(f'eval.{field}', f'{path}: {what} have dtype {images.dtype}',
                             'save uint8 images (or floats in [0, 1])')
  if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -_FLOAT_RANGE_TOL or (
      hi > 1 + _FLOAT_RANGE_TOL):
    raise errors.ConfigError(
        f'eval.{field}', f'{path}: float {what} span [{lo:g}, {hi:g}], not [0, 1]',
        'save uint8 images, or floats in [0, 1] (divide 0..255 values by 255, map [-1, 1] '
        'with (x + 1) / 2)')
  return fid.images_to_uint8(images, (0.0, 1.0))


def image_size(path: str, field: str) -> Optional[tuple[int, int]]:
  """(height, width) of the images read_images would read from `path`, read from the first
  image's or the array's header; None when `path` holds no recognisable images."""
  if paths.is_remote(path):  # gs://: a temporary local copy
    with paths.local_copy(path) as local:
      return image_size(local, field)
  if os.path.isdir(path):
    files = _folder_files(path)
    if not files:
      return None
    try:
      with Image.open(files[0]) as im:
        return im.height, im.width
    except (OSError, ValueError) as e:
      raise errors.ConfigError(f'eval.{field}', f'{files[0]}: unreadable image ({e})',
                               'give PNG/JPEG files') from None
  try:
    with zipfile.ZipFile(path) as z:
      for key in ('rgbd', 'images'):
        if f'{key}.npy' in z.namelist():
          with z.open(f'{key}.npy') as fh:
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                    np.lib.format.read_array_header_2_0)
            shape = read(fh)[0]
          return (int(shape[-3]), int(shape[-2])) if len(shape) >= 4 else None
  except (OSError, ValueError, zipfile.BadZipFile):
    return None  # read_images names the problem
  return None


def check_size(size: Sequence[int], real: Optional[Sequence[int]], *, resize: bool,
               field: str) -> None:
  """Refuses generated images of another size than the real ones unless they will be resized."""
  if real is None or tuple(size) == tuple(real) or resize:
    return
  raise errors.ConfigError(
      field, f'the generated images are {size[0]}x{size[1]} px but the real images are '
      f'{real[0]}x{real[1]} px; FID / IS / KID across sizes are not comparable',
      'generate at the resolution of the data, or set --config.eval.resize_generated=True to '
      'resize them to the real size (Lanczos, short side, centre crop)')


def resize_images(images: np.ndarray, real: Optional[Sequence[int]]) -> np.ndarray:
  """uint8 images [N, H, W, 3] at the real size (Lanczos resize of the short side, centre crop
  for square targets); unchanged when they have it already."""
  if real is None or tuple(images.shape[1:3]) == tuple(real):
    return images
  height, width = real
  out = []
  for im in images:
    pil = Image.fromarray(im)
    out.append(ingest.resize_crop_rgb(pil, height) if height == width else
               np.asarray(pil.resize((width, height), Image.LANCZOS)))
  return np.stack(out)


def _read_folder(path: str, field: str, limit: int) -> np.ndarray:
  files = _folder_files(path)
  if limit:
    files = files[:limit]
  if not files:
    raise errors.ConfigError(f'eval.{field}', f'{path} holds no images '
                             f'({", ".join(ingest.IMAGE_EXTENSIONS)})',
                             'point it at PNG/JPEG files')
  images = []
  for f in files:
    try:  # 16-bit, palette, alpha: converted as prepare converts them, never clipped to white
      a = np.asarray(ingest.load_rgb(pathlib.Path(f), min_size=1)[0])
    except ingest.Skip as e:
      raise errors.ConfigError(f'eval.{field}', f'{f}: {e}', 'give PNG/JPEG images') from None
    if images and a.shape != images[0].shape:
      raise errors.ConfigError(f'eval.{field}', f'{f} is {a.shape[:2]} but '
                               f'{files[0]} is {images[0].shape[:2]}',
                               'give images of one size (the dataset resolution)')
    images.append(a)
  return np.stack(images)


def read_images(path: str, *, field: str, views: str = 'novel', limit: int = 0) -> Generated:
  """Images from a folder (recursive, sorted) or an .npz (`images`, or `rgbd` view sets).

  Args:
    path: (local or gs://) a folder of images, an .npz with `images` [N, H, W, 3] (uint8 or
      floats in [0, 1]), or the sample mode's views.npz (`rgbd` [N, V, H, W, 4] in [0, 1],
      optionally `views`).
    field: the config field that named `path` (eval.<field> in error messages).
    views: which views of `rgbd` view sets are scored (VIEW_CHOICES).
    limit: keep at most this many images (0 = all).

  Returns:
    The images as uint8, with the view sets when the file holds them.

  Raises:
    ConfigError: naming eval.<field> when the file holds no usable images.
  """
  if paths.is_remote(path):  # gs://: read a temporary local copy of the folder or file
    with paths.local_copy(path) as local:
      generated = read_images(local, field=field, views=views, limit=limit)
    generated.source = path
    return generated
  source = os.path.abspath(path)
  if os.path.isdir(path):
    return Generated(_read_folder(path, field, limit), source=source)
  try:
    f = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise errors.ConfigError(f'eval.{field}', f'{path} is not a readable .npz of arrays: '
                             f'{ingest.load_problem(e)}',
                             'give a folder of images or an .npz written by np.savez') from None
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise errors.ConfigError(f'eval.{field}', f'{path} is an .npy array, not an .npz',
                             'save it with np.savez(path, images=array)')
  with f:
    if 'rgbd' in f.files:
      rgbd = np.asarray(f['rgbd'], np.float32)
      if rgbd.ndim != 5 or rgbd.shape[-1] != 4:
        raise errors.ConfigError(f'eval.{field}', f'{path}: rgbd has shape {rgbd.shape}',
                                 'give view sets [N, V, H, W, 4] in [0, 1] (sample mode)')
      _to_uint8(rgbd[..., :3], path, field, 'rgbd colours')  # the range check
      view_sets = np.asarray(f['views'], np.float32) if 'views' in f.files else None
      return Generated(from_view_sets(rgbd, views, limit), source=source, rgbd=rgbd,
                       views=view_sets)
    if 'images' in f.files:
      images = np.asarray(f['images'])
      if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise errors.ConfigError(f'eval.{field}', f'{path}: images have shape {images.shape}',
                                 'give [N, H, W, 3] uint8 or floats in [0, 1]')
      images = images[:limit] if limit else images
      return Generated(_to_uint8(images[..., :3], path, field), source=source)
  raise errors.ConfigError(f'eval.{field}', f'{path} has neither `images` nor `rgbd` '
                           f'(keys {f.files})', 'save images under the key `images`')
