"""Preparing the RGBD dataset (data.records) from procedural scenes or a folder of images.

Sources (config.data.source):
  procedural   embedded analytic scenes with exact depth: split 'train' (num_examples) and split
               'test' (num_eval_examples, with the novel views of novel_viewset).
  folder       a folder of images, optionally class subfolders (ImageNet layout), depth from
               'midas' (reference-format disparity <stem>.npz key arr_0, or <stem>.npy),
               'depth_map' (<stem>.png 16-bit or <stem>.npy, metric or inverse) or 'estimator'
               ('package.module:factory'). Written as split `split`; several folders (train,
               validation) can go into the same dataset one after the other.
Preparation is sharded and resumable (data.plan): each shard is written by one worker
(`prepare_workers` local processes, data.shards; on multi-host jobs each process takes every
process_count-th shard). Bad inputs are converted where that is sensible (grayscale, CMYK,
16-bit, palette, alpha) and otherwise skipped with a reason. Every field comes from config.data
(configs/common.py:data_section); a missing one is a ConfigError.
"""
import os
import time
from typing import Any, Dict, List

from absl import logging
from etils import epath

from ivd_jax import errors
from ivd_jax.data import plan as plan_lib
from ivd_jax.data import records
from ivd_jax.data import shards
from ivd_jax.geometry import cameras
from ivd_jax.io import ingest
from ivd_jax.io import paths

SOURCES = ('procedural', 'folder')
FOLDER_DEPTHS = ('midas', 'depth_map', 'estimator')
# Below this many pending examples one process is faster: a spawned worker spends seconds
# importing.
_MIN_ITEMS_FOR_AUTO_POOL = 2000


def _field(data_config, name: str) -> Any:
  if name not in data_config:
    raise errors.ConfigError(
        f'data.{name}', 'missing from the config',
        'build the data section with configs/common.py:data_section() (configs/prepare.py '
        'does), which holds every prepare field')
  return data_config[name]


def _procedural_options(d, options: Dict[str, Any]) -> Dict[str, Any]:
  depth = _field(d, 'depth')
  if depth not in ('exact', None, ''):
    raise errors.ConfigError('data.depth', f'procedural scenes have exact depth, not {depth!r}',
                             "use --config.data.depth=exact (or source='folder')")
  num = int(_field(d, 'num_examples') or 0)
  if num < 1:
    raise errors.ConfigError('data.num_examples', f'{num}', 'use a positive number of scenes')
  num_eval = int(_field(d, 'num_eval_examples'))
  if num_eval < 0:
    raise errors.ConfigError('data.num_eval_examples', f'{num_eval}', 'use 0 or more')
  viewset = _field(d, 'novel_viewset')
  if viewset == 'custom':
    # The poses themselves go into the options (and the plan id that resume compares).
    try:
      viewset = cameras.viewset_poses(list(_field(d, 'novel_poses'))).tolist()
    except (errors.UserError, ValueError, TypeError) as e:
      raise errors.ConfigError('data.novel_poses', str(e),
                               'give (yaw, pitch[, radius]) rows; the first is the source view'
                               ) from None
  elif viewset and viewset not in cameras.VIEWSETS:
    raise errors.ConfigError('data.novel_viewset', f'unknown view set {viewset!r}',
                             f"use one of {cameras.VIEWSETS}, 'custom' (data.novel_poses) or "
                             "'' for none")
  options.update(depth='exact', num_examples=num, num_eval_examples=num_eval,
                 novel_viewset=viewset)
  return options


