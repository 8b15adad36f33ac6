"""The train step and train_and_evaluate: sharding equivalence, config checks, exact resume."""
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ivd_jax.configs import common
from ivd_jax import checkpoint as ckpt_lib
from ivd_jax import errors
from ivd_jax import parallel as shard_lib
from ivd_jax import roles
from ivd_jax.data import procedural
from ivd_jax.geometry import cameras
from ivd_jax.pipelines import train
from ivd_jax.training import checks
from ivd_jax.training import state as state_lib
from ivd_jax.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The tiny preset shrunk to 16 px and a 0.1 M-parameter UNet for fast tests; also given to
# subprocess runs of the entry point as --config.<field>=<value> flags.
SMALL = {
    'data.resolution': 16, 'model.image_size': 16, 'data.num_examples': 32,
    'data.num_eval_examples': 0,
    'model.model_channels': 16, 'model.channel_mult': (1, 2), 'model.num_res_blocks': 1,
    'model.attention_resolutions': (8,), 'model.num_head_channels': 16, 'model.num_groups': 8,
    'train.batch_size': 8, 'optim.warmup_steps': 0, 'log.progress': False,
    'log.sample_every_steps': 0, 'log.every_steps': 1, 'checkpoint.every_steps': 4,
}


def small_config(conditional: bool, *, num_classes: int = 0, **overrides: object
                 ) -> ml_collections.ConfigDict:
  config = common.train_config('tiny', role='cond' if conditional else 'uncond')
  for name, value in {**SMALL, 'model.num_classes': num_classes, **overrides}.items():
    section, field = name.split('.')
    config[section][field] = value
  return config


def _flags(**overrides: object) -> list[str]:
  items = {**SMALL, **overrides}
  return [f'--config.{k}={v}' for k, v in items.items()]


def _batch(n: int, res: int, num_classes: int = 0) -> dict[str, np.ndarray]:
  view = np.asarray(cameras.SOURCE_VIEW)
  rgbd = np.stack([procedural.render_rgbd(procedural.sample_scene(i), view, res)
                   for i in range(n)])
  labels = np.arange(n) % num_classes if num_classes else np.full((n,), -1)
  return {'rgbd': (rgbd * 2 - 1).astype(np.float32), 'label': labels.astype(np.int32)}


def _one_step(config, mesh, batch, steps=1):
  with jax.set_mesh(mesh):
    model = roles.role_of(config).network(config.model)
    tx = state_lib.make_optimizer(config.optim)
    state, shardings = step_lib.init_state(model, tx, config, mesh)
    bs = shard_lib.batch_sharding(mesh)
    step = step_lib.jit_train_step(model, tx, config, mesh, shardings)
    for _ in range(steps):
      state, metrics = step(state, jax.device_put(batch, bs))
    sharded = sum(1 for x in jax.tree.leaves(state.params)
                  if len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated)
    return jax.device_get(state.params), jax.device_get(metrics), sharded


def _mesh(shape, n):
  return shard_lib.make_mesh(ml_collections.ConfigDict({'shape': shape}),
                             devices=jax.devices()[:n])


def test_step_same_on_1_and_8_devices():
  """G_u: 1 device vs pure data parallel vs data x fsdp, same loss and update.

  The config is the one the train-loop tests run, so their compiled step on the (8, 1) mesh is
  shared through the persistent compilation cache.
  """
  config = small_config(False)
  config.mesh.fsdp_min_size = 0  # shard every divisible array, even in this small UNet
  batch = _batch(8, 16)
  ref_params, ref_metrics, _ = _one_step(config, _mesh((1, 1), 1), batch)
  assert np.isfinite(ref_metrics['loss']) and ref_metrics['nonfinite'] == 0
  # Zero-initialised output conv: the first prediction is 0, so the loss is E[eps^2] ~ 1.
  assert 0.8 < ref_metrics['loss'] < 1.2
  for shape in ((8, 1), (4, 2)):
    params, metrics, sharded = _one_step(config, _mesh(shape, 8), batch)
    # fsdp > 1 really splits parameters (and their optimizer state) over devices.
    assert (sharded > 0) == (shape[1] > 1), sharded
    np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-5)
    np.testing.assert_allclose(metrics['grad_norm'], ref_metrics['grad_norm'], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # A non-finite loss leaves the weights untouched and is flagged (the loop then stops before
  # saving). Same shapes as the reference: the compiled step is reused.
  bad = dict(batch, rgbd=np.where(np.arange(16)[None, :, None, None] == 3, np.nan,
                                  batch['rgbd']).astype(np.float32))
  params, metrics, _ = _one_step(config, _mesh((1, 1), 1), bad)
  assert metrics['nonfinite'] == 1.0 and not np.isfinite(metrics['loss'])
  mesh = _mesh((1, 1), 1)
  with jax.set_mesh(mesh):
    model = roles.role_of(config).network(config.model)
    init, _ = step_lib.init_state(model, state_lib.make_optimizer(config.optim), config, mesh)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(init.params))):
    np.testing.assert_array_equal(a, b)


