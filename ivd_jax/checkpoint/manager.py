"""Training checkpoints: the orbax CheckpointManager of WORKDIR/checkpoints (see the package doc).

Also the multi-process helpers every mode uses around saves and exports (wait_for_all_processes,
preemption_service_active).
"""
import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from ivd_jax import errors
from ivd_jax.checkpoint import integrity

CHECKPOINT_SUBDIR = 'checkpoints'


class NonFiniteState(errors.UserError):
  """Checkpointer.save was given a state holding NaN/inf: nothing was written."""


# ------------------------------------------------------------------- per-process input state
class DataStateHandler(ocp.CheckpointHandler):
  """Saves a JSON-serialisable dict per process (the input iterator state of that host)."""

  def save(self, directory: epath.Path, args: 'DataStateSave') -> None:
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    (directory / name).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: Optional['DataStateRestore'] = None
              ) -> Optional[dict[str, Any]]:
    del args
    path = directory / f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    if not path.exists():  # deleted, or saved by another process count: the caller decides
      return None
    return json.loads(path.read_text())


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: dict[str, Any]


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def config_to_json(config: Any) -> dict[str, Any]:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  return dict(state=ocp.StandardCheckpointHandler(), data=DataStateHandler(),
              config=ocp.JsonCheckpointHandler(), integrity=ocp.JsonCheckpointHandler())


def _short(e: Exception) -> str:
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:300]}'