def _folder_options(d, options: Dict[str, Any]) -> Dict[str, Any]:
  folder = str(_field(d, 'folder') or '')
  if not folder:
    raise errors.ConfigError('data.folder', 'no image folder given for source=folder',
                             '--config.data.folder=/path/to/images')
  if paths.is_remote(folder):
    raise errors.ConfigError('data.folder', f'{folder} is on a bucket; prepare reads images from '
                             'local folders', 'mount the bucket (gcsfuse) or copy the images to '
                             'a local disk and point --config.data.folder there (the dataset '
                             'itself, data.dir, may be on the bucket)')
  if not os.path.isdir(folder):
    raise errors.ConfigError('data.folder', f'{folder} does not exist or is not a folder',
                             'point it at an existing folder of images')
  depth = _field(d, 'depth')
  if not depth or depth == 'exact':
    raise errors.ConfigError(
        'data.depth', f'a folder of images needs a depth source (got {depth!r})',
        f'set --config.data.depth to one of {FOLDER_DEPTHS}: midas (<stem>.npz/.npy MiDaS '
        'disparity beside each image), depth_map (<stem>.png/.npy depth maps) or estimator')
  if depth not in FOLDER_DEPTHS:
    raise errors.ConfigError('data.depth', f'unknown depth source {depth!r}',
                             f'use one of {FOLDER_DEPTHS}')
  depth_folder = str(_field(d, 'depth_folder'))
  if depth_folder and (paths.is_remote(depth_folder) or not os.path.isdir(depth_folder)):
    raise errors.ConfigError('data.depth_folder', f'{depth_folder} does not exist',
                             "point it at the folder of depth files, or '' for beside the images")
  kind = _field(d, 'depth_map_kind')
  if depth == 'depth_map' and kind not in ('metric', 'inverse'):
    raise errors.ConfigError('data.depth_map_kind', f'unknown kind {kind!r}',
                             "use 'metric' (depth) or 'inverse' (disparity)")
  scale = float(_field(d, 'depth_map_scale'))
  if depth == 'depth_map' and not scale > 0:
    raise errors.ConfigError('data.depth_map_scale', f'{scale}', 'use a positive scale')
  estimator = str(_field(d, 'estimator'))
  if depth == 'estimator':
    ingest.parse_estimator_spec(estimator, 'data.estimator')
  labels = _field(d, 'labels')
  if labels not in ('auto', 'none'):
    raise errors.ConfigError('data.labels', f'{labels!r}', "use 'auto' or 'none'")
  split = str(_field(d, 'split'))
  if not split.replace('_', '').isalnum():
    raise errors.ConfigError('data.split', f'{split!r}', 'use a plain name such as train')
  max_invalid = float(_field(d, 'max_invalid_depth'))
  if not 0 <= max_invalid < 1:
    raise errors.ConfigError('data.max_invalid_depth', f'{max_invalid}', 'use a value in [0, 1)')
  options.update(
      folder=os.path.abspath(folder), depth=depth,
      depth_folder=os.path.abspath(depth_folder) if depth_folder else '',
      depth_map_kind=kind, depth_map_scale=scale, estimator=estimator,
      estimator_kwargs=dict(_field(d, 'estimator_kwargs')),
      estimator_batch_size=int(_field(d, 'estimator_batch_size')),
      estimator_resolution=int(_field(d, 'estimator_resolution')),
      max_invalid_depth=max_invalid, labels=labels, split=split,
      num_classes=int(_field(d, 'num_classes') or 0),
      classes=[c.strip() for c in str(_field(d, 'classes')).split(',') if c.strip()])
  return options


def options_from_config(data_config) -> Dict[str, Any]:
  """Validated plain-dict options of config.data; every problem is a ConfigError naming the
  field."""
  d = data_config
  source = _field(d, 'source')
  if source not in SOURCES:
    raise errors.ConfigError('data.source', f'unknown source {source!r}', f'use one of {SOURCES}')
  resolution = int(_field(d, 'resolution') or 0)
  if resolution < 8:
    raise errors.ConfigError('data.resolution', f'{resolution} is too small',
                             'use a resolution of at least 8 pixels (e.g. 64 or 128)')
  near, far = float(_field(d, 'near')), float(_field(d, 'far'))
  if not 0 < near < far:
    raise errors.ConfigError('data.near', f'near={near}, far={far}', 'use 0 < near < far')
  per_shard = int(_field(d, 'examples_per_shard'))
  if per_shard < 1:
    raise errors.ConfigError('data.examples_per_shard', f'{per_shard}', 'use a positive number')
  options = dict(source=source, resolution=resolution, near=near, far=far,
                 seed=int(_field(d, 'seed') or 0), examples_per_shard=per_shard)
  if source == 'procedural':
    return _procedural_options(d, options)
  return _folder_options(d, options)


def _write_dataset_metadata(out: epath.Path, options: Dict[str, Any], existing: Dict[str, Any],
                            plans: List[plan_lib.SplitPlan], classes: List[str]) -> None:
  """metadata.json and dataset_info.json over this run's splits and complete earlier ones."""
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
    found = plan_lib.read_markers(out, split, info['num_shards'], info['plan_id'])
    if found is None:  # an earlier split whose shards were removed: drop it from the dataset
      logging.warning('prepare: split %s of %s is incomplete and is left out', split, out)
      del splits[split]
    else:
      all_records[split] = found
  records.write_metadata(out, options['resolution'], metadata, all_records)