def test_conditional_step_builds_pairs_on_device():
  """G_c step on a data x fsdp mesh: pairs built inside, loss split into visible and holes.

  The pairs themselves are shown identical under sharding in test_pairs.py; the UNet/optimizer
  part is the same as G_u's above.
  """
  config = small_config(True)
  batch = _batch(8, 16)
  _, metrics, _ = _one_step(config, _mesh((2, 4), 8), batch)
  assert metrics['nonfinite'] == 0 and 0.8 < metrics['loss'] < 1.2
  assert 0.1 < metrics['visible_fraction'] < 1.0
  # With a zero-initialised output the prediction is 0 everywhere: both regions see E[eps^2].
  assert 0.7 < metrics['loss_visible'] < 1.3 and 0.7 < metrics['loss_holes'] < 1.3


def test_label_dropout_p_uncond():
  """Classifier-free training: labels become the null label -1 with probability p_uncond."""
  labels = jnp.arange(200_000) % 7
  key = jax.random.key(3)
  dropped = step_lib.drop_labels(key, labels, 0.1)
  assert abs(float(jnp.mean(dropped == -1)) - 0.1) < 0.003  # 6 sigma of a binomial mean
  kept = dropped != -1
  np.testing.assert_array_equal(dropped[kept], labels[kept])
  assert not bool(jnp.any(step_lib.drop_labels(key, labels, 0.0) == -1))
  assert bool(jnp.all(step_lib.drop_labels(key, labels, 1.0) == -1))
  # Inside the step: p_uncond = 1 trains exactly the unconditional model (every label -1), and
  # the labels do change the update when kept (the class embedding is live).
  batch = _batch(8, 16, num_classes=4)
  null = dict(batch, label=np.full((8,), -1, np.int32))
  mesh = _mesh((1, 1), 1)
  # Two steps: the zero-initialised output convs make the first update label-independent.
  all_dropped, m_dropped, _ = _one_step(
      small_config(False, num_classes=4, **{'diffusion.p_uncond': 1.0}), mesh, batch, steps=2)
  config = small_config(False, num_classes=4, **{'diffusion.p_uncond': 0.0})
  unconditional, m_null, _ = _one_step(config, mesh, null, steps=2)
  conditional, _, _ = _one_step(config, mesh, batch, steps=2)
  assert m_dropped['loss'] == m_null['loss']
  for a, b in zip(jax.tree.leaves(all_dropped), jax.tree.leaves(unconditional)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(conditional), jax.tree.leaves(unconditional)))


# ---------------------------------------------------------------------------------------------
# Configuration checks: one clear message naming the field and the fix, before compiling.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('overrides,field,fix', [
    ({'data.resolution': 15, 'model.image_size': 15}, 'data.resolution', 'divisible by 2'),
    ({'model.image_size': 32}, 'model.image_size', 'same size'),
    ({'train.batch_size': 12}, 'train.batch_size', 'multiple of 8'),
    ({'model.attention_resolutions': (4,)}, 'model.attention_resolutions', 'feature-map'),
    ({'model.num_groups': 32}, 'model.num_groups', 'divisible by num_groups'),
    ({'optim.lr': 0.0}, 'optim.lr', '1e-4'),
])
def test_config_errors(overrides, field, fix):
  config = small_config(False, **overrides)
  with pytest.raises(errors.ConfigError) as e:
    checks.validate_config(config, num_devices=8)
  assert e.value.field == field and fix in str(e.value)
  # The same through the entry function, before any compilation.
  with pytest.raises(errors.ConfigError):
    train.train_and_evaluate(config, '/nonexistent/never_created')


def test_missing_folder_dataset_names_prepare(tmp_path):
  config = common.train_config('dogs128')
  with pytest.raises(errors.ConfigError, match=r'configs/prepare.py:dogs128') as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert e.value.field == 'data.dir'
  config = small_config(True)
  config.init_from = str(tmp_path / 'no')
  with pytest.raises(errors.ConfigError, match='init_from'):
    checks.validate_config(config, num_devices=8)