def _layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """'opt_state/0/mu/dense/kernel' -> (shape, dtype) of every array (metadata or abstract)."""
  def name(path):
    return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                    for k in path)
  return {name(p): (tuple(x.shape), np.dtype(x.dtype).name)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _layout_difference(have: dict[str, Any], want: dict[str, Any]) -> str:
  diffs = [f'{k}: saved {have.get(k, "nothing")}, this config {want.get(k, "nothing")}'
           for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
  return '; '.join(diffs[:3]) + (f' (and {len(diffs) - 3} more)' if len(diffs) > 3 else '')


def _agree_on_error(error: Optional[str]) -> Optional[str]:
  """A restore error on any process is an error on every process (each reads its own shards)."""
  if jax.process_count() == 1:
    return error
  failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
  return error or (f'does not restore on process {int(np.argmax(failed))}'
                   if failed.any() else None)


def _preservation_options(keep: int, keep_every: int) -> dict[str, Any]:
  """CheckpointManagerOptions fields for "the latest `keep`, plus every `keep_every`-th step".

  orbax 0.12 deprecates max_to_keep/keep_period in favour of preservation policies; older
  orbax (0.11) only has the former.
  """
  cm = getattr(ocp, 'checkpoint_managers', None)
  if cm is None or not hasattr(cm, 'AnyPreservationPolicy'):
    return dict(max_to_keep=keep, keep_period=keep_every or None)
  policies = [cm.LatestN(n=keep)]
  if keep_every:
    policies.append(cm.EveryNSteps(interval_steps=keep_every))
  return dict(preservation_policy=cm.AnyPreservationPolicy(policies))


# ------------------------------------------------------------------------ training checkpoints
class Checkpointer:
  """Saves and restores training state, input iterator state and config in one directory."""

  def __init__(self, directory: str, *, every_steps: int, keep: int = 3, keep_every: int = 0,
               async_save: bool = True, read_only: bool = False):
    """Opens (or creates) the checkpoint directory.

    Args:
      directory: WORKDIR/checkpoints (local path or a bucket path like gs://...).
      every_steps: periodic save interval (saves at the end and on preemption are forced).
      keep: how many of the latest checkpoints to keep.
      keep_every: additionally keep every checkpoint whose step is a multiple of this (0: none).
      async_save: write arrays in the background while training continues.
      read_only: never create, save or delete (for readers such as sampling).
    """
    self.every_steps = int(every_steps)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1,  # the train loop decides when; see should_save
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
        **({} if read_only else _preservation_options(keep, keep_every)))
    self.directory = epath.Path(directory)
    self.read_only = read_only
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=_item_handlers())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def reached_preemption(self, step: int) -> bool:
    """True at the same step on every process once any host got a preemption notice (SIGTERM).

    JAX's preemption service agrees on that step (the largest step any process had reached,
    plus one); every process must call this at every step, with the same step numbers.
    """
    return self._manager.reached_preemption(step)

  def data_state_files(self, step: int) -> list[str]:
    """The per-process input-state files a step holds (process_<i>-of-<n>.json)."""
    folder = self.directory / str(step) / 'data'
    return sorted(p.name for p in folder.iterdir() if p.name.endswith('.json')
                  ) if folder.is_dir() else []

  def save(self, step: int, state: Any, *, data_state: Optional[dict[str, Any]],
           config: Any) -> None:
    """Starts an asynchronous save of `state` (a dataclass with to_dict()) at `step`.

    Returns once the arrays are copied; the write continues in the background. A step that
    exists is left alone (a step moved aside by restore no longer exists). The checksums of the
    state are saved with it (the `integrity` item).

    Raises:
      NonFiniteState: the state holds NaN/inf (nothing is written).
    """
    if step in self._manager.all_steps():
      return
    tree = state.to_dict()
    record = integrity.fingerprint(tree)
    bad = integrity.nonfinite_parts(record)
    if bad:
      raise NonFiniteState(
          f'step {step}: the state holds NaN/inf in {", ".join(bad)}; it was not saved (the '
          f'newest checkpoint in {self.directory} stays step {self.latest_step()})')
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), data=DataStateSave(data_state or {}),
        config=ocp.args.JsonSave(config_to_json(config)),
        integrity=ocp.args.JsonSave({'checksum': record['checksum']})), force=True)

  def restore(self, abstract_state: Any
              ) -> tuple[Any, Optional[dict[str, Any]], dict[str, Any], int]:
    """Restores the newest good step onto the shardings of `abstract_state` (any mesh).

    Newer damaged steps (unreadable, truncated, holding NaN/inf, or failing their checksums)
    are moved aside with a warning (a read-only checkpointer only skips them).

    Args:
      abstract_state: the state (a dataclass with to_dict / from_dict, e.g. TrainState) of
        jax.ShapeDtypeStruct with the target shardings; the restored state has its type.

    Returns:
      (state, data_state (None when this process's input state is missing), config dict, step).

    Raises:
      UserError: no step is good; or the arrays have other shapes than abstract_state (another
        network: the config differs from the run's; nothing is moved).
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    want, bad = _layout(abstract_state.to_dict()), []
    for s in steps:
      result, problem, mismatch = self._try_restore(s, abstract_state, want)
      if result is not None:
        for b, why, _ in bad:  # newer than a good step (a mismatch there: damaged metadata)
          self._move_aside(b, why)
        return result
      bad.append((s, problem, mismatch))
    mismatched = [b for b in bad if b[2]]
    if mismatched:
      raise errors.UserError(
          f'the checkpoints in {self.directory} hold another network than this config builds '
          f'(step {mismatched[0][0]}: {mismatched[0][1]}). Fix: resume with the run\'s own '
          'settings (its config.json), or give a new --workdir to start another run')
    for b, why, _ in bad:
      self._move_aside(b, why)
    raise errors.UserError(
        f'no checkpoint in {self.directory} is good: '
        + '; '.join(f'step {b} {why}' for b, why, _ in bad)
        + ('' if self.read_only else ' (moved aside to <step>.damaged-<time>)')
        + '. Fix: rerun to start the run afresh, or put back a copy of the checkpoints')

  def _try_restore(self, s: int, abstract_state: Any, want: dict[str, Any]
                   ) -> tuple[Optional[tuple[Any, ...]], Optional[str], bool]:
    """(state, data, config, step) or None, the problem, whether it is a shape mismatch."""
    try:
      meta = self._manager.item_metadata(s)['state']
      have = _layout(meta.tree if hasattr(meta, 'tree') else meta)
    except Exception as e:  # pylint: disable=broad-except
      return None, f'has unreadable metadata ({_short(e)})', False
    if have != want:
      return None, _layout_difference(have, want), True
    items = dict(state=ocp.args.StandardRestore(abstract_state.to_dict()),
                 data=DataStateRestore(), config=ocp.args.JsonRestore())
    with_integrity = (self.directory / str(s) / 'integrity').exists()
    if with_integrity:
      items['integrity'] = ocp.args.JsonRestore()
    restored, error = None, None
    try:
      restored = self._manager.restore(s, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      error = f'does not restore ({_short(e)})'
    error = _agree_on_error(error)
    if error:
      return None, error, False
    problem = integrity.problem(restored['state'],
                                restored['integrity'] if with_integrity else None)
    if problem:
      return None, problem, False
    state = type(abstract_state).from_dict(restored['state'])
    return (state, restored['data'], restored['config'], s), None, False

  def _move_aside(self, step: int, problem: str) -> None:
    """Renames a damaged step to <step>.damaged-<UTC time> (kept for inspection)."""
    src = self.directory / str(step)
    if self.read_only:
      logging.warning('checkpoint step %d in %s %s: skipped', step, self.directory, problem)
      return
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    dst, n = self.directory / f'{step}.damaged-{stamp}', 0
    while dst.exists():
      n += 1
      dst = self.directory / f'{step}.damaged-{stamp}-{n}'
    if jax.process_index() == 0:
      src.rename(dst)
      logging.warning('checkpoint step %d in %s %s: moved aside to %s (kept for inspection; '
                      'the run falls back to an older step and saves step %d again)', step,
                      self.directory, problem, dst, step)
    wait_for_all_processes('ivd_jax:checkpoint_moved_aside')
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def preemption_service_active() -> bool:
  """Whether JAX's preemption service runs in this process (Checkpointer.reached_preemption).

  jax.distributed.initialize starts it unless jax_enable_preemption_service is off; it then owns
  SIGTERM (its notifier swallows the signal and tells every process), so a Python SIGTERM
  handler installed later would silently disable it.
  """
  return bool(jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service)


_BARRIER_USES: dict[str, int] = {}


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
  """A barrier of all processes over the coordination service (no-op with one process).

  Unlike multihost_utils.sync_global_devices it runs no device collective: on CPU, gloo gives
  every process 30 s to join the first collective of a device group, so processes whose start-up
  (imports, restore, compilation) drifted further apart than that would fail there instead of
  waiting. Every process must pass the same names in the same order (repeats are numbered).
  """
  if jax.process_count() == 1:
    return
  uses = _BARRIER_USES[name] = _BARRIER_USES.get(name, -1) + 1
  ocp.multihost.get_barrier_sync_fn()(key=f'{name}:{uses}', timeout_ms=int(timeout_s * 1000))


def abstract_state_like(state: Any) -> Any:
  """ShapeDtypeStructs with the same shapes, dtypes and shardings as a concrete (or eval_shape) tree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
      state)


def workdir_checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_SUBDIR)
