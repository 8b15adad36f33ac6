"""Dataset preparation (mode 'prepare'): RGBD examples written as a TFDS ArrayRecord dataset.

  python -m ivd_jax.main --config=configs/prepare.py:procedural --workdir=DIR
  python -m ivd_jax.main --config=configs/prepare.py:folder --workdir=DIR \
      --config.data.folder=/data/imagenet/train --config.data.depth=midas

The dataset lands in config.data.dir (default DIR/data): ArrayRecord shards named the TFDS way,
dataset_info.json / features.json / metadata.json, readable without TensorFlow by
`tfds.builder_from_directory(dir).as_data_source(split)` (ivd_jax.data.pipeline does this).
Features of every example:
  rgb          uint8 [R, R, 3], PNG
  depth        uint16 [R, R, 1], PNG of round(65535 * zbuf), zbuf the METHOD 3 z-buffer encoding
               with the near/far recorded in metadata.json (training data: 0.5 / 100)
  label        int64, -1 when unlabeled; classes (sorted subfolder names) in metadata.json
  file         the source file relative to config.data.folder, or 'procedural/<scene seed>'
  view         float32 [4, 4] world -> camera matrix of the image (cameras.SOURCE_VIEW)
  scene_seed   int64, the procedural scene (-1 for folders): procedural.sample_scene(seed)
               re-renders it exactly from any camera
  novel_rgb / novel_depth / novel_view
               true novel views [V, ...] of procedural scenes for evaluation (split 'test'; V = 0
               elsewhere): same encodings, zlib-compressed
Read it with ivd_jax.data.pipeline, or with tfds and decoders={'rgb': SkipDecoding(), 'depth':
SkipDecoding()} plus decode_png() below: TFDS' own numpy decoder needs OpenCV for 16-bit PNGs.
Sources:
  procedural   embedded analytic scenes with exact depth: split 'train' (num_examples) and split
               'test' (num_eval_examples, with the novel views of config.data.novel_viewset).
  folder       a folder of images, optionally class subfolders (ImageNet layout), depth from
               'midas' (reference-format disparity <stem>.npz key arr_0, or <stem>.npy),
               'depth_map' (<stem>.png 16-bit or <stem>.npy, metric or inverse) or 'estimator'
               (config.data.estimator = 'package.module:factory'). Written as split
               config.data.split (default 'train'); several folders (train, validation) can go
               into the same config.data.dir one after the other.
Images are resized with Lanczos so the short side is R, then centre-cropped; depth is resized with
nearest neighbour and cropped the same way; MiDaS disparity is converted after the crop (the
nearest point of the crop lands at `near`, METHOD 3).

Preparation is sharded and resumable: examples are assigned to fixed shards, each shard is written
by one worker (config.data.prepare_workers local processes; on multi-host jobs each process takes
every process_count-th shard) to a temporary file, renamed when complete and recorded in
DIR_DATA/prepare_state/; a rerun skips shards already complete. Bad inputs are converted where
that is sensible (grayscale, CMYK, 16-bit, palette, alpha) and otherwise skipped with a reason; the
summary DIR/prepare_summary.json lists num_written, num_skipped, skipped [{file, reason}],
converted [{file, note}], the class list and per-split counts.
"""
import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib
import io
import json
import math
import multiprocessing
import os
import pathlib
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
from array_record.python import array_record_module
import jax
import numpy as np
from PIL import Image
from PIL import ImageOps
from scipy import ndimage
import tqdm

from ivd_jax import errors
from ivd_jax.data import procedural
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib

DATASET_NAME = 'ivd_rgbd'
DATASET_VERSION = '1.0.0'
DEPTH_PNG_MAX = 65535
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm', '.pbm')
DEPTH_EXTENSIONS = ('.npz', '.npy')
DEPTH_MAP_EXTENSIONS = ('.png', '.npy', '.npz')
SOURCES = ('procedural', 'folder')
FOLDER_DEPTHS = ('midas', 'depth_map', 'estimator')
STATE_DIR = 'prepare_state'
_MIN_ITEMS_FOR_AUTO_POOL = 2000
SPLIT_PROCEDURAL_TEST = 'test'

# Fields that only prepare reads; the training presets' data section does not need to carry them
# (prepare falls back to these), configs/prepare.py exposes all of them.
PREPARE_DEFAULTS = dict(
    split='train',  # split written from a folder
    depth_folder='',  # where depth files live ('' = beside each image), mirroring the layout
    depth_map_kind='metric',  # 'metric' (planar depth) | 'inverse' (disparity)
    depth_map_scale=1.0,  # raw value * scale = depth (metric) or disparity (inverse)
    estimator='',  # 'package.module:factory' for depth='estimator'
    estimator_kwargs={},
    estimator_batch_size=16,
    estimator_resolution=512,  # the estimator sees the same centre crop at this size
    max_invalid_depth=0.05,  # fraction of NaN/inf/<=0 depth filled from neighbours; more: skip
    labels='auto',  # 'auto' (class subfolders give labels) | 'none' (all -1)
    classes='',  # optional comma-separated class list fixing the label order
    num_eval_examples=64,  # procedural 'test' split
    novel_viewset='3x9',  # procedural novel views: a cameras.viewset_poses name
    examples_per_shard=1024,
    prepare_workers=0,  # local worker processes; 0 = all CPU cores
)


