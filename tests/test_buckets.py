"""Workdirs on a bucket: every mode against a local GCS emulator (gcp-storage-emulator).

The emulator (tests/gcs_emulator.py: gcp-storage-emulator plus the generation header and read
conditions TensorStore relies on) is a subprocess on a free loopback port. gcsfs (etils.epath:
configs, metrics, pictures, JSON, markers) finds it through STORAGE_EMULATOR_HOST and TensorStore
(orbax's arrays) through TENSORSTORE_GCS_HTTP_URL, both without credentials (gcsfs anonymous,
TensorStore's test token), so no request leaves the machine.

One chain, as a user would run it on a pod with --workdir=gs://bucket/run: prepare -> train G_u
(2 steps) -> resume (2 more) -> train G_c from G_u -> sample -> eval (Inception weights on the
bucket too), the dataset staged to a local cache for grain, the working directory a fresh
temporary folder that must not gain a folder named `gs:`.
"""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from ivd_jax import checkpoint
from ivd_jax import errors
from ivd_jax import main as main_lib
from ivd_jax.configs import eval as eval_config
from ivd_jax.configs import prepare as prepare_config
from ivd_jax.configs import quickstart as quickstart_config
from ivd_jax.configs import sample as sample_config
from ivd_jax.data import prepare as prepare_lib
from ivd_jax.data import records
from ivd_jax.io import npz
from ivd_jax.io import paths
from ivd_jax.io import video as video_io

# Checked without importing: gcsfs must be imported after the fixture has set its environment.
for _module in ('gcsfs', 'gcp_storage_emulator'):
  if importlib.util.find_spec(_module) is None:
    pytest.skip(f'{_module} is missing: pip install -r requirements-dev.txt (the gcs extra and '
                'the emulator)', allow_module_level=True)

