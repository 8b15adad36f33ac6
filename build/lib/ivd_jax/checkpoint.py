"""The one orbax wrapper: training checkpoints and exported parameters.

Training checkpoints live in WORKDIR/checkpoints/<step>/ with three items:
  state   the train state as a dict {step, params, ema_params, opt_state, rng} (sharded arrays);
  data    the input iterator state, one JSON file per process (each host feeds its own slice);
  config  the run's configuration as JSON.
Saves are asynchronous: the step loop continues while the arrays are written, and every
exit path waits for the last save. Orbax writes to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous step as the latest restorable one.

Exported parameters (save_params) are a directory with params/ (orbax) and config.json; they are
what the reference-checkpoint converter writes and what sampling and evaluation read through
load_params, which also accepts a training workdir (EMA weights of the latest step).
"""
import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from ivd_jax import errors

CHECKPOINT_SUBDIR = 'checkpoints'
_ITEMS = ('state', 'data', 'config')


# ---------------------------------------------------------------------------------------------
# Per-process input iterator state: each process writes and reads its own JSON file.
# ---------------------------------------------------------------------------------------------
class DataStateHandler(ocp.CheckpointHandler):
  """Saves a JSON-serialisable dict per process (the input iterator state of that host)."""

  def save(self, directory: epath.Path, args: 'DataStateSave') -> None:
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    (directory / name).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: Optional['DataStateRestore'] = None
              ) -> Optional[dict[str, Any]]:
    del args
    path = directory / f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    if not path.exists():
      # Saved with another process count: iterator states are per process and cannot be
      # remapped, so the caller restarts its input from the checkpoint's step instead.
      return None
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path) -> None:
    del directory

  def finalize(self, directory: epath.Path) -> None:
    del directory

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: dict[str, Any]


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def _config_to_json(config: Any) -> dict[str, Any]:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


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


# ---------------------------------------------------------------------------------------------
# Training checkpoints.
# ---------------------------------------------------------------------------------------------
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
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

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

  def save(self, step: int, state: Any, *, data_state: Optional[dict[str, Any]],
           config: Any) -> None:
    """Starts an asynchronous save of `state` (a dataclass with to_dict()) at `step`.

    Returns once the arrays are copied; the write continues in the background.
    """
    if step in self._manager.all_steps():
      return
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state.to_dict()),
            data=DataStateSave(data_state or {}),
            config=ocp.args.JsonSave(_config_to_json(config))),
        force=True)

  def restore(self, abstract_state: Any, step: Optional[int] = None
              ) -> tuple[Any, Optional[dict[str, Any]], dict[str, Any], int]:
    """Restores onto the shardings of `abstract_state` (any mesh or device count).

    Args:
      abstract_state: the state (a dataclass with to_dict / from_dict, e.g. TrainState) of
        jax.ShapeDtypeStruct with the target shardings; the restored state has its type.
      step: a specific step; default the latest step that restores cleanly (a damaged newest
        checkpoint is skipped with a warning).

    Returns:
      (state, data_state or None, config dict, step).
    """
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    last_error = None
    for s in steps:
      try:
        restored = self._manager.restore(
            s, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state.to_dict()),
                data=DataStateRestore(),
                config=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise
        logging.warning('checkpoint step %d in %s does not restore (%s); trying an older one',
                        s, self.directory, e)
        last_error = e
        continue
      data_state = restored['data'] or None
      return type(abstract_state).from_dict(restored['state']), data_state, restored['config'], s
    raise RuntimeError(f'no checkpoint in {self.directory} restores') from last_error

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


# ---------------------------------------------------------------------------------------------
# Exported parameters: save_params / load_params.
# ---------------------------------------------------------------------------------------------
def save_params(path: str, params: Any, config: Any) -> None:
  """Writes a params-only checkpoint: PATH/params (orbax) and PATH/config.json.

  Args:
    path: output directory (created; an existing export there is replaced).
    params: parameter pytree (jax or numpy arrays).
    config: the ConfigDict (or dict) describing the network (its `model` section is what
      sampling needs to rebuild it).
  """
  path = epath.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save((path / 'params').absolute(), params, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  if jax.process_index() == 0:
    (path / 'config.json').write_text(json.dumps(_config_to_json(config), indent=2))


def _checkpoint_dir_of(path: epath.Path) -> Optional[epath.Path]:
  """The orbax manager directory for a workdir or a checkpoints/ directory, else None."""
  for candidate in (path / CHECKPOINT_SUBDIR, path):
    if candidate.is_dir() and any(p.name.isdigit() for p in candidate.iterdir()):
      return candidate
  return None


def _restore_args_for(tree: Any, sharding: Any) -> tuple[Any, Any]:
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if isinstance(sharding, jax.sharding.Sharding):
    sharding = jax.tree.map(lambda _: sharding, tree)
  target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                        tree, sharding)
  return target, ocp.checkpoint_utils.construct_restore_args(target)


def load_params(path: str, *, ema: bool = True, sharding: Any = None
                ) -> tuple[Any, ml_collections.ConfigDict]:
  """Loads parameters and their config from a training workdir or an exported checkpoint.

  Args:
    path: a training workdir (or its checkpoints/ directory): the latest step is read; or a
      directory written by save_params.
    ema: from a training checkpoint, return the EMA parameters (what sampling wants) rather than
      the raw ones. Ignored for exports, which hold one set.
    sharding: a jax Sharding for every leaf, or a pytree of them; default the first local device.

  Returns:
    (params, config).

  Raises:
    UserError: when nothing loadable is at `path`.
  """
  path = epath.Path(path)
  if not path.exists():
    raise errors.UserError(f'checkpoint path {path} does not exist: give a training workdir '
                           'or a directory written by save_params / the converter')
  ckpt_dir = _checkpoint_dir_of(path)
  if ckpt_dir is not None:
    manager = ocp.CheckpointManager(
        ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers=dict(state=ocp.PyTreeCheckpointHandler(),
                           config=ocp.JsonCheckpointHandler(), data=DataStateHandler()))
    last_error = None
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        key = 'ema_params' if ema else 'params'
        meta = manager.item_metadata(step)['state']
        tree = meta.tree if hasattr(meta, 'tree') else meta
        target, restore_args = _restore_args_for(tree[key], sharding)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item={key: target}, restore_args={key: restore_args},
                                         partial_restore=True),
            config=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint step %d in %s does not restore (%s)', step, ckpt_dir, e)
        last_error = e
        continue
      manager.close()
      logging.info('loaded %s of step %d from %s', key, step, ckpt_dir)
      return restored['state'][key], ml_collections.ConfigDict(restored['config'])
    manager.close()
    raise errors.UserError(f'no restorable checkpoint in {ckpt_dir}: {last_error}')
  if (path / 'params').is_dir():
    checkpointer = ocp.StandardCheckpointer()
    meta = checkpointer.metadata((path / 'params').absolute())
    tree = meta.item_metadata.tree if hasattr(meta, 'item_metadata') else meta.tree
    target, _ = _restore_args_for(tree, sharding)
    params = checkpointer.restore((path / 'params').absolute(), target)
    checkpointer.close()
    config_path = path / 'config.json'
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    return params, ml_collections.ConfigDict(config)
  raise errors.UserError(
      f'{path} holds neither training checkpoints ({CHECKPOINT_SUBDIR}/<step>) nor exported '
      'params (params/ + config.json): point to a training workdir or a converted checkpoint')


def workdir_checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_SUBDIR)
