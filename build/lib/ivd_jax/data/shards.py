"""Writing shards: one worker writes one shard; local worker processes share the shards.

A shard is written to a local temporary file (ArrayRecord writes local files only), renamed or,
for a dataset on a bucket, uploaded when complete, and then recorded by its marker (data.plan).
Inputs that cannot be used are skipped with the reason, one unexpected error on an odd file
included: it must not stop a week-long job. Tasks run in this process or in a pool of
spawned processes, with one progress bar and ETA over all of them.
"""
import concurrent.futures
import json
import multiprocessing
import time
from typing import Any, Dict, List

from absl import logging
from array_record.python import array_record_module
import tqdm

from ivd_jax.data import examples
from ivd_jax.data import records
from ivd_jax.geometry import cameras
from ivd_jax.io import ingest
from ivd_jax.io import paths

_PROGRESS = None  # multiprocessing.Value shared with worker processes


def _init_worker(progress):
  global _PROGRESS
  _PROGRESS = progress


def _tick(n: int = 1):
  if _PROGRESS is not None:
    with _PROGRESS.get_lock():
      _PROGRESS.value += n


def _unexpected(file: str, e: Exception) -> Dict[str, str]:
  logging.exception('prepare: unexpected error on %s', file)
  return {'file': file, 'reason': f'unexpected error: {type(e).__name__}: {e}'}


def write_shard(task: Dict[str, Any], estimator=None) -> Dict[str, Any]:
  """Writes one shard (a data.plan.shard_tasks task) and its marker; returns its record."""
  options = task['options']
  feats = records.features(options['resolution'])
  final = task['path']  # local or gs://
  # Locally <shard>.tmp beside it (a rerun overwrites an interrupted one); for a bucket a local
  # temporary file that commit() uploads.
  tmp = paths.temp_target(final) if paths.is_remote(final) else final + '.tmp'
  writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
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
        emit(examples.procedural_example(seed, options), f'procedural/{seed}', [])
        _tick()
    elif estimator is None:
      for item in task['items']:
        try:
          example, notes = examples.folder_example(item, options)
          emit(example, item[0], notes)
        except ingest.Skip as e:
          skipped.append({'file': item[0], 'reason': str(e)})
        except Exception as e:  # pylint: disable=broad-except
          skipped.append(_unexpected(item[0], e))
        _tick()
    else:
      batch_size = options['estimator_batch_size']
      items = list(task['items'])
      for lo in range(0, len(items), batch_size):
        loaded = []
        for item in items[lo:lo + batch_size]:
          try:
            (rgb, crop), notes = examples.folder_example(item, options, estimator_input=True)
            loaded.append((item, rgb, crop, notes))
          except ingest.Skip as e:
            skipped.append({'file': item[0], 'reason': str(e)})
          except Exception as e:  # pylint: disable=broad-except
            skipped.append(_unexpected(item[0], e))
        if loaded:
          estimates = examples.estimate_zbuf(estimator, [x[2] for x in loaded], options)
          for (item, rgb, _, notes), (zbuf, depth_notes) in zip(loaded, estimates):
            if isinstance(zbuf, ingest.Skip):
              skipped.append({'file': item[0], 'reason': str(zbuf)})
              continue
            emit(records.example(rgb, zbuf, label=item[1], file=item[0],
                                 view=cameras.SOURCE_VIEW), item[0], notes + depth_notes)
        _tick(len(items[lo:lo + batch_size]))
  finally:
    writer.close()
  paths.commit(tmp, final)
  record = {'plan_id': task['plan_id'], 'split': task['split'], 'shard': task['shard'],
            'file': paths.basename(final), 'num_examples': written, 'num_bytes': num_bytes,
            'skipped': skipped, 'converted': converted, 'label_counts': label_counts,
            'seconds': time.time() - start}
  paths.write_text(task['marker'], json.dumps(record))
  return record


def run_tasks(tasks: List[Dict[str, Any]], workers: int, estimator, total: int, done: int,
              show_progress: bool) -> List[Dict[str, Any]]:
  """Runs shard tasks (in this process or a spawn pool) with a progress bar and ETA.

  Args:
    tasks: from data.plan.shard_tasks.
    workers: local processes; 1 (or an estimator, which lives in this process) runs here.
    estimator: the depth estimator of depth='estimator', else None.
    total, done: examples of this process, and of those already written (the bar's start).
    show_progress: draw the bar.

  Returns:
    The shard records.
  """
  bar = tqdm.tqdm(total=total, initial=done, unit='img', desc='prepare', smoothing=0.1,
                  disable=not show_progress, dynamic_ncols=True)
  shard_records = []
  try:
    if workers <= 1 or len(tasks) <= 1 or estimator is not None:
      progress = multiprocessing.Value('q', 0)
      _init_worker(progress)
      for task in tasks:
        shard_records.append(write_shard(task, estimator))
        bar.update(progress.value - (bar.n - done))
      _init_worker(None)
      return shard_records
    ctx = multiprocessing.get_context('spawn')
    progress = ctx.Value('q', 0)
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker,
        initargs=(progress,)) as pool:
      pending = {pool.submit(write_shard, t) for t in tasks}
      while pending:
        finished, pending = concurrent.futures.wait(pending, timeout=0.5)
        for future in finished:
          shard_records.append(future.result())
        bar.update(done + progress.value - bar.n)
    return shard_records
  finally:
    bar.close()
