"""What prepare writes where: split plans, shards per process, completion markers.

The examples of a split are assigned to fixed shards of `examples_per_shard`. Shard k goes to
process k % process_count; each shard is written to a temporary file, renamed when complete and
recorded by a marker STATE_DIR/<split>-<shard>.json holding the plan id (a hash of the options and
the items), so a rerun skips shards already complete for the same plan, and every process can wait
until all shards of every host exist.
"""
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from etils import epath

from ivd_jax import errors
from ivd_jax.data import procedural
from ivd_jax.data import records
from ivd_jax.io import ingest

# procedural.scene_seed stream of each procedural split.
PROCEDURAL_STREAMS = {'train': 0, records.SPLIT_TEST: 1}


@dataclasses.dataclass
class SplitPlan:
  """The items of one split and the options its workers need (JSON-serialisable)."""
  split: str
  items: List[Any]  # folder: (relative path, label); procedural: scene seeds
  examples_per_shard: int
  options: Dict[str, Any]
  plan_id: str = ''

  @property
  def num_shards(self) -> int:
    return max(1, math.ceil(len(self.items) / self.examples_per_shard))

  def shard_items(self, shard: int) -> List[Any]:
    return self.items[shard * self.examples_per_shard:(shard + 1) * self.examples_per_shard]

  def shard_filename(self, shard: int) -> str:
    return records.shard_filename(self.split, shard, self.num_shards)


def _plan_id(options: Dict[str, Any], items: Sequence[Any]) -> str:
  digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode())
  digest.update(json.dumps(list(items)).encode())
  return digest.hexdigest()[:16]


def list_folder(folder: pathlib.Path, labels: str, classes: Sequence[str]
                ) -> Tuple[List[Tuple[str, int]], List[str], List[Dict[str, str]]]:
  """Image files (sorted), labels from class subfolders, and files that are not images.

  Symbolic links are followed, but every real folder is walked once (a link back up the tree is
  not followed again) and every real file is listed once, under its first path in sorted order.

  Returns:
    items [(relative path, label)], classes (sorted subfolder names unless given), ignored
    [{file, reason}] for non-image files (depth sidecars of the image folder excepted) and
    further links to an image already listed.
  """
  files, ignored = [], []
  seen_dirs, seen_files = set(), {}
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    seen_dirs.add(os.path.realpath(dirpath))
    # A folder reached before (a symlink loop, or two links to one folder) is not walked again.
    dirnames[:] = [d for d in sorted(dirnames) if not d.startswith('.') and
                   os.path.realpath(os.path.join(dirpath, d)) not in seen_dirs]
    for name in sorted(filenames):
      if name.startswith('.'):
        continue
      rel = pathlib.PurePath(os.path.relpath(os.path.join(dirpath, name), folder))
      ext = rel.suffix.lower()
      if ext in ingest.IMAGE_EXTENSIONS:
        real = os.path.realpath(os.path.join(dirpath, name))
        if real in seen_files:
          ignored.append({'file': str(rel), 'reason': f'the same file as {seen_files[real]} '
                                                      '(a symbolic link); listed once'})
          continue
        seen_files[real] = str(rel)
        files.append(rel)
      elif ext not in ingest.DEPTH_EXTENSIONS:
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