def test_presets_match_the_reference():
  imagenet = common.train_config('imagenet128', role='cond')
  assert imagenet.model.model_channels == 256 and imagenet.model.num_classes == 1000
  assert tuple(imagenet.model.channel_mult) == (1, 1, 2, 3, 4)
  assert tuple(imagenet.model.attention_resolutions) == (32, 16, 8)
  assert roles.role_of(imagenet).in_channels == 10 and imagenet.train.batch_size == 128
  assert (imagenet.optim.lr, imagenet.optim.weight_decay, imagenet.optim.ema_decay) == (
      1e-4, 0.0, 0.9999)
  for name in ('dogs128', 'elephants128', 'horses128'):
    c = common.train_config(name)
    assert (c.model.model_channels, c.model.num_classes, c.train.batch_size) == (128, 0, 64)
    checks.validate_config(c, num_devices=8)
  tiny = common.train_config('tiny')
  checks.validate_config(tiny, num_devices=8)
  model = roles.role_of(tiny).network(tiny.model)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 4)),
                          jnp.zeros((1,), jnp.int32))
  assert 2e6 < state_lib.param_count(shapes) < 6e6


# ---------------------------------------------------------------------------------------------
# Exact resume after SIGKILL, and G_c initialised from the resulting G_u.
# ---------------------------------------------------------------------------------------------
def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {m['step']: m for m in map(json.loads, f)}


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


@functools.lru_cache(maxsize=None)
def prepared_data() -> str:
  """One prepared 16 px procedural dataset per test session (also used by the 2-process test)."""
  path = os.path.join(tempfile.mkdtemp(prefix='ivd_train_test_'), 'data')
  config = small_config(False)
  config.data.dir = path
  train.ensure_dataset(config, os.path.dirname(path))
  return path


@pytest.fixture
def shared_data():
  return prepared_data()


def test_exact_resume_after_sigkill(tmp_path, shared_data):
  killed = str(tmp_path / 'killed')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'ivd_jax.main', '--config=configs/uncond.py', f'--workdir={killed}',
       *_flags(**{'train.num_steps': 1000, 'data.dir': shared_data})],
      cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  first = os.path.join(killed, 'checkpoints', '4')
  while not os.path.isdir(first):
    if proc.poll() is not None:
      pytest.fail(f'training exited early: {proc.stderr.read().decode()[-3000:]}')
    assert time.time() < deadline, 'no checkpoint within 300 s'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = sorted(int(s) for s in os.listdir(os.path.join(killed, 'checkpoints')) if s.isdigit())
  resume_from = saved[-1]
  total = resume_from + 4  # at least N/2 steps before the kill, N/2 after the resume

  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(small_config(False, **{'train.num_steps': total,
                                                  'data.dir': shared_data}), straight)
  result = train.train_and_evaluate(small_config(False, **{'train.num_steps': total,
                                                           'data.dir': shared_data}), killed)
  assert result['step'] == total
  a, b = _metrics(straight), _metrics(killed)
  assert sorted(a) == sorted(b) == list(range(1, total + 1))
  for step in a:
    assert a[step]['loss'] == b[step]['loss'], step
    assert a[step]['grad_norm'] == b[step]['grad_norm'], step
  for ema in (False, True):
    pa, _ = ckpt_lib.load_params(straight, ema=ema)
    pb, _ = ckpt_lib.load_params(killed, ema=ema)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  # G_c starts from this G_u: x_t channels keep G_u's EMA weights, the 6 new ones are zero.
  config = small_config(True, **{'data.dir': shared_data})
  config.init_from = straight
  mesh = _mesh((4, 2), 8)
  with jax.set_mesh(mesh):
    model = roles.role_of(config).network(config.model)
    tx = state_lib.make_optimizer(config.optim)
    fresh, _ = step_lib.init_state(model, tx, config, mesh)
    params = step_lib.params_from_init_from(config, fresh.params)
    state, _ = step_lib.init_state(model, tx, config, mesh, params=params)
  gu, _ = ckpt_lib.load_params(straight, ema=True)
  kernel = np.asarray(state.params['input_blocks_0_0']['kernel'])
  assert kernel.shape[2] == 10
  np.testing.assert_array_equal(kernel[:, :, :4], gu['input_blocks_0_0']['kernel'])
  np.testing.assert_array_equal(kernel[:, :, 4:], 0.0)
  np.testing.assert_array_equal(state.ema_params['out_conv']['kernel'], gu['out_conv']['kernel'])


def test_sigterm_saves_and_exits(tmp_path, shared_data):
  """Pre-emption: SIGTERM during training saves the current step and returns cleanly."""
  workdir = str(tmp_path / 'run')
  metrics_path = os.path.join(workdir, 'metrics.jsonl')

  def send_when_running():
    deadline = time.time() + 300
    while time.time() < deadline:
      if os.path.exists(metrics_path) and os.path.getsize(metrics_path) > 0:
        os.kill(os.getpid(), signal.SIGTERM)
        return
      time.sleep(0.05)

  sender = threading.Thread(target=send_when_running, daemon=True)
  sender.start()
  result = train.train_and_evaluate(
      small_config(False, **{'train.num_steps': 1000, 'data.dir': shared_data}), workdir)
  sender.join()
  assert result['stopped'] == 'SIGTERM'
  assert 1 <= result['step'] < 1000
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert steps[-1] == result['step']
