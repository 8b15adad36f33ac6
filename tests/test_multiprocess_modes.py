"""Every mode under 2 processes on localhost (jax.distributed, gloo CPU collectives, 2 x 4 CPU
devices), checked against the same work done by one process with 8 devices.

One 2-process quickstart (smoke preset, shards of 4 examples so that both processes write some)
prepares the data, trains G_u and G_c and samples both of its runs; then
  prepare: its dataset equals the one a single process prepares, example for example;
  sample:  its views.npz equals a single-process sample of the same networks;
  eval:    a 2-process eval of its views against its data gives a single process's scores.
"""
import json
import os

import numpy as np
import pytest

from test_multiprocess_train import start_processes, wait_processes  # pylint: disable=g-bad-import-order
from ivd_jax import main as main_lib
from ivd_jax.configs import common
from ivd_jax.configs import eval as eval_config
from ivd_jax.configs import quickstart as quickstart_config
from ivd_jax.data import records
from ivd_jax.pipelines import prepare as prepare_pipeline
from ivd_jax.pipelines import quickstart as quickstart_pipeline
from ivd_jax.pipelines import sample as sample_pipeline

# The quickstart's smoke preset with these fields (also given as flags to the 2-process run).
OVERRIDES = {'data.examples_per_shard': 4, 'data.prepare_workers': 1}
MODES = {'uncond': (None, 'tiny'), 'cond': (None, 'tiny'), 'prepare': (None, 'folder'),
         'sample': (None, 'fid'), 'eval': (None, 'files'), 'quickstart': (None, 'smoke'),
         'warp_demo': (None,)}


def _quickstart_config():
  config = quickstart_config.get_config('smoke')
  for name, value in OVERRIDES.items():
    section, field = name.split('.')
    config[section][field] = value
  return config


@pytest.fixture(scope='module')
def quickstart_run(tmp_path_factory) -> str:
  """WORKDIR of the 2-process quickstart."""
  workdir = str(tmp_path_factory.mktemp('mp_quickstart'))
  wait_processes(start_processes(
      ['--config=configs/quickstart.py:smoke', f'--workdir={workdir}',
       *[f'--config.{k}={v}' for k, v in OVERRIDES.items()]], workdir), workdir)
  return workdir


def _files(root: str) -> dict[str, bytes]:
  out = {}
  for d, _, names in os.walk(root):
    for name in names:
      path = os.path.join(d, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_every_mode_config_has_the_distributed_section():
  """`--config.distributed.*` overrides work for every mode (launch/local.sh passes them)."""
  want = set(common.distributed_section().keys())
  for mode, presets in MODES.items():
    module = __import__(f'ivd_jax.configs.{mode}', fromlist=['get_config'])
    for preset in presets:
      config = module.get_config(preset)
      assert set(config.distributed.keys()) == want, (mode, preset)
  # The quickstart's stages share its one section.
  config = quickstart_config.get_config('smoke')
  config.distributed.process_id = 1
  assert config.uncond.distributed.process_id == config.cond.distributed.process_id == 1


def test_quickstart_under_two_processes(quickstart_run):
  summary = json.load(open(os.path.join(quickstart_run, 'quickstart_summary.json')))
  for key in ('full_generation', 'novel_views'):
    run = summary[key]
    assert run['consistency']['num_pairs'] == 6, run
    assert os.path.isfile(run['overview'])
    assert len(run['instances']) == 2 and all(os.path.isfile(v) for v in run['videos'])
  for stage in ('uncond', 'cond'):
    assert os.path.isdir(os.path.join(quickstart_run, stage, 'checkpoints', '2'))
  # Process 1 went through every stage too.
  with open(os.path.join(quickstart_run, 'logs', 'process_1.log')) as f:
    log = f.read()
  assert 'quickstart: 6/6' in log


def test_prepare_under_two_processes_writes_the_same_dataset(quickstart_run, tmp_path):
  config = _quickstart_config()
  workdir = str(tmp_path)
  summary = prepare_pipeline.run(quickstart_pipeline.stage_config(config, workdir, 'uncond'),
                                 workdir)
  assert summary['num_shards'] == {'train': 4, 'test': 2}  # both processes wrote shards
  one_dir, two_dir = os.path.join(workdir, 'data'), os.path.join(quickstart_run, 'data')
  one, two = _files(one_dir), _files(two_dir)
  assert sorted(one) == sorted(two)
  for name in one:
    if name.endswith('.json'):
      a, b = json.loads(one[name]), json.loads(two[name])
      if name.startswith('prepare_state/') and 'seconds' in a:  # shard markers: but the time
        a.pop('seconds'), b.pop('seconds')
      assert a == b, name
  # The examples, in file order. (The shard files' bytes may differ: protobuf serialises the
  # fields of an example in an order that varies between processes.)
  for split in ('train', 'test'):
    a = records.open_split(one_dir, split, this_process_only=False, novel_views=True)
    b = records.open_split(two_dir, split, this_process_only=False, novel_views=True)
    assert len(a) == len(b) == summary['splits'][split]
    for i in range(len(a)):
      x, y = a[i], b[i]
      assert sorted(x) == sorted(y)
      for key in x:
        np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]),
                                      err_msg=f'{split} {i} {key}')


