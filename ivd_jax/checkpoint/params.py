"""Exported parameters: save_params writes them, load_params reads them (or a training workdir).

An export is a directory with params/ (orbax) and config.json: what the reference-checkpoint
converter writes and what sampling and evaluation read.
"""
import json
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from ivd_jax import errors
from ivd_jax.checkpoint import integrity
from ivd_jax.checkpoint import manager as manager_lib


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
    (path / 'config.json').write_text(json.dumps(manager_lib.config_to_json(config), indent=2))


def _checkpoint_dir_of(path: epath.Path) -> Optional[epath.Path]:
  """The orbax manager directory for a workdir or a checkpoints/ directory, else None."""
  for candidate in (path / manager_lib.CHECKPOINT_SUBDIR, path):
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
    (params, config); an export's bfloat16 leaves come back as float32.

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
        item_handlers=dict(state=ocp.PyTreeCheckpointHandler(), config=ocp.JsonCheckpointHandler(),
                           data=manager_lib.DataStateHandler(),
                           integrity=ocp.JsonCheckpointHandler()))
    last_error = None
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        key = 'ema_params' if ema else 'params'
        meta = manager.item_metadata(step)['state']
        tree = meta.tree if hasattr(meta, 'tree') else meta
        target, restore_args = _restore_args_for(tree[key], sharding)
        items = dict(state=ocp.args.PyTreeRestore(item={key: target},
                                                  restore_args={key: restore_args},
                                                  partial_restore=True),
                     config=ocp.args.JsonRestore())
        if (ckpt_dir / str(step) / 'integrity').exists():
          items['integrity'] = ocp.args.JsonRestore()
        restored = manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint step %d in %s does not restore (%s)', step, ckpt_dir, e)
        last_error = e
        continue
      # A reader never moves anything: a damaged step (NaN/inf, a failed checksum) is skipped.
      problem = integrity.problem(restored['state'],
                                  restored['integrity'] if 'integrity' in items else None)
      if problem:
        logging.warning('checkpoint step %d in %s %s: skipped', step, ckpt_dir, problem)
        last_error = problem
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
    # bfloat16 exports (tools/export_demo: half the bytes) compute in float32 like every other.
    params = jax.tree.map(lambda x: x.astype('float32') if x.dtype == 'bfloat16' else x, params)
    config_path = path / 'config.json'
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    return params, ml_collections.ConfigDict(config)
  raise errors.UserError(
      f'{path} holds neither training checkpoints ({manager_lib.CHECKPOINT_SUBDIR}/<step>) nor '
      'exported params (params/ + config.json): point to a training workdir or a converted '
      'checkpoint')