def make_plans(options: Dict[str, Any], existing: Dict[str, Any]
               ) -> Tuple[List[SplitPlan], List[str], List[Dict[str, str]]]:
  """(split plans, class list, ignored files) of validated prepare options.

  Args:
    options: data.prepare's validated options.
    existing: metadata of an earlier prepare into the same directory; a folder split reuses its
      class list so that labels agree across splits.
  """
  per_shard = options['examples_per_shard']
  if options['source'] == 'procedural':
    base = {k: options[k] for k in ('source', 'resolution', 'near', 'far', 'seed')}
    plans = []
    for split, count, viewset in (
        ('train', options['num_examples'], ''),
        (records.SPLIT_TEST, options['num_eval_examples'], options['novel_viewset'])):
      if count:
        seeds = [procedural.scene_seed(options['seed'], PROCEDURAL_STREAMS[split], i)
                 for i in range(count)]
        plans.append(SplitPlan(split, seeds, per_shard, dict(base, novel_viewset=viewset)))
    classes, ignored = [], []
  else:
    classes = options['classes'] or existing.get('classes', [])
    items, classes, ignored = list_folder(pathlib.Path(options['folder']), options['labels'],
                                          classes)
    if not items:
      raise errors.ConfigError(
          'data.folder', f'{options["folder"]} contains no image files '
          f'({", ".join(ingest.IMAGE_EXTENSIONS)})', 'point it at a folder of images')
    if options['num_classes'] and len(classes) != options['num_classes']:
      raise errors.ConfigError(
          'data.num_classes', f'{options["num_classes"]} classes expected but '
          f'{options["folder"]} has {len(classes)} class folders',
          f'set --config.data.num_classes={len(classes)} (here and for training), or 0 to skip '
          'this check')
    worker_options = {k: v for k, v in options.items()
                      if k not in ('classes', 'estimator_kwargs', 'num_classes')}
    plans = [SplitPlan(options['split'], items, per_shard, worker_options)]
  for plan in plans:
    plan.plan_id = _plan_id(plan.options, plan.items)
  return plans, classes, ignored


def _marker(out: epath.Path, split: str, shard: int) -> epath.Path:
  return out / records.STATE_DIR / f'{split}-{shard:05d}.json'


def shard_tasks(out: epath.Path, plans: List[SplitPlan], process_index: int,
                process_count: int) -> Tuple[List[Dict[str, Any]], int, int]:
  """The shards this process still has to write.

  Also removes shard files of an earlier plan of the same split with another shard count.

  Returns:
    (tasks for data.shards.write_shard, examples of this process, of those already written).
  """
  tasks, total, done = [], 0, 0
  for plan in plans:
    expected = {plan.shard_filename(k) for k in range(plan.num_shards)}
    prefix = f'{records.DATASET_NAME}-{plan.split}.array_record-'
    for stale in out.glob(prefix + '*'):
      if stale.name not in expected and not stale.name.endswith('.tmp'):
        stale.unlink(missing_ok=True)
    for shard in range(plan.num_shards):
      if shard % process_count != process_index:
        continue
      n = len(plan.shard_items(shard))
      total += n
      marker = _marker(out, plan.split, shard)
      path = out / plan.shard_filename(shard)
      if marker.exists() and path.exists():
        if json.loads(marker.read_text()).get('plan_id') == plan.plan_id:
          done += n
          continue
      tasks.append(dict(options=plan.options, items=plan.shard_items(shard), split=plan.split,
                        shard=shard, path=str(path), marker=str(marker), plan_id=plan.plan_id))
  return tasks, total, done


def read_markers(out: epath.Path, split: str, num_shards: int, plan_id: str
                 ) -> Optional[List[Dict[str, Any]]]:
  """The shard records of a split, or None while any shard of plan `plan_id` is missing."""
  found = []
  for shard in range(num_shards):
    marker = _marker(out, split, shard)
    if not marker.exists():
      return None
    record = json.loads(marker.read_text())
    if record.get('plan_id') != plan_id:
      return None
    found.append(record)
  return found


def wait_for_shards(out: epath.Path, plans: List[SplitPlan], poll_s: float = 2.0,
                    timeout_s: float = 7 * 24 * 3600) -> Dict[str, List[Dict[str, Any]]]:
  """The shard records of every plan, once all processes have written their shards."""
  deadline = time.time() + timeout_s
  found = {}
  for plan in plans:
    while True:
      split_records = read_markers(out, plan.split, plan.num_shards, plan.plan_id)
      if split_records is not None:
        found[plan.split] = split_records
        break
      if time.time() > deadline:
        raise errors.UserError(f'prepare: shards of split {plan.split} in {out} did not all '
                               'appear; rerun prepare on every process to finish them')
      time.sleep(poll_s)
  return found
