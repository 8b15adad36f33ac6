"""The images to score: read from a folder or an .npz, or chosen from sampled view sets."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
from PIL import Image

from ivd_jax import errors
from ivd_jax.evaluation import fid
from ivd_jax.io import ingest
from ivd_jax.io import paths

# Scored views of each view set: every view but view 0 (the protocol), view 0 only, or all.
VIEW_CHOICES = ('novel', 'first', 'all')


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


def _read_folder(path: str, field: str, limit: int) -> np.ndarray:
  files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                 if f.lower().endswith(ingest.IMAGE_EXTENSIONS))
  if limit:
    files = files[:limit]
  if not files:
    raise errors.ConfigError(f'eval.{field}', f'{path} holds no images '
                             f'({", ".join(ingest.IMAGE_EXTENSIONS)})',
                             'point it at PNG/JPEG files')
  images = []
  for f in files:
    with Image.open(f) as im:
      a = np.asarray(im.convert('RGB'))
    if images and a.shape != images[0].shape:
      raise errors.ConfigError(f'eval.{field}', f'{f} is {a.shape[:2]} but '
                               f'{files[0]} is {images[0].shape[:2]}',
                               'give images of one size (the dataset resolution)')
    images.append(a)
  return np.stack(images)


def read_images(path: str, *, field: str, views: str = 'novel', limit: int = 0) -> Generated:
  """Images from a folder (recursive, sorted) or an .npz (`images`, or `rgbd` view sets).

  Args:
    path: (local or gs://) a folder of images, an .npz with `images` [N, H, W, 3] (uint8 or floats in [0, 1]), or
      the sample mode's views.npz (`rgbd` [N, V, H, W, 4] in [0, 1], optionally `views`).
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
  with np.load(path, allow_pickle=False) as f:
    if 'rgbd' in f.files:
      rgbd = np.asarray(f['rgbd'], np.float32)
      if rgbd.ndim != 5 or rgbd.shape[-1] != 4:
        raise errors.ConfigError(f'eval.{field}', f'{path}: rgbd has shape {rgbd.shape}',
                                 'give view sets [N, V, H, W, 4] in [0, 1] (sample mode)')
      view_sets = np.asarray(f['views'], np.float32) if 'views' in f.files else None
      return Generated(from_view_sets(rgbd, views, limit), source=source, rgbd=rgbd,
                       views=view_sets)
    if 'images' in f.files:
      images = np.asarray(f['images'])
      if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise errors.ConfigError(f'eval.{field}', f'{path}: images have shape {images.shape}',
                                 'give [N, H, W, 3] uint8 or floats in [0, 1]')
      images = images[:limit] if limit else images
      return Generated(fid.images_to_uint8(images[..., :3], (0.0, 1.0)), source=source)
  raise errors.ConfigError(f'eval.{field}', f'{path} has neither `images` nor `rgbd` '
                           f'(keys {f.files})', 'save images under the key `images`')