def prepare(data_config, out_dir: str, *, process_index: int, process_count: int,
            show_progress: bool) -> Dict[str, Any]:
  """Writes this process's shards of the dataset; process 0 then writes its metadata.

  Args:
    data_config: config.data (configs/common.py:data_section).
    out_dir: the dataset directory, local or on a bucket (gs://...): shards are written to a
      local temporary file and uploaded (io.paths), markers and metadata written in place.
    process_index, process_count: shard k is written by process k % process_count; every
      process waits until all shards exist.
    show_progress: a progress bar with ETA.

  Returns:
    The summary: num_written, num_skipped, skipped [{file, reason}], converted [{file, note}],
    num_images, num_images_skipped (images found and skipped, non-image files left out),
    max_skipped_fraction, classes, num_classes, label_counts, splits (examples per split),
    data_dir, source, depth, resolution, near, far, num_shards, resumed_examples, seconds,
    examples_per_second. check_summary says whether it is a usable dataset.
  """
  start = time.time()
  options = options_from_config(data_config)
  max_skipped = float(_field(data_config, 'max_skipped_fraction'))
  if not 0 <= max_skipped <= 1:
    raise errors.ConfigError('data.max_skipped_fraction', f'{max_skipped}',
                             'use a fraction in [0, 1] (1 = never fail on skipped images)')
  out = epath.Path(out_dir)
  (out / records.STATE_DIR).mkdir(parents=True, exist_ok=True)
  existing = records.existing_metadata(out)
  if existing and (existing.get('resolution') != options['resolution'] or
                   existing.get('source') != options['source']):
    raise errors.ConfigError(
        'data.dir', f'{out} already holds a {existing.get("source")} dataset at '
        f'{existing.get("resolution")} px', 'use another config.data.dir for this dataset')
  plans, classes, ignored = plan_lib.make_plans(options, existing)
  estimator = None
  if options['depth'] == 'estimator':
    estimator = ingest.load_estimator(options['estimator'], options['estimator_kwargs'],
                                      'data.estimator')

  tasks, total, done = plan_lib.shard_tasks(out, plans, process_index, process_count)
  if done:
    logging.info('prepare: resuming, %d of %d examples already written', done, total)
  workers = int(_field(data_config, 'prepare_workers'))
  if not workers:
    workers = (os.cpu_count() or 1) if total - done >= _MIN_ITEMS_FOR_AUTO_POOL else 1
  shards.run_tasks(tasks, workers, estimator, total, done, show_progress)

  split_records = plan_lib.wait_for_shards(out, plans)
  if process_index == 0:
    _write_dataset_metadata(out, options, existing, plans, classes)
  summary_records = [r for p in plans for r in split_records[p.split]]
  image_skips = [s for r in summary_records for s in r['skipped']]
  skipped = image_skips + ignored
  label_counts: Dict[str, int] = {}
  for r in summary_records:
    for k, v in r['label_counts'].items():
      label_counts[k] = label_counts.get(k, 0) + v
  seconds = time.time() - start
  num_written = sum(r['num_examples'] for r in summary_records)
  return dict(
      num_written=num_written, num_skipped=len(skipped),
      skipped=skipped, converted=[c for r in summary_records for c in r['converted']],
      num_images=num_written + len(image_skips), num_images_skipped=len(image_skips),
      max_skipped_fraction=max_skipped,
      classes=classes, num_classes=len(classes), label_counts=label_counts,
      splits={p.split: sum(r['num_examples'] for r in split_records[p.split]) for p in plans},
      data_dir=str(out), source=options['source'], depth=options['depth'],
      resolution=options['resolution'], near=options['near'], far=options['far'],
      num_shards={p.split: p.num_shards for p in plans}, resumed_examples=done,
      seconds=round(seconds, 3),
      examples_per_second=round((total - done) / seconds, 2) if seconds > 0 else None)


def check_summary(summary: Dict[str, Any], summary_path: str) -> None:
  """Refuses a dataset that is empty or mostly skipped; the summary is written already.

  Raises:
    errors.UserError: no example written.
    errors.ConfigError: more than data.max_skipped_fraction of the images found were skipped.
  """
  found, skips = summary['num_images'], summary['num_images_skipped']
  first = next(iter(summary['skipped']), None)
  example = f"; the first: {first['file']}: {first['reason']}" if first else ''
  fix = ('give every image a readable depth of its own (data.depth, data.depth_folder) and fix '
         f'the files whose reasons {summary_path} lists')
  if not summary['num_written']:
    raise errors.UserError(
        f'prepare wrote 0 examples to {summary["data_dir"]}: {skips} of {found} images were '
        f'skipped{example}. Fix: {fix}')
  limit = summary['max_skipped_fraction']
  if found and skips / found > limit:
    raise errors.ConfigError(
        'data.max_skipped_fraction', f'{skips} of {found} images were skipped '
        f'({100 * skips / found:.0f}% > {100 * limit:g}%){example}',
        f'{fix}, or raise --config.data.max_skipped_fraction to keep this dataset')