BUCKET = 'ivd-test-bucket'
RUN = f'gs://{BUCKET}/run'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _forget_cached_filesystems() -> None:
  """etils and fsspec keep one gcsfs client per process: drop it so the next one sees the
  current environment (a client made before the emulator started would talk to real GCS)."""
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  import gcsfs  # pylint: disable=g-import-not-at-top
  import gcsfs.core  # pylint: disable=g-import-not-at-top
  gcsfs.GCSFileSystem.clear_instance_cache()
  gcsfs.core.GCSFileSystem.clear_instance_cache()


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
  """A GCS emulator with one bucket; the environment points gcsfs and TensorStore at it."""
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  log = open(tmp_path_factory.mktemp('emulator') / 'emulator.log', 'w')  # pylint: disable=R1732
  proc = subprocess.Popen(
      [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gcs_emulator.py'),
       str(port), BUCKET], stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 60
  while True:
    try:
      urllib.request.urlopen(url + '/', timeout=2).read()
      break
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        pytest.fail(f'the GCS emulator did not start (exit {proc.poll()}); see {log.name}',
                    pytrace=False)
      time.sleep(0.2)
  env = {
      'STORAGE_EMULATOR_HOST': url,  # gcsfs and google-cloud-storage
      'TENSORSTORE_GCS_HTTP_URL': url,  # TensorStore (orbax's arrays)
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',  # TensorStore: a fixed token, no lookup
      'GOOGLE_CLOUD_PROJECT': 'ivd-test',
      # gcsfs >= 2025.10 asks a gRPC control plane for the bucket type by default; the emulator
      # has none.
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
      # Never probe a metadata server for credentials (google-auth).
      'NO_GCE_CHECK': 'true', 'GCE_METADATA_HOST': '127.0.0.1:9', 'GCE_METADATA_IP': '127.0.0.1:9',
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  import fsspec  # pylint: disable=g-import-not-at-top
  import fsspec.config  # pylint: disable=g-import-not-at-top
  import gcsfs.core  # pylint: disable=g-import-not-at-top
  saved_conf = {k: fsspec.config.conf.get(k) for k in ('gcs', 'gs')}
  saved_impl = {k: fsspec.get_filesystem_class(k) for k in ('gcs', 'gs')}
  for protocol in ('gcs', 'gs'):
    fsspec.config.conf[protocol] = dict(fsspec.config.conf.get(protocol) or {}, token='anon')
    # The plain client even when gcsfs was imported before the environment was set (its
    # extended client asks a control plane over gRPC, which the emulator does not serve).
    fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
  _forget_cached_filesystems()
  try:
    yield url
  finally:
    _forget_cached_filesystems()
    for k, v in saved_impl.items():
      fsspec.register_implementation(k, v, clobber=True)
    for k, v in saved_conf.items():
      if v is None:
        fsspec.config.conf.pop(k, None)
      else:
        fsspec.config.conf[k] = v
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
    log.close()


def test_paths_round_trip_on_the_bucket(emulator, tmp_path):
  """io.paths on gs://: write, read, list, copy both ways, stage and refresh."""
  del emulator
  root = f'gs://{BUCKET}/paths'
  paths.write_text(paths.join(root, 'a', 'x.json'), '{"a": 1}')
  paths.write_bytes(paths.join(root, 'a', 'b', 'y.bin'), b'1234')
  assert paths.is_dir(paths.join(root, 'a')) and paths.is_file(paths.join(root, 'a', 'x.json'))
  assert paths.listdir(paths.join(root, 'a')) == ['b', 'x.json']
  assert sorted(paths.list_files(root)) == ['a/b/y.bin', 'a/x.json']
  assert paths.size(paths.join(root, 'a', 'b', 'y.bin')) == 4
  with paths.local_copy(paths.join(root, 'a')) as local:
    assert sorted(os.listdir(local)) == ['b', 'x.json']
  with paths.local_target(paths.join(root, 'video.mp4')) as local:
    assert local.endswith('.mp4') and not paths.is_remote(local)
    with open(local, 'wb') as f:
      f.write(b'frames')
  assert paths.read_bytes(paths.join(root, 'video.mp4')) == b'frames'
  staged = paths.stage(root, tmp_path / 'cache')
  assert open(os.path.join(staged, 'a', 'x.json')).read() == '{"a": 1}'
  paths.write_text(paths.join(root, 'a', 'x.json'), '{"a": 2}')  # rewritten: same size
  paths.remove(paths.join(root, 'video.mp4'))
  assert paths.stage(root, tmp_path / 'cache') == staged
  assert open(os.path.join(staged, 'a', 'x.json')).read() == '{"a": 2}'
  assert not os.path.exists(os.path.join(staged, 'video.mp4'))
  assert paths.join(RUN, 'x') == f'{RUN}/x' and paths.dirname(f'{RUN}/x') == RUN
  assert paths.dirname(f'gs://{BUCKET}') == f'gs://{BUCKET}' and paths.abspath(RUN) == RUN


def _train_config(role, num_steps, data_dir, cache, init_from='', **log):
  """The quickstart smoke preset's G_u / G_c training config (16 px, minimal UNet)."""
  config = quickstart_config.get_config('smoke')[role]
  config.data.dir, config.data.cache_dir = data_dir, cache
  config.init_from = init_from
  config.train.num_steps = num_steps
  config.checkpoint.every_steps = num_steps
  config.log.update(dict(every_steps=1, progress=False), **log)
  return config


def _steps(metrics_jsonl: str) -> list[int]:
  return [json.loads(line)['step'] for line in paths.read_text(metrics_jsonl).splitlines()]


def test_every_mode_with_its_workdir_on_a_bucket(emulator, tmp_path, monkeypatch,
                                                 inception_weights):
  del emulator
  monkeypatch.chdir(tmp_path)  # a relative `gs:` folder would appear here
  monkeypatch.setenv('IVD_JAX_CACHE', str(tmp_path / 'ivd_cache'))
  cache = str(tmp_path / 'data_cache')
  data_dir = paths.join(RUN, 'data')
  timings = {}

  # prepare: shards written locally and uploaded, markers and TFDS metadata on the bucket.
  t0 = time.perf_counter()
  prep = prepare_config.get_config('procedural')
  smoke = quickstart_config.get_config('smoke')
  prep.data = smoke.data
  prep.data.dir = data_dir
  prep.data.cache_dir = cache
  prep.data.prepare_workers = 1
  prep.log.progress = False
  summary = main_lib.run(prep, RUN)
  assert summary['data_dir'] == data_dir and summary['splits'] == {'train': 16, 'test': 8}
  timings['prepare'] = time.perf_counter() - t0

  # train G_u 2 steps, then resume to 4 (metrics every step: a resumed run logs 3 and 4 only).
  t0 = time.perf_counter()
  gu = paths.join(RUN, 'uncond')
  first = main_lib.run(_train_config('uncond', 2, data_dir, cache), gu)
  assert first['step'] == 2 and _steps(paths.join(gu, 'metrics.jsonl')) == [1, 2]
  timings['train'] = time.perf_counter() - t0
  t0 = time.perf_counter()
  resumed = main_lib.run(_train_config('uncond', 4, data_dir, cache, sample_every_steps=4,
                                       sample_steps=2, num_samples=2), gu)
  assert resumed['step'] == 4 and resumed['stopped'] == 'finished'
  assert _steps(paths.join(gu, 'metrics.jsonl')) == [1, 2, 3, 4]
  reader = checkpoint.Checkpointer(checkpoint.workdir_checkpoint_dir(gu), every_steps=0,
                                   read_only=True)
  assert reader.all_steps() == [2, 4]
  reader.close()
  timings['resume'] = time.perf_counter() - t0

  # train G_c initialised from G_u on the bucket.
  t0 = time.perf_counter()
  gc = paths.join(RUN, 'cond')
  cond = main_lib.run(_train_config('cond', 2, data_dir, cache, init_from=gu), gc)
  assert cond['step'] == 2
  timings['train_cond'] = time.perf_counter() - t0

  # sample from both networks on the bucket into RUN/samples/<run>.
  t0 = time.perf_counter()
  sc = sample_config.get_config('tiny')
  sc.sample.update({k: v for k, v in smoke.sample.items() if k not in ('uncond', 'cond')})
  sc.sample.uncond, sc.sample.cond = gu, gc
  sc.sample.run_name = 'bucket'
  manifest = main_lib.run(sc, RUN)
  out = paths.join(RUN, 'samples', 'bucket')
  assert manifest['dir'] == out
  timings['sample'] = time.perf_counter() - t0

  # eval the sampled view sets (read from the bucket) against the staged dataset.
  t0 = time.perf_counter()
  weights = f'gs://{BUCKET}/weights/{os.path.basename(inception_weights)}'
  paths.copy_file(inception_weights, weights)
  ec = eval_config.get_config('files')
  ec.data.dir, ec.data.cache_dir = data_dir, cache
  ec.eval.update(generated=paths.join(out, 'views.npz'), inception_weights=weights,
                 name='bucket', num_images=4, batch_size=8, kid_subsets=2, kid_subset_size=4)
  report = main_lib.run(ec, RUN)
  timings['eval'] = time.perf_counter() - t0
  print('timings (s):', {k: round(v, 1) for k, v in timings.items()})

  # What the bucket holds.
  files = paths.list_files(RUN)
  for name in ('prepare_summary.json', 'data/metadata.json', 'data/dataset_info.json',
               'data/features.json', 'data/ivd_rgbd-train.array_record-00000-of-00001',
               'data/ivd_rgbd-test.array_record-00000-of-00001', 'uncond/config.json',
               'uncond/samples/step_00000004.png', 'cond/config.json', 'cond/metrics.jsonl',
               'samples/bucket/manifest.json', 'samples/bucket/views.npz',
               'samples/bucket/overview.png', 'eval/bucket.json', 'eval/bucket.png'):
    assert name in files, f'{RUN}/{name} missing; the bucket holds {sorted(files)}'
  for wd in ('uncond', 'cond'):
    assert any(f.startswith(f'{wd}/tensorboard/events.out.tfevents') for f in files)
  assert any(f.startswith('uncond/checkpoints/4/') for f in files)
  assert any(f.startswith('eval/reference_') and f.endswith('.npz') for f in files)
  instance = 'samples/bucket/instance_0000'
  for name in ('view_00_rgb.png', 'view_01_depth.png', 'view_02_cond.png', 'grid_rgb.png',
               'orbit.gif', 'orbit.mp4', 'points.ply', 'arrays.npz'):
    assert f'{instance}/{name}' in files, name
  frames = smoke.sample.video_frames
  assert video_io.read_frames(paths.join(RUN, instance, 'orbit.mp4')).shape[0] == frames
  with npz.load_npz(paths.join(out, 'views.npz')) as f:
    assert f['rgbd'].shape == (2, 3, 16, 16, 4)
  written = json.loads(paths.read_text(paths.join(RUN, 'eval', 'bucket.json')))
  assert written['num_images'] == report['num_images'] == 4
  assert np.isfinite(written['fid']) and written['images'] == paths.join(out, 'views.npz')
  assert written['settings']['inception_weights'] == weights
  assert json.loads(paths.read_text(paths.join(out, 'manifest.json')))['run'] == 'bucket'

  # The dataset was read from the local cache; no local folder named `gs:` anywhere.
  assert os.path.isfile(os.path.join(paths.staging_dir(data_dir, cache), 'metadata.json'))
  assert not [p for p, _, _ in os.walk(tmp_path) if os.path.basename(p) == 'gs:']
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  assert not any(os.path.exists(os.path.join(d, 'gs:')) for d in (repo, f'{repo}/tests'))


def test_data_that_cannot_be_staged_names_the_fix(emulator, tmp_path):
  """A dataset on a bucket that cannot be copied locally, and image folders on a bucket, are
  ConfigErrors that name gcsfuse as the way out."""
  del emulator
  data_dir = f'gs://{BUCKET}/errors/data'
  paths.write_text(paths.join(data_dir, 'metadata.json'), '{}')
  not_a_folder = tmp_path / 'file'
  not_a_folder.write_text('')
  with pytest.raises(errors.ConfigError, match='data.cache_dir.*gcsfuse'):
    records.local_dataset(data_dir, str(not_a_folder))
  data = prepare_config.get_config('folder').data
  data.folder = f'gs://{BUCKET}/images'
  with pytest.raises(errors.ConfigError, match='data.folder.*gcsfuse'):
    prepare_lib.options_from_config(data)
