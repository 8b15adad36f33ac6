"""Input pipeline: sharded global batches, epochs, flips, exact resume, two processes."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ivd_jax.configs import prepare as prepare_config
from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax.data import pipeline
from ivd_jax.data import records
from ivd_jax.pipelines import prepare

RES = 16
NUM = 48
ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_config(path, **overrides):
  config = prepare_config.get_config('procedural')
  config.data.resolution = RES
  config.data.num_examples = NUM
  config.data.num_eval_examples = 0
  config.data.examples_per_shard = 16
  config.data.prepare_workers = 1
  config.data.dir = str(path)
  config.data.flip = False
  config.log.progress = False
  for k, v in overrides.items():
    config.data[k] = v
  return config


def mesh_8():
  return parallel.make_mesh(ml_collections.ConfigDict({'shape': (4, 2)}))


def network_examples(path, split='train'):
  """Every example of the split in the network encoding, [N, R, R, 4], in dataset order."""
  skip = tfds.decode.SkipDecoding
  source = tfds.builder_from_directory(str(path)).as_data_source(
      split=split, decoders={'rgb': skip(), 'depth': skip()})
  out = []
  for i in range(len(source)):
    ex = source[i]
    rgb = records.decode_png(ex['rgb']) / 255.0
    zbuf = records.decode_png(ex['depth']) / 65535.0
    out.append(np.concatenate([rgb, zbuf[..., None]], -1) * 2 - 1)
  return np.stack(out).astype(np.float32)


def identify(batch_rgbd, examples):
  """(index into examples, flipped) of every image of a batch; asserts each one is found."""
  found = []
  for image in np.asarray(batch_rgbd):
    for flipped, candidate in ((False, image), (True, image[:, ::-1])):
      hits = np.flatnonzero(np.abs(examples - candidate).max(axis=(1, 2, 3)) < 1e-6)
      if len(hits):
        found.append((int(hits[0]), flipped))
        break
    else:
      raise AssertionError('a batch image is not an example of the dataset')
  return found


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  work = tmp_path_factory.mktemp('pipeline')
  prepare.run(make_config(work / 'data'), str(work))
  return work / 'data', network_examples(work / 'data')


def test_global_batches_on_8_devices(dataset):
  path, examples = dataset
  it = pipeline.create_input_iterator(make_config(path).data, global_batch_size=16,
                                      mesh=mesh_8(), seed=0)
  batch = next(it)
  rgbd, label = batch['rgbd'], batch['label']
  assert rgbd.shape == (16, RES, RES, 4) and rgbd.dtype == np.float32
  assert label.shape == (16,) and label.dtype == np.int32
  assert rgbd.sharding.spec == parallel.BATCH_SPEC
  assert len(rgbd.sharding.device_set) == 8
  # Each device holds 2 consecutive examples of the global batch.
  for shard in rgbd.addressable_shards:
    assert shard.data.shape == (2, RES, RES, 4)
  np.testing.assert_array_equal(np.asarray(label), -1)
  values = np.asarray(rgbd)
  assert -1.0 <= values.min() and values.max() <= 1.0
  ids = identify(values, examples)
  assert len({i for i, _ in ids}) == 16 and not any(f for _, f in ids)


def test_epochs_are_permutations_reshuffled(dataset):
  path, examples = dataset
  it = pipeline.create_input_iterator(make_config(path).data, global_batch_size=8, mesh=mesh_8(),
                                      seed=5)
  epochs = []
  for _ in range(2):
    order = []
    for _ in range(NUM // 8):
      order += [i for i, _ in identify(next(it)['rgbd'], examples)]
    epochs.append(order)
  for order in epochs:
    assert sorted(order) == list(range(NUM))
  assert epochs[0] != epochs[1] and epochs[0] != list(range(NUM))
  # Another seed gives another order.
  other = pipeline.create_input_iterator(make_config(path).data, global_batch_size=8,
                                         mesh=mesh_8(), seed=6)
  assert [i for i, _ in identify(next(other)['rgbd'], examples)] != epochs[0][:8]


def test_flip_mirrors_about_half(dataset):
  path, examples = dataset
  it = pipeline.create_input_iterator(make_config(path, flip=True).data, global_batch_size=16,
                                      mesh=mesh_8(), seed=1)
  flips = [f for _ in range(6) for _, f in identify(next(it)['rgbd'], examples)]
  assert 0.3 < np.mean(flips) < 0.7, np.mean(flips)


@pytest.mark.parametrize('num_workers', [0, 1])
def test_resume_gives_identical_batches(dataset, num_workers):
  path, _ = dataset
  config = make_config(path, flip=True, num_workers=num_workers)
  it = pipeline.create_input_iterator(config.data, global_batch_size=8, mesh=mesh_8(), seed=3)
  for _ in range(4):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # as stored in a checkpoint
  expected = [np.asarray(next(it)['rgbd']) for _ in range(5)]  # crosses an epoch boundary
  resumed = pipeline.create_input_iterator(config.data, global_batch_size=8, mesh=mesh_8(),
                                           seed=3)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(np.asarray(next(resumed)['rgbd']), want)
  wrong = pipeline.create_input_iterator(config.data, global_batch_size=8, mesh=mesh_8(), seed=4)
  with pytest.raises(errors.UserError, match='seed'):
    wrong.set_state(state)


def test_config_errors(dataset, tmp_path):
  path, _ = dataset
  with pytest.raises(errors.ConfigError, match='prepared at 16 px') as e:
    pipeline.create_input_iterator(make_config(path, resolution=32).data, global_batch_size=8,
                                   mesh=mesh_8(), seed=0)
  assert e.value.field == 'data.resolution'
  with pytest.raises(errors.ConfigError, match='not divisible by the 8 devices') as e:
    pipeline.create_input_iterator(make_config(path).data, global_batch_size=12,
                                   mesh=mesh_8(), seed=0)
  assert e.value.field == 'train.batch_size'
  with pytest.raises(errors.ConfigError, match='far=100.0') as e:
    pipeline.create_input_iterator(make_config(path, far=5.0).data, global_batch_size=8,
                                   mesh=mesh_8(), seed=0)
  with pytest.raises(errors.ConfigError, match='no prepared dataset') as e:
    pipeline.create_input_iterator(make_config(tmp_path / 'nothing').data, global_batch_size=8,
                                   mesh=mesh_8(), seed=0)
  assert e.value.field == 'data.dir'
  with pytest.raises(errors.ConfigError, match="no split 'test'"):
    pipeline.create_input_iterator(make_config(path).data, global_batch_size=8, mesh=mesh_8(),
                                   seed=0, split='test')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_read_disjoint_halves(dataset, tmp_path):
  """jax.distributed on localhost (gloo CPU collectives), 2 processes x 2 devices: one epoch of
  each process covers its half of the split; the halves are disjoint and cover the split; the
  global batch is one array (a jitted sum over it agrees on both processes)."""
  path, examples = dataset
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT),
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
      [sys.executable, __file__, str(i), str(port), str(path), str(tmp_path / f'p{i}.json')],
      env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  logs = [p.communicate(timeout=240)[0].decode()[-3000:] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs
  results = [json.loads((tmp_path / f'p{i}.json').read_text()) for i in range(2)]
  halves = []
  for r in results:
    local = np.asarray(r['local'], np.float32).reshape(-1, RES, RES, 4)
    halves.append({i for i, _ in identify(local, examples)})
    assert len(local) == NUM // 2 and len(halves[-1]) == NUM // 2  # each example once
    assert r['global_shape'] == [8, RES, RES, 4] and r['num_examples'] == NUM // 2
  assert not halves[0] & halves[1] and halves[0] | halves[1] == set(range(NUM))
  assert results[0]['global_sums'] == pytest.approx(results[1]['global_sums'], rel=1e-6)


def _worker(index: int, port: int, path: str, out: str):
  """One process of test_two_processes_read_disjoint_halves."""
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=index)
  assert jax.device_count() == 4 and jax.local_device_count() == 2
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'shape': (4, 1)}))
  it = pipeline.create_input_iterator(make_config(path).data, global_batch_size=8, mesh=mesh,
                                      seed=0, num_epochs=1)
  total = jax.jit(lambda x: x.sum(axis=(1, 2, 3)),
                  out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  local, sums = [], []
  for batch in it:
    shards = sorted(batch['rgbd'].addressable_shards, key=lambda s: s.index[0].start)
    local += [np.asarray(s.data) for s in shards]
    sums += np.asarray(total(batch['rgbd'])).tolist()
    shape = list(batch['rgbd'].shape)
  pathlib.Path(out).write_text(json.dumps(dict(
      local=np.concatenate(local).tolist(), global_sums=sums, global_shape=shape,
      num_examples=it.num_examples)))
  jax.distributed.shutdown()


if __name__ == '__main__':
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