def test_sample_under_two_processes_writes_the_same_views(quickstart_run, tmp_path):
  config = _quickstart_config()
  # The quickstart's full generation with its networks, in this process over 8 devices.
  manifest = sample_pipeline.sample_and_export(
      quickstart_pipeline._sample_config(config, quickstart_run, config.sample),  # pylint: disable=protected-access
      str(tmp_path))
  run = config.sample.run_name
  with np.load(os.path.join(quickstart_run, 'samples', run, 'views.npz')) as f:
    two = dict(f)
  with np.load(os.path.join(manifest['dir'], 'views.npz')) as f:
    one = dict(f)
  assert sorted(one) == sorted(two)
  for key in ('views', 'labels', 'instance_ids'):
    np.testing.assert_array_equal(one[key], two[key], err_msg=key)
  # The same computation on the same 8 devices, compiled for 1 and for 2 processes: XLA may fuse
  # differently, so a value can differ in its last bit.
  np.testing.assert_allclose(one['rgbd'], two['rgbd'], rtol=0, atol=1e-6)


def test_eval_under_two_processes_scores_like_one(quickstart_run, tmp_path, inception_weights):
  run = _quickstart_config().sample.run_name
  fields = {'eval.generated': os.path.join(quickstart_run, 'samples', run, 'views.npz'),
            'data.dir': os.path.join(quickstart_run, 'data'),
            'eval.inception_weights': inception_weights, 'eval.name': 'mp',
            'eval.batch_size': 8, 'eval.num_images': 4, 'eval.is_splits': 2,
            'eval.kid_subsets': 10, 'eval.kid_subset_size': 4, 'eval.report_png': False}
  two_dir, one_dir = str(tmp_path / 'two'), str(tmp_path / 'one')
  wait_processes(start_processes(['--config=configs/eval.py:files', f'--workdir={two_dir}',
                                  *[f'--config.{k}={v}' for k, v in fields.items()]],
                                 two_dir), two_dir)
  config = eval_config.get_config('files')
  for name, value in fields.items():
    section, field = name.split('.')
    config[section][field] = value
  one = main_lib.run(config, one_dir)
  with open(os.path.join(two_dir, 'eval', 'mp.json')) as f:
    two = json.load(f)
  # Every real image (both processes' halves of the split, in file order) and every generated
  # one, each scored once.
  assert two['num_images'] == one['num_images'] == 4
  assert two['num_reference'] == one['num_reference'] == 16
  for key in ('fid', 'kid', 'kid_std', 'inception_score', 'inception_score_std'):
    if one[key] is None:  # IS needs weights with the logits layer
      assert two[key] is None, key
    else:
      assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key
  assert two['consistency'] == pytest.approx(one['consistency'], rel=1e-6, nan_ok=True)
