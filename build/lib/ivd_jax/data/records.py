"""The prepared dataset on disk: a TFDS ArrayRecord dataset of RGBD examples.

A dataset directory (config.data.dir, by default WORKDIR/data) holds ArrayRecord shards named the
TFDS way, dataset_info.json / features.json / metadata.json, and STATE_DIR (shard markers and a copy
of the metadata). It reads without TensorFlow through `tfds.builder_from_directory(dir)
.as_data_source(split)` (open_split below). Features of every example:
  rgb          uint8 [R, R, 3], PNG
  depth        uint16 [R, R, 1], PNG of round(65535 * zbuf), zbuf the z-buffer encoding of
               docs/method.md §3 with the near/far recorded in metadata.json (training data:
               0.5 / 100)
  label        int64, -1 when unlabeled; classes (sorted subfolder names) in metadata.json
  file         the source file relative to config.data.folder, or 'procedural/<scene seed>'
  view         float32 [4, 4] world -> camera matrix of the image (cameras.SOURCE_VIEW)
  scene_seed   int64, the procedural scene (-1 for folders): procedural.sample_scene(seed)
               re-renders it exactly from any camera
  novel_rgb / novel_depth / novel_view
               true novel views [V, ...] of procedural scenes for evaluation (split 'test'; V = 0
               elsewhere): same encodings, zlib-compressed
PNGs are decoded with decode_png() (PIL): TFDS' own numpy decoder needs OpenCV for 16-bit PNGs,
so readers pass decoders={'rgb': SkipDecoding(), 'depth': SkipDecoding()}.
"""
import io
import json
from typing import Any, Dict, List, Optional, Tuple

from etils import epath
import numpy as np
from PIL import Image

from ivd_jax import errors
from ivd_jax.io import ingest
from ivd_jax.io import paths

DATASET_NAME = 'ivd_rgbd'
DATASET_VERSION = '1.0.0'
STATE_DIR = 'prepare_state'  # shard markers and a copy of metadata.json
SPLIT_TEST = 'test'  # the procedural split with true novel views


def features(resolution: int):
  """The TFDS FeaturesDict of the prepared dataset."""
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


def rgbd_from_stored(rgb: np.ndarray, depth: np.ndarray) -> np.ndarray:
  """Stored uint8 RGB [..., H, W, 3] and uint16 depth [..., H, W] -> float32 [..., H, W, 4] in
  [0, 1] (the z-buffer channel of docs/method.md §3)."""
  zbuf = ingest.zbuf_from_uint16(depth).reshape(np.shape(rgb)[:-1] + (1,))
  return np.concatenate([np.asarray(rgb, np.float32) / 255.0, zbuf], axis=-1)


def example(rgb: np.ndarray, zbuf: np.ndarray, *, label: int, file: str, view: np.ndarray,
            scene_seed: int = -1,
            novel: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
            ) -> Dict[str, Any]:
  """The feature dict of one example: uint8 rgb [R, R, 3], zbuf [R, R] in [0, 1], and novel =
  (uint8 rgb [V, R, R, 3], uint16 depth [V, R, R], views [V, 4, 4]) or None for V = 0."""
  r = rgb.shape[0]
  if novel is None:
    novel = (np.zeros((0, r, r, 3), np.uint8), np.zeros((0, r, r), np.uint16),
             np.zeros((0, 4, 4), np.float32))
  return {'rgb': encode_png(rgb), 'depth': encode_png(ingest.zbuf_to_uint16(zbuf)),
          'label': int(label), 'file': file, 'view': np.asarray(view, np.float32),
          'scene_seed': int(scene_seed), 'novel_rgb': novel[0], 'novel_depth': novel[1],
          'novel_view': novel[2]}


def shard_filename(split: str, shard: int, num_shards: int) -> str:
  """The TFDS name of shard `shard` of a split."""
  return f'{DATASET_NAME}-{split}.array_record-{shard:05d}-of-{num_shards:05d}'


def data_dir(config, workdir: str) -> str:
  """config.data.dir, defaulting to WORKDIR/data (either may be on a bucket, gs://...)."""
  return str(config.data.get('dir') or paths.join(workdir, 'data'))


def write_metadata(out: epath.Path, resolution: int, metadata: Dict[str, Any],
                   split_records: Dict[str, List[Dict[str, Any]]]) -> None:
  """dataset_info.json, features.json and metadata.json of the splits' shard records."""
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


def existing_metadata(out: epath.Path) -> Dict[str, Any]:
  """The metadata of an earlier prepare into `out` (also of one still in progress), or {}."""
  path = out / STATE_DIR / 'metadata.json'
  return json.loads(path.read_text()) if path.exists() else {}


