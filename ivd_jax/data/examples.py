"""One dataset example from a procedural scene seed or from an image file and its depth.

Procedural scenes are rendered exactly from the source view (and, in the test split, from the
novel views of a view set). Folder images go through ivd_jax.io.ingest: Lanczos resize of the short
side and centre crop for the image; the depth file (or the estimate) nearest-resized and cropped
the same way, then converted to the z-buffer encoding; MiDaS disparity is converted after the crop,
so the nearest point of the crop lands at `near` (docs/method.md §3).
"""
import functools
import pathlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
from PIL import Image

from ivd_jax.data import procedural
from ivd_jax.data import records
from ivd_jax.geometry import cameras
from ivd_jax.io import images
from ivd_jax.io import ingest

# config.data.depth of a folder -> the extensions of its depth files.
_DEPTH_FILE_EXTENSIONS = {'midas': ingest.DEPTH_EXTENSIONS,
                          'depth_map': ingest.DEPTH_MAP_EXTENSIONS}


@functools.lru_cache(maxsize=8)
def _novel_views(viewset: Any, seed: Optional[int]) -> np.ndarray:
  """Views [V - 1, 4, 4] of a view set (a name or pose rows) without view 0 (the image itself);
  'random' draws its pose from the scene seed, the other view sets are fixed."""
  key = None if seed is None else jax.random.key(seed % (1 << 31))
  poses = cameras.viewset_poses(viewset, key=key)[1:]
  return np.asarray(cameras.views_from_poses(poses), np.float32)


def procedural_example(seed: int, options: Dict[str, Any]) -> Dict[str, Any]:
  """The example of scene `seed`: its source view, plus the novel views of
  options['novel_viewset'] when that is set."""
  res, near, far = options['resolution'], options['near'], options['far']
  scene = procedural.sample_scene(seed)
  rgbd = procedural.render_rgbd(scene, cameras.SOURCE_VIEW, res, near=near, far=far)
  novel = None
  if options.get('novel_viewset'):
    viewset = options['novel_viewset']
    if not isinstance(viewset, str):  # 'custom' pose rows: hashable for the cache
      viewset = tuple(tuple(float(x) for x in row) for row in viewset)
    views = _novel_views(viewset, seed if viewset == 'random' else None)
    renders = [procedural.render_rgbd(scene, v, res, near=near, far=far) for v in views]
    novel = (np.stack([images.to_uint8(r[..., :3]) for r in renders]),
             np.stack([ingest.zbuf_to_uint16(r[..., 3]) for r in renders]), views)
  return records.example(images.to_uint8(rgbd[..., :3]), rgbd[..., 3], label=-1,
                         file=f'procedural/{seed}', view=cameras.SOURCE_VIEW, scene_seed=seed,
                         novel=novel)


def _folder_depth(image: Image.Image, rel: pathlib.PurePath, path: pathlib.Path,
                  options: Dict[str, Any], notes: List[str]) -> np.ndarray:
  """z-buffer depth [R, R] in [0, 1] for a folder image from its midas / depth_map file."""
  root = pathlib.Path(options['depth_folder'] or options['folder'])
  depth_path = ingest.find_depth_file(rel, root, _DEPTH_FILE_EXTENSIONS[options['depth']], path)
  raw = ingest.match_image_size(ingest.read_array(depth_path), image.width, image.height,
                                depth_path.name, notes)
  kind = 'midas' if options['depth'] == 'midas' else options['depth_map_kind']
  raw = ingest.checked_depth(raw, kind, options['max_invalid_depth'], depth_path.name, notes)
  return ingest.zbuf_from_raw(ingest.resize_crop_depth(raw, options['resolution']), kind,
                              options['near'], options['far'], options['depth_map_scale'])


def folder_example(item: Tuple[str, int], options: Dict[str, Any],
                   estimator_input: bool = False):
  """The example of a folder image and its depth file, and the conversion notes.

  Args:
    item: (path relative to options['folder'], label).
    options: the split plan's options.
    estimator_input: return (uint8 rgb [R, R, 3], the estimator's crop) instead of an example;
      the depth then comes from estimate_zbuf.

  Returns:
    (example or (rgb, crop), notes).

  Raises:
    ingest.Skip: the image or its depth cannot be used; the message is the reason.
  """
  rel_str, label = item
  rel = pathlib.PurePath(rel_str)
  path = pathlib.Path(options['folder']) / rel
  image, notes = ingest.load_rgb(path)
  rgb = ingest.resize_crop_rgb(image, options['resolution'])
  if estimator_input:
    return (rgb, ingest.resize_crop_rgb(image, options['estimator_resolution'])), notes
  zbuf = _folder_depth(image, rel, path, options, notes)
  return records.example(rgb, zbuf, label=label, file=rel_str, view=cameras.SOURCE_VIEW), notes


def estimate_zbuf(estimator: Callable[[np.ndarray], np.ndarray], crops: List[np.ndarray],
                  options: Dict[str, Any]) -> List[Tuple[Any, List[str]]]:
  """(zbuf [R, R] or the ingest.Skip of an unusable estimate, conversion notes) per crop."""
  disparity = ingest.estimate_disparity(estimator, np.stack(crops), 'data.estimator')
  out = []
  for disp in disparity:
    notes = []
    try:
      disp = ingest.checked_depth(disp, 'midas', options['max_invalid_depth'],
                                  'from the estimator', notes)
      out.append((ingest.zbuf_from_raw(ingest.resize_crop_depth(disp, options['resolution']),
                                       'midas', options['near'], options['far']), notes))
    except ingest.Skip as e:
      out.append((e, notes))
  return out