def _get(data_config, name: str):
  value = data_config.get(name, None)
  return PREPARE_DEFAULTS[name] if value is None else value


# ------------------------------------------------------------------------------------------------
# Features and encoding
# ------------------------------------------------------------------------------------------------


def features(resolution: int):
  """The TFDS FeaturesDict of the prepared dataset."""
  # Imported here: tensorflow_datasets takes seconds to import and configs/prepare.py imports
  # this module only for PREPARE_DEFAULTS.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  r = resolution
  return tfds.features.FeaturesDict({
      'rgb': tfds.features.Image(shape=(r, r, 3), dtype=np.uint8, encoding_format='png'),
      'depth': tfds.features.Image(shape=(r, r, 1), dtype=np.uint16, encoding_format='png'),
      'label': tfds.features.Scalar(dtype=np.int64),
      'file': tfds.features.Text(),
      'view': tfds.features.Tensor(shape=(4, 4), dtype=np.float32),
      'scene_seed': tfds.features.Scalar(dtype=np.int64),
      'novel_rgb': tfds.features.Tensor(shape=(None, r, r, 3), dtype=np.uint8, encoding='zlib'),
      'novel_depth': tfds.features.Tensor(shape=(None, r, r), dtype=np.uint16, encoding='zlib'),
      'novel_view': tfds.features.Tensor(shape=(None, 4, 4), dtype=np.float32),
  })


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of uint8 [H, W, 3] or uint16 [H, W] / [H, W, 1]."""
  array = np.asarray(array)
  if array.dtype == np.uint16:
    image = Image.fromarray(np.ascontiguousarray(array.reshape(array.shape[:2])))  # I;16
  else:
    image = Image.fromarray(array)
  buffer = io.BytesIO()
  image.save(buffer, format='PNG', compress_level=6)
  return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """Inverse of encode_png: uint8 [H, W, 3] or uint16 [H, W] (PIL; no OpenCV needed)."""
  with Image.open(io.BytesIO(data)) as image:
    if image.mode.startswith('I;16'):
      return np.asarray(image, dtype=np.uint16).reshape(image.size[1], image.size[0])
    if image.mode == 'I':  # some PIL versions open 16-bit grayscale as 32-bit ints
      return np.asarray(image).astype(np.uint16)
    return np.asarray(image)


def zbuf_to_uint16(zbuf: np.ndarray) -> np.ndarray:
  return np.round(np.clip(np.asarray(zbuf, np.float64), 0.0, 1.0) * DEPTH_PNG_MAX).astype(
      np.uint16)


def zbuf_from_uint16(depth: np.ndarray) -> np.ndarray:
  return np.asarray(depth, np.float32) / DEPTH_PNG_MAX


def _example(rgb: np.ndarray, zbuf: np.ndarray, *, label: int, file: str,
             view: np.ndarray, scene_seed: int = -1,
             novel: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> Dict[str, Any]:
  r = rgb.shape[0]
  if novel is None:
    novel = (np.zeros((0, r, r, 3), np.uint8), np.zeros((0, r, r), np.uint16),
             np.zeros((0, 4, 4), np.float32))
  return {'rgb': encode_png(rgb), 'depth': encode_png(zbuf_to_uint16(zbuf)), 'label': int(label),
          'file': file, 'view': np.asarray(view, np.float32), 'scene_seed': int(scene_seed),
          'novel_rgb': novel[0], 'novel_depth': novel[1], 'novel_view': novel[2]}


# ------------------------------------------------------------------------------------------------
# Images and depth files
# ------------------------------------------------------------------------------------------------


class Skip(Exception):
  """An input that cannot be used; the message is the reason recorded in the summary."""


def load_rgb(path: pathlib.Path) -> Tuple[Image.Image, List[str]]:
  """Opens an image as 8-bit RGB, converting other modes; returns (image, conversion notes)."""
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


def _read_array(path: pathlib.Path) -> np.ndarray:
  try:
    if path.suffix == '.npz':
      with np.load(path) as npz:
        if 'arr_0' not in npz.files:
          raise Skip(f'depth file {path.name} has no array arr_0 (has {npz.files})')
        array = npz['arr_0']
    elif path.suffix == '.npy':
      array = np.load(path)
    else:
      with Image.open(path) as image:
        image.load()
        array = np.asarray(image)
  except Skip:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # np.load raises ValueError/OSError/EOFError/zipfile errors on damaged files.
    raise Skip(f'unreadable depth file {path.name}: {type(e).__name__}: {e}') from e
  array = np.squeeze(np.asarray(array))
  if array.ndim != 2:
    raise Skip(f'depth file {path.name} has shape {np.shape(array)}; expected [H, W]')
  if not np.issubdtype(array.dtype, np.number):
    raise Skip(f'depth file {path.name} has dtype {array.dtype}; expected numbers')
  return array.astype(np.float32)


def _match_image_size(depth: np.ndarray, width: int, height: int, name: str,
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
                 notes: List[str]) -> np.ndarray:
  """Fills a few invalid depth values from the nearest valid pixel; too many: Skip."""
  num_invalid = int(valid.size - np.count_nonzero(valid))
  if not num_invalid:
    return depth
  fraction = num_invalid / valid.size
  if fraction > max_invalid:
    raise Skip(f'depth {name} has {100 * fraction:.1f}% invalid values (NaN/inf/<=0); at most '
               f'{100 * max_invalid:.1f}% are filled (config.data.max_invalid_depth)')
  _, (rows, cols) = ndimage.distance_transform_edt(~valid, return_indices=True)
  notes.append(f'{num_invalid} invalid depth values filled from nearest valid pixels')
  return depth[rows, cols]


def find_depth_file(image_rel: pathlib.PurePath, root: pathlib.Path,
                    extensions: Sequence[str], image_path: pathlib.Path) -> pathlib.Path:
  """<root>/<image dir>/<stem><ext> for the first existing ext; Skip when there is none."""
  base = root / image_rel.parent
  for ext in extensions:
    candidate = base / (image_rel.stem + ext)
    if candidate != image_path and candidate.is_file():
      return candidate
  raise Skip(f'no depth file {image_rel.stem}{{{",".join(extensions)}}} in {base}')


# ------------------------------------------------------------------------------------------------
# Plans: what each shard holds
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _SplitPlan:
  split: str
  items: List[Any]  # folder: (relative path, label); procedural: scene seeds
  examples_per_shard: int
  options: Dict[str, Any]  # everything a worker needs, JSON-serialisable
  plan_id: str = ''

  @property
  def num_shards(self) -> int:
    return max(1, math.ceil(len(self.items) / self.examples_per_shard))

  def shard_items(self, shard: int) -> List[Any]:
    return self.items[shard * self.examples_per_shard:(shard + 1) * self.examples_per_shard]

  def shard_filename(self, shard: int) -> str:
    return (f'{DATASET_NAME}-{self.split}.array_record-{shard:05d}-of-'
            f'{self.num_shards:05d}')


def _plan_id(options: Dict[str, Any], items: Sequence[Any]) -> str:
  digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode())
  digest.update(json.dumps(list(items)).encode())
  return digest.hexdigest()[:16]


def scene_seed(seed: int, split_index: int, index: int) -> int:
  """Independent 63-bit scene seeds per (config seed, split, example index)."""
  return int(np.random.SeedSequence([seed, split_index, index]).generate_state(
      2, np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], np.uint64))


def list_folder(folder: pathlib.Path, labels: str, classes: Sequence[str]
                ) -> Tuple[List[Tuple[str, int]], List[str], List[Dict[str, str]]]:
  """Image files (sorted), labels from class subfolders, and files that are not images.

  Returns:
    items [(relative path, label)], classes (sorted subfolder names unless given), ignored
    [{file, reason}] for non-image files (depth sidecars of the image folder excepted).
  """
  files, ignored = [], []
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in sorted(filenames):
      if name.startswith('.'):
        continue
      rel = pathlib.PurePath(os.path.relpath(os.path.join(dirpath, name), folder))
      ext = rel.suffix.lower()
      if ext in IMAGE_EXTENSIONS:
        files.append(rel)
      elif ext not in DEPTH_EXTENSIONS:
        ignored.append({'file': str(rel), 'reason': f'not an image file (extension {ext!r})'})
  use_classes = labels == 'auto' and any(len(f.parts) > 1 for f in files)
  if not use_classes:
    return [(str(f), -1) for f in files], [], ignored
  found = sorted({f.parts[0] for f in files if len(f.parts) > 1})
  class_list = list(classes) if classes else found
  index = {name: i for i, name in enumerate(class_list)}
  items = []
  for f in files:
    if len(f.parts) == 1:
      items.append((str(f), -1))  # loose files beside class folders are unlabeled
    elif f.parts[0] in index:
      items.append((str(f), index[f.parts[0]]))
    else:
      ignored.append({'file': str(f), 'reason': f'class folder {f.parts[0]!r} is not in the '
                                                f'class list of this dataset'})
  return items, class_list, ignored


# ------------------------------------------------------------------------------------------------
# Workers
# ------------------------------------------------------------------------------------------------

_PROGRESS = None  # multiprocessing.Value shared with worker processes


def _init_worker(progress):
  global _PROGRESS
  _PROGRESS = progress


def _tick(n: int = 1):
  if _PROGRESS is not None:
    with _PROGRESS.get_lock():
      _PROGRESS.value += n


@functools.lru_cache(maxsize=8)
def _novel_views(viewset: str, seed: Optional[int]) -> np.ndarray:
  """Views [V - 1, 4, 4] of a view set without view 0 (the image itself); 'random' draws its
  pose from the scene seed, the other view sets are fixed and computed once."""
  key = None if seed is None else jax.random.key(seed % (1 << 31))
  poses = cameras.viewset_poses(viewset, key=key)[1:]
  return np.asarray(cameras.views_from_poses(poses), np.float32)


def _procedural_example(seed: int, options: Dict[str, Any]) -> Dict[str, Any]:
  res, near, far = options['resolution'], options['near'], options['far']
  scene = procedural.sample_scene(seed)
  rgbd = procedural.render_rgbd(scene, cameras.SOURCE_VIEW, res, near=near, far=far)
  novel = None
  if options.get('novel_viewset'):
    views = _novel_views(options['novel_viewset'],
                         seed if options['novel_viewset'] == 'random' else None)
    renders = [procedural.render_rgbd(scene, v, res, near=near, far=far) for v in views]
    novel = (np.stack([np.round(r[..., :3] * 255).astype(np.uint8) for r in renders]),
             np.stack([zbuf_to_uint16(r[..., 3]) for r in renders]), views)
  return _example(np.round(rgbd[..., :3] * 255).astype(np.uint8), rgbd[..., 3], label=-1,
                  file=f'procedural/{seed}', view=cameras.SOURCE_VIEW, scene_seed=seed,
                  novel=novel)


def _folder_depth(image: Image.Image, rel: pathlib.PurePath, path: pathlib.Path,
                  options: Dict[str, Any], notes: List[str]) -> np.ndarray:
  """z-buffer depth [R, R] in [0, 1] for a folder image from its midas / depth_map file."""
  res, near, far = options['resolution'], options['near'], options['far']
  root = pathlib.Path(options['depth_folder'] or options['folder'])
  kind = options['depth']
  exts = DEPTH_EXTENSIONS if kind == 'midas' else DEPTH_MAP_EXTENSIONS
  depth_path = find_depth_file(rel, root, exts, path)
  raw = _match_image_size(_read_array(depth_path), image.width, image.height, depth_path.name,
                          notes)
  finite = np.isfinite(raw)
  valid = finite & (raw > 0) if kind == 'depth_map' else finite
  raw = repair_depth(raw, valid, options['max_invalid_depth'], depth_path.name, notes)
  crop = resize_crop_depth(raw, res)
  if kind == 'midas':
    return np.asarray(depth_lib.zbuf_from_midas(crop, near, far))
  values = crop.astype(np.float64) * options['depth_map_scale']
  planar = values if options['depth_map_kind'] == 'metric' else 1.0 / values
  return np.asarray(depth_lib.zbuf_from_depth(planar, near, far), np.float32)


def _folder_example(item: Tuple[str, int], options: Dict[str, Any],
                    estimator_input: bool = False):
  """(example dict or, with estimator_input, (rgb, estimator crop)), notes; raises Skip."""
  rel_str, label = item
  rel = pathlib.PurePath(rel_str)
  path = pathlib.Path(options['folder']) / rel
  image, notes = load_rgb(path)
  rgb = resize_crop_rgb(image, options['resolution'])
  if estimator_input:
    return (rgb, resize_crop_rgb(image, options['estimator_resolution'])), notes
  zbuf = _folder_depth(image, rel, path, options, notes)
  return _example(rgb, zbuf, label=label, file=rel_str, view=cameras.SOURCE_VIEW), notes


def _estimate_zbuf(estimator: Callable[[np.ndarray], np.ndarray], crops: List[np.ndarray],
                   options: Dict[str, Any]) -> List[Tuple[Any, List[str]]]:
  """(zbuf [R, R] or the Skip of an unusable estimate, conversion notes) per crop."""
  res = options['resolution']
  disparity = np.asarray(estimator(np.stack(crops)), np.float32)
  if disparity.ndim == 4 and disparity.shape[-1] == 1:
    disparity = disparity[..., 0]
  if disparity.shape[0] != len(crops) or disparity.ndim != 3:
    raise errors.UserError(
        f'the depth estimator returned shape {disparity.shape} for {len(crops)} images; it must '
        'return raw disparity [B, H, W] (config.data.estimator)')
  out = []
  for disp in disparity:
    notes = []
    try:
      disp = repair_depth(disp, np.isfinite(disp), options['max_invalid_depth'],
                          'from the estimator', notes)
      out.append((np.asarray(depth_lib.zbuf_from_midas(
          resize_crop_depth(disp, res), options['near'], options['far'])), notes))
    except Skip as e:
      out.append((e, notes))
  return out


def _write_shard(task: Dict[str, Any], estimator=None) -> Dict[str, Any]:
  """Writes one shard to a temporary file, renames it when complete; returns its record."""
  options = task['options']
  feats = features(options['resolution'])
  final = pathlib.Path(task['path'])
  tmp = final.with_name(final.name + '.tmp')
  writer = array_record_module.ArrayRecordWriter(str(tmp), 'group_size:1')
  written, skipped, converted, label_counts = 0, [], [], {}
  num_bytes = 0
  start = time.time()

  def emit(example, file, notes):
    nonlocal written, num_bytes
    record = feats.serialize_example(example)
    writer.write(record)
    num_bytes += len(record)
    written += 1
    label_counts[str(example['label'])] = label_counts.get(str(example['label']), 0) + 1
    converted.extend({'file': file, 'note': n} for n in notes)

  try:
    if options['source'] == 'procedural':
      for seed in task['items']:
        emit(_procedural_example(seed, options), f'procedural/{seed}', [])
        _tick()
    elif estimator is None:
      for item in task['items']:
        try:
          example, notes = _folder_example(item, options)
          emit(example, item[0], notes)
        except Skip as e:
          skipped.append({'file': item[0], 'reason': str(e)})
        except Exception as e:  # pylint: disable=broad-except
          # One odd file (a decoder bug, an exotic format) must not stop a week-long job.
          logging.exception('prepare: unexpected error on %s', item[0])
          skipped.append({'file': item[0], 'reason': f'unexpected error: {type(e).__name__}: {e}'})
        _tick()
    else:
      batch_size = options['estimator_batch_size']
      items = list(task['items'])
      for lo in range(0, len(items), batch_size):
        loaded = []
        for item in items[lo:lo + batch_size]:
          try:
            (rgb, crop), notes = _folder_example(item, options, estimator_input=True)
            loaded.append((item, rgb, crop, notes))
          except Skip as e:
            skipped.append({'file': item[0], 'reason': str(e)})
          except Exception as e:  # pylint: disable=broad-except
            logging.exception('prepare: unexpected error on %s', item[0])
            skipped.append({'file': item[0],
                            'reason': f'unexpected error: {type(e).__name__}: {e}'})
        if loaded:
          estimates = _estimate_zbuf(estimator, [x[2] for x in loaded], options)
          for (item, rgb, _, notes), (zbuf, depth_notes) in zip(loaded, estimates):
            if isinstance(zbuf, Skip):
              skipped.append({'file': item[0], 'reason': str(zbuf)})
              continue
            emit(_example(rgb, zbuf, label=item[1], file=item[0], view=cameras.SOURCE_VIEW),
                 item[0], notes + depth_notes)
        _tick(len(items[lo:lo + batch_size]))
  finally:
    writer.close()
  os.replace(tmp, final)
  record = {'plan_id': task['plan_id'], 'split': task['split'], 'shard': task['shard'],
            'file': final.name, 'num_examples': written, 'num_bytes': num_bytes,
            'skipped': skipped, 'converted': converted, 'label_counts': label_counts,
            'seconds': time.time() - start}
  marker = pathlib.Path(task['marker'])
  marker.write_text(json.dumps(record))
  return record


def _load_estimator(spec: str, kwargs: Dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
  module_name, _, attr = spec.partition(':')
  try:
    factory = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise errors.ConfigError('data.estimator', f'cannot import {spec!r} ({e})',
                             "name an importable factory as 'package.module:callable'") from e
  return factory(**dict(kwargs))


# ------------------------------------------------------------------------------------------------
# prepare()
# ------------------------------------------------------------------------------------------------


def _options(data_config) -> Dict[str, Any]:
  """Validated plain-dict options; every problem is a ConfigError naming the field."""
  d = data_config
  source = d.get('source')
  if source not in SOURCES:
    raise errors.ConfigError('data.source', f'unknown source {source!r}', f'use one of {SOURCES}')
  resolution = int(d.get('resolution') or 0)
  if resolution < 8:
    raise errors.ConfigError('data.resolution', f'{resolution} is too small',
                             'use a resolution of at least 8 pixels (e.g. 64 or 128)')
  near, far = float(d.get('near', 0.5)), float(d.get('far', 100.0))
  if not 0 < near < far:
    raise errors.ConfigError('data.near', f'near={near}, far={far}', 'use 0 < near < far')
  per_shard = int(_get(d, 'examples_per_shard'))
  if per_shard < 1:
    raise errors.ConfigError('data.examples_per_shard', f'{per_shard}', 'use a positive number')
  options = dict(source=source, resolution=resolution, near=near, far=far,
                 seed=int(d.get('seed', 0) or 0), examples_per_shard=per_shard)
  depth = d.get('depth')
  if source == 'procedural':
    if depth not in ('exact', None, ''):
      raise errors.ConfigError('data.depth', f"procedural scenes have exact depth, not {depth!r}",
                               "use --config.data.depth=exact (or source='folder')")
    num = int(d.get('num_examples') or 0)
    if num < 1:
      raise errors.ConfigError('data.num_examples', f'{num}', 'use a positive number of scenes')
    num_eval = int(_get(d, 'num_eval_examples'))
    if num_eval < 0:
      raise errors.ConfigError('data.num_eval_examples', f'{num_eval}', 'use 0 or more')
    viewset = _get(d, 'novel_viewset')
    if viewset and viewset not in cameras.VIEWSETS:
      raise errors.ConfigError('data.novel_viewset', f'unknown view set {viewset!r}',
                               f"use one of {cameras.VIEWSETS} or '' for none")
    options.update(depth='exact', num_examples=num, num_eval_examples=num_eval,
                   novel_viewset=viewset)
    return options

  folder = str(d.get('folder') or '')
  if not folder:
    raise errors.ConfigError('data.folder', 'no image folder given for source=folder',
                             '--config.data.folder=/path/to/images')
  if not os.path.isdir(folder):
    raise errors.ConfigError('data.folder', f'{folder} does not exist or is not a folder',
                             'point it at an existing folder of images')
  if not depth or depth == 'exact':
    raise errors.ConfigError(
        'data.depth', f'a folder of images needs a depth source (got {depth!r})',
        f'set --config.data.depth to one of {FOLDER_DEPTHS}: midas (<stem>.npz/.npy MiDaS '
        'disparity beside each image), depth_map (<stem>.png/.npy depth maps) or estimator')
  if depth not in FOLDER_DEPTHS:
    raise errors.ConfigError('data.depth', f'unknown depth source {depth!r}',
                             f'use one of {FOLDER_DEPTHS}')
  depth_folder = str(_get(d, 'depth_folder'))
  if depth_folder and not os.path.isdir(depth_folder):
    raise errors.ConfigError('data.depth_folder', f'{depth_folder} does not exist',
                             "point it at the folder of depth files, or '' for beside the images")
  kind = _get(d, 'depth_map_kind')
  if depth == 'depth_map' and kind not in ('metric', 'inverse'):
    raise errors.ConfigError('data.depth_map_kind', f'unknown kind {kind!r}',
                             "use 'metric' (depth) or 'inverse' (disparity)")
  scale = float(_get(d, 'depth_map_scale'))
  if depth == 'depth_map' and not scale > 0:
    raise errors.ConfigError('data.depth_map_scale', f'{scale}', 'use a positive scale')
  estimator = str(_get(d, 'estimator'))
  if depth == 'estimator' and (':' not in estimator or estimator.startswith(':')):
    raise errors.ConfigError('data.estimator', f'{estimator!r} does not name a depth estimator',
                             "use 'package.module:factory' (see ivd_jax/models/depth_estimator)")
  labels = _get(d, 'labels')
  if labels not in ('auto', 'none'):
    raise errors.ConfigError('data.labels', f'{labels!r}', "use 'auto' or 'none'")
  split = str(_get(d, 'split'))
  if not split.replace('_', '').isalnum():
    raise errors.ConfigError('data.split', f'{split!r}', 'use a plain name such as train')
  max_invalid = float(_get(d, 'max_invalid_depth'))
  if not 0 <= max_invalid < 1:
    raise errors.ConfigError('data.max_invalid_depth', f'{max_invalid}', 'use a value in [0, 1)')
  options.update(
      folder=os.path.abspath(folder), depth=depth,
      depth_folder=os.path.abspath(depth_folder) if depth_folder else '',
      depth_map_kind=kind, depth_map_scale=scale, estimator=estimator,
      estimator_kwargs=dict(_get(d, 'estimator_kwargs')),
      estimator_batch_size=int(_get(d, 'estimator_batch_size')),
      estimator_resolution=int(_get(d, 'estimator_resolution')),
      max_invalid_depth=max_invalid, labels=labels, split=split,
      num_classes=int(d.get('num_classes') or 0),
      classes=[c.strip() for c in str(_get(d, 'classes')).split(',') if c.strip()])
  return options


def data_dir(config, workdir: str) -> str:
  """config.data.dir, defaulting to WORKDIR/data."""
  return str(config.data.get('dir') or os.path.join(workdir, 'data'))


def _existing_metadata(out: pathlib.Path) -> Dict[str, Any]:
  path = out / STATE_DIR / 'metadata.json'
  return json.loads(path.read_text()) if path.exists() else {}


def _plans(options: Dict[str, Any], existing: Dict[str, Any]
           ) -> Tuple[List[_SplitPlan], List[str], List[Dict[str, str]]]:
  per_shard = options['examples_per_shard']
  if options['source'] == 'procedural':
    base = {k: options[k] for k in ('source', 'resolution', 'near', 'far', 'seed')}
    train = [scene_seed(options['seed'], 0, i) for i in range(options['num_examples'])]
    plans = [_SplitPlan('train', train, per_shard, dict(base, novel_viewset=''))]
    if options['num_eval_examples']:
      test = [scene_seed(options['seed'], 1, i) for i in range(options['num_eval_examples'])]
      plans.append(_SplitPlan(SPLIT_PROCEDURAL_TEST, test, per_shard,
                              dict(base, novel_viewset=options['novel_viewset'])))
    classes, ignored = [], []
  else:
    classes = options['classes'] or existing.get('classes', [])
    items, classes, ignored = list_folder(pathlib.Path(options['folder']), options['labels'],
                                          classes)
    if not items:
      raise errors.ConfigError(
          'data.folder', f'{options["folder"]} contains no image files '
          f'({", ".join(IMAGE_EXTENSIONS)})', 'point it at a folder of images')
    if options['num_classes'] and len(classes) != options['num_classes']:
      raise errors.ConfigError(
          'data.num_classes', f'{options["num_classes"]} classes expected but '
          f'{options["folder"]} has {len(classes)} class folders',
          f'set --config.data.num_classes={len(classes)} (here and for training), or 0 to skip '
          'this check')
    worker_options = {k: v for k, v in options.items()
                      if k not in ('classes', 'estimator_kwargs', 'num_classes')}
    plans = [_SplitPlan(options['split'], items, per_shard, worker_options)]
  for plan in plans:
    plan.plan_id = _plan_id(plan.options, plan.items)
  return plans, classes, ignored


def _write_metadata(out: pathlib.Path, resolution: int, metadata: Dict[str, Any],
                    split_records: Dict[str, List[Dict[str, Any]]]) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split_infos = []
  for split, records in sorted(split_records.items()):
    records = sorted(records, key=lambda r: r['shard'])
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[r['num_examples'] for r in records],
        num_bytes=sum(r['num_bytes'] for r in records),
        filename_template=tfds.core.ShardedFileTemplate(
            data_dir=out, template=tfds.core.naming.DEFAULT_FILENAME_TEMPLATE,
            dataset_name=DATASET_NAME, split=split, filetype_suffix='array_record')))
  tfds.folder_dataset.write_metadata(
      data_dir=out, features=features(resolution), split_infos=split_infos,
      version=DATASET_VERSION, check_data=False,
      description='RGBD images for ivd_jax (3D-aware image generation with 2D diffusion).',
      metadata=tfds.core.MetadataDict(metadata))
  (out / STATE_DIR / 'metadata.json').write_text(json.dumps(metadata, indent=1))


def load_metadata(path: str) -> Dict[str, Any]:
  """metadata.json of a prepared dataset: resolution, near, far, source, depth, classes, ..."""
  meta = pathlib.Path(path) / 'metadata.json'
  if not meta.exists():
    raise errors.ConfigError(
        'data.dir', f'no prepared dataset at {path} (metadata.json missing)',
        'run python -m ivd_jax.main --config=configs/prepare.py --workdir=DIR first, or point '
        'config.data.dir at a prepared dataset')
  return json.loads(meta.read_text())


def _run_tasks(tasks: List[Dict[str, Any]], workers: int, estimator, total: int,
               done: int, show_progress: bool) -> List[Dict[str, Any]]:
  """Runs shard tasks (in this process or a spawn pool) with a progress bar and ETA."""
  bar = tqdm.tqdm(total=total, initial=done, unit='img', desc='prepare', smoothing=0.1,
                  disable=not show_progress, dynamic_ncols=True)
  records = []
  try:
    if workers <= 1 or len(tasks) <= 1 or estimator is not None:
      progress = multiprocessing.Value('q', 0)
      _init_worker(progress)
      for task in tasks:
        records.append(_write_shard(task, estimator))
        bar.update(progress.value - (bar.n - done))
      _init_worker(None)
      return records
    ctx = multiprocessing.get_context('spawn')
    progress = ctx.Value('q', 0)
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker,
        initargs=(progress,)) as pool:
      pending = {pool.submit(_write_shard, t) for t in tasks}
      while pending:
        finished, pending = concurrent.futures.wait(pending, timeout=0.5)
        for future in finished:
          records.append(future.result())
        bar.update(done + progress.value - bar.n)
    return records
  finally:
    bar.close()


def prepare(config, workdir: str, *, process_index: Optional[int] = None,
            process_count: Optional[int] = None) -> Dict[str, Any]:
  """Mode 'prepare': writes the RGBD dataset to config.data.dir and DIR/prepare_summary.json.

  Args:
    config: the job config; reads config.data (see module docstring and configs/prepare.py).
    workdir: DIR; the summary goes to DIR/prepare_summary.json, the data by default to DIR/data.
    process_index, process_count: which shards this process writes (shard k goes to process
      k % process_count). Default: jax.process_index() / jax.process_count(), i.e. every process
      of a multi-host job runs prepare; pass 0 / 1 when a single process prepares everything.

  Returns:
    The summary dict (also written as JSON by process 0).
  """
  start = time.time()
  options = _options(config.data)
  out = pathlib.Path(data_dir(config, workdir))
  (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
  existing = _existing_metadata(out)
  if existing and (existing.get('resolution') != options['resolution'] or
                   existing.get('source') != options['source']):
    raise errors.ConfigError(
        'data.dir', f'{out} already holds a {existing.get("source")} dataset at '
        f'{existing.get("resolution")} px', 'use another config.data.dir for this dataset')
  plans, classes, ignored = _plans(options, existing)
  estimator = None
  if options.get('depth') == 'estimator':
    estimator = _load_estimator(options['estimator'], options['estimator_kwargs'])

  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  tasks, total, done = [], 0, 0
  for plan in plans:
    expected = {plan.shard_filename(k) for k in range(plan.num_shards)}
    prefix = f'{DATASET_NAME}-{plan.split}.array_record-'
    for stale in out.glob(prefix + '*'):
      if stale.name not in expected and not stale.name.endswith('.tmp'):
        stale.unlink(missing_ok=True)  # shards of an earlier plan with another shard count
    for shard in range(plan.num_shards):
      if shard % process_count != process_index:
        continue
      n = len(plan.shard_items(shard))
      total += n
      marker = out / STATE_DIR / f'{plan.split}-{shard:05d}.json'
      path = out / plan.shard_filename(shard)
      if marker.exists() and path.exists():
        if json.loads(marker.read_text()).get('plan_id') == plan.plan_id:
          done += n
          continue
      tasks.append(dict(options=plan.options, items=plan.shard_items(shard), split=plan.split,
                        shard=shard, path=str(path), marker=str(marker), plan_id=plan.plan_id))
  if done:
    logging.info('prepare: resuming, %d of %d examples already written', done, total)
  workers = int(_get(config.data, 'prepare_workers'))
  if not workers:
    # Auto: a spawned worker spends seconds importing, worth it only for larger jobs.
    pending = total - done
    workers = (os.cpu_count() or 1) if pending >= _MIN_ITEMS_FOR_AUTO_POOL else 1
  _run_tasks(tasks, workers, estimator, total, done,
             show_progress=bool(config.get('log', {}).get('progress', True)))

  # Every process waits until all shards exist (other hosts may still be writing); process 0
  # then writes the metadata and the summary.
  records = _wait_for_shards(out, plans)
  summary_records = [r for plan in plans for r in records[plan.split]]
  if process_index == 0:
    metadata = dict(existing)
    metadata.update(resolution=options['resolution'], near=options['near'], far=options['far'],
                    source=options['source'], depth=options['depth'],
                    depth_encoding='png16 round(65535 * zbuf), METHOD 3 z-buffer (near, far)',
                    classes=classes, num_classes=len(classes), seed=options['seed'])
    splits = dict(existing.get('splits', {}))
    for plan in plans:
      splits[plan.split] = dict(plan_id=plan.plan_id, num_shards=plan.num_shards)
    metadata['splits'] = splits
    all_records = {}
    for split, info in list(splits.items()):
      found = _read_markers(out, split, info['num_shards'], info['plan_id'])
      if found is None:  # an earlier split whose shards were removed: drop it from the dataset
        logging.warning('prepare: split %s of %s is incomplete and is left out', split, out)
        del splits[split]
      else:
        all_records[split] = found
    _write_metadata(out, options['resolution'], metadata, all_records)
  skipped = [s for r in summary_records for s in r['skipped']] + ignored
  label_counts: Dict[str, int] = {}
  for r in summary_records:
    for k, v in r['label_counts'].items():
      label_counts[k] = label_counts.get(k, 0) + v
  seconds = time.time() - start
  num_written = sum(r['num_examples'] for r in summary_records)
  summary = dict(
      num_written=num_written, num_skipped=len(skipped), skipped=skipped,
      converted=[c for r in summary_records for c in r['converted']],
      classes=classes, num_classes=len(classes), label_counts=label_counts,
      splits={p.split: sum(r['num_examples'] for r in records[p.split]) for p in plans},
      data_dir=str(out), source=options['source'], depth=options['depth'],
      resolution=options['resolution'], near=options['near'], far=options['far'],
      num_shards={p.split: p.num_shards for p in plans}, resumed_examples=done,
      seconds=round(seconds, 3),
      examples_per_second=round((total - done) / seconds, 2) if seconds > 0 else None)
  if process_index == 0:
    os.makedirs(workdir, exist_ok=True)
    pathlib.Path(workdir, 'prepare_summary.json').write_text(json.dumps(summary, indent=1))
    logging.info('prepare: wrote %d examples (%d skipped) to %s in %.1f s', num_written,
                 len(skipped), out, seconds)
    print(f'prepare: {num_written} examples written, {len(skipped)} skipped -> {out} '
          f'(summary: {os.path.join(workdir, "prepare_summary.json")})')
  return summary


def _read_markers(out: pathlib.Path, split: str, num_shards: int, plan_id: str
                  ) -> Optional[List[Dict[str, Any]]]:
  records = []
  for shard in range(num_shards):
    marker = out / STATE_DIR / f'{split}-{shard:05d}.json'
    if not marker.exists():
      return None
    record = json.loads(marker.read_text())
    if record.get('plan_id') != plan_id:
      return None
    records.append(record)
  return records


def _wait_for_shards(out: pathlib.Path, plans: List[_SplitPlan], poll_s: float = 2.0,
                     timeout_s: float = 7 * 24 * 3600) -> Dict[str, List[Dict[str, Any]]]:
  deadline = time.time() + timeout_s
  records = {}
  for plan in plans:
    while True:
      found = _read_markers(out, plan.split, plan.num_shards, plan.plan_id)
      if found is not None:
        records[plan.split] = found
        break
      if time.time() > deadline:
        raise errors.UserError(f'prepare: shards of split {plan.split} in {out} did not all '
                               'appear; rerun prepare on every process to finish them')
      time.sleep(poll_s)
  return records
