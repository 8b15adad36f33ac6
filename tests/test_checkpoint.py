"""Checkpoints: save/restore across meshes, retention, data state, exported params."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ivd_jax import errors
from ivd_jax import checkpoint as ckpt_lib
from ivd_jax import parallel as shard_lib
from ivd_jax.training import state as state_lib


def _optim():
  return ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, schedule='constant', b1=0.9,
                                        b2=0.999, eps=1e-8, weight_decay=0.0, ema_decay=0.9))


def _params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  return {'input_blocks_0_0': {'kernel': jax.random.normal(k1, (3, 3, 4, 64)),
                               'bias': jnp.arange(64, dtype=jnp.float32)},
          'dense': {'kernel': jax.random.normal(k2, (256, 128))}}


def _state(mesh):
  tx = state_lib.make_optimizer(_optim())
  state = state_lib.create_train_state(_params(), tx, jax.random.PRNGKey(0))
  # One real update so that opt_state and ema differ from their initial values.
  grads = jax.tree.map(jnp.ones_like, state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = jax.tree.map(jnp.add, state.params, updates)
  state = state.replace(step=state.step + 5, params=params, opt_state=opt_state,
                        ema_params=state_lib.ema_update(state.ema_params, params, 0.9))
  return jax.device_put(state, shard_lib.tree_shardings(mesh, state))


def _mesh(shape, n):
  return shard_lib.make_mesh(ml_collections.ConfigDict({'shape': shape}),
                             devices=jax.devices()[:n])


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('src,dst', [(((4, 2), 8), ((1, 1), 1)), (((1, 1), 1), ((2, 4), 8))])
def test_restore_onto_other_device_count(tmp_path, src, dst):
  state = _state(_mesh(*src))
  ck = ckpt_lib.Checkpointer(str(tmp_path / 'checkpoints'), every_steps=5)
  ck.save(5, state, data_state={'next_index': 80}, config={'model': {'image_size': 16}})
  ck.wait()
  dst_mesh = _mesh(*dst)
  abstract = ckpt_lib.abstract_state_like(
      jax.eval_shape(lambda s: s, state))
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
      shard_lib.tree_shardings(dst_mesh, abstract))
  restored, data_state, config, step = ck.restore(abstract)
  ck.close()
  assert step == 5 and int(restored.step) == 5
  assert data_state == {'next_index': 80}
  assert config == {'model': {'image_size': 16}}
  _assert_trees_equal(restored.to_dict(), state.to_dict())
  kernel = restored.params['dense']['kernel']
  assert len(kernel.sharding.device_set) == dst[1]
  # The rule table shards the large kernel over 'fsdp' on the target mesh.
  assert kernel.sharding.spec == shard_lib.param_spec((256, 128), dst_mesh.shape['fsdp'])


def test_retention_and_latest_good_step(tmp_path):
  mesh = _mesh((1, 1), 1)
  state = _state(mesh)
  ck = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=2, keep_every=4)
  for step in range(1, 8):
    ck.save(step, state.replace(step=jnp.int32(step)), data_state={'i': step}, config={})
  ck.wait()
  # Latest two plus every multiple of 4.
  assert ck.all_steps() == [4, 6, 7]
  # A damaged newest checkpoint: the previous one is restored instead.
  state_dir = tmp_path / '7' / 'state'
  for f in state_dir.rglob('*'):
    if f.is_file() and f.name != '_METADATA':
      f.write_bytes(b'garbage')
  restored, data_state, _, step = ck.restore(ckpt_lib.abstract_state_like(state))
  ck.close()
  assert step == 6 and int(restored.step) == 6 and data_state == {'i': 6}


def test_save_and_load_params(tmp_path):
  mesh = _mesh((4, 2), 8)
  state = _state(mesh)
  ck = ckpt_lib.Checkpointer(str(tmp_path / 'run' / 'checkpoints'), every_steps=5)
  ck.save(5, state, data_state={}, config={'model': {'in_channels': 4}})
  ck.close()
  ema, config = ckpt_lib.load_params(str(tmp_path / 'run'))
  raw, _ = ckpt_lib.load_params(str(tmp_path / 'run'), ema=False)
  assert config.model.in_channels == 4
  _assert_trees_equal(ema, state.ema_params)
  _assert_trees_equal(raw, state.params)
  assert not np.array_equal(ema['dense']['kernel'], raw['dense']['kernel'])
  # Export and read back.
  ckpt_lib.save_params(str(tmp_path / 'export'), ema, config)
  assert json.loads((tmp_path / 'export' / 'config.json').read_text())['model']['in_channels'] == 4
  params, config2 = ckpt_lib.load_params(str(tmp_path / 'export'))
  _assert_trees_equal(params, state.ema_params)
  assert config2.model.in_channels == 4
  with pytest.raises(errors.UserError, match='neither training checkpoints'):
    os.makedirs(tmp_path / 'empty')
    ckpt_lib.load_params(str(tmp_path / 'empty'))
  with pytest.raises(errors.UserError, match='does not exist'):
    ckpt_lib.load_params(str(tmp_path / 'nowhere'))