def load_metadata(path: str) -> Dict[str, Any]:
  """metadata.json of a prepared dataset: resolution, near, far, source, depth, classes, ..."""
  meta = epath.Path(path) / 'metadata.json'  # a local folder or gs://
  if not meta.exists():
    raise errors.ConfigError(
        'data.dir', f'no prepared dataset at {path} (metadata.json missing)',
        'run python -m ivd_jax.main --config=configs/prepare.py --workdir=DIR first, or point '
        'config.data.dir at a prepared dataset')
  return json.loads(meta.read_text())


def local_dataset(path: str, cache_dir: str = '') -> str:
  """A local folder holding the dataset at `path`: `path` itself, or for a dataset on a bucket its
  copy in `cache_dir` (config.data.cache_dir; io.paths.stage refreshes only changed files).
  ArrayRecord reads local files only."""
  if not paths.is_remote(path):
    return path
  try:
    return paths.stage(path, cache_dir)
  except OSError as e:
    raise errors.ConfigError(
        'data.cache_dir', f'cannot copy the dataset {path} to '
        f'{paths.staging_dir(path, cache_dir)}: {type(e).__name__}: {e}',
        'point --config.data.cache_dir at a local disk with room for the dataset, or mount the '
        'bucket (gcsfuse) and set --config.data.dir to the mounted folder') from e


def open_split(path: str, split: str, *, this_process_only: bool, novel_views: bool = False,
               cache_dir: str = ''):
  """A random-access source of a split's examples, PNGs left encoded (decode_png).

  Args:
    path: the dataset directory (local, or on a bucket: copied to `cache_dir` first).
    split: its split name.
    this_process_only: read only this process's part (`tfds.split_for_jax_process`).
    novel_views: decode novel_rgb / novel_depth (False: left as bytes, for training input).
    cache_dir: where a dataset on a bucket is copied (config.data.cache_dir; '' = default).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(local_dataset(path, cache_dir))
  if split not in builder.info.splits:
    raise errors.ConfigError('data.dir', f'{path} has no split {split!r} (it has '
                             f'{sorted(builder.info.splits)})',
                             'prepare that split or ask for an existing one')
  skip = tfds.decode.SkipDecoding
  decoders = {'rgb': skip(), 'depth': skip()}
  if not novel_views:
    decoders.update(novel_rgb=skip(), novel_depth=skip())
  if this_process_only:
    split = tfds.split_for_jax_process(split)
  return builder.as_data_source(split=split, decoders=decoders)


def read_test_views(data_dir: str, num_scenes: int, cache_dir: str = ''
                    ) -> Dict[str, np.ndarray]:
  """The true views of the first `num_scenes` scenes of the procedural test split.

  View 0 is the stored image (the source view), views 1.. its novel views, all exact renders of
  procedural.sample_scene(scene_seed) stored at 8 / 16 bits.

  Args:
    data_dir: a dataset prepared from source='procedural' with num_eval_examples > 0.
    num_scenes: how many scenes, in split order.
    cache_dir: where a dataset on a bucket is copied (config.data.cache_dir).

  Returns:
    rgbd: float32 [N, V, R, R, 4] in [0, 1] (colour and the z-buffer of the dataset's near/far,
      docs/method.md §3); views: float32 [N, V, 4, 4] world -> camera; scene_seed: int64 [N].
  """
  source = open_split(data_dir, SPLIT_TEST, this_process_only=False, novel_views=True,
                      cache_dir=cache_dir)
  if not 0 < num_scenes <= len(source):
    raise errors.UserError(
        f'{num_scenes} test scenes asked of {data_dir}, whose {SPLIT_TEST!r} split holds '
        f'{len(source)}; ask for 1 to {len(source)} or prepare more '
        '(--config.data.num_eval_examples)')
  rgbd, views, seeds = [], [], []
  for i in range(num_scenes):
    ex = source[i]
    if not len(ex['novel_rgb']):
      raise errors.UserError(f'the {SPLIT_TEST!r} split of {data_dir} holds no novel views; '
                             "prepare it with --config.data.novel_viewset (e.g. '3x9')")
    rgb = np.concatenate([decode_png(ex['rgb'])[None], ex['novel_rgb']])
    depth = np.concatenate([decode_png(ex['depth'])[None], ex['novel_depth']])
    rgbd.append(rgbd_from_stored(rgb, depth))
    views.append(np.concatenate([np.asarray(ex['view'])[None], np.asarray(ex['novel_view'])]))
    seeds.append(int(ex['scene_seed']))
  return dict(rgbd=np.stack(rgbd), views=np.stack(views).astype(np.float32),
              scene_seed=np.asarray(seeds, np.int64))
