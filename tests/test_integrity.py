"""Nothing lost, nothing silently wrong under faults: the workdir lock (one writer per workdir,
stale locks taken over), damaged or non-finite checkpoints moved aside with a fall-back to the
newest good step (and that step saved again), and a missing input-iterator state refused unless
the user opts in to a fresh input order."""
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from test_checkpoint import _mesh, _state  # pylint: disable=g-bad-import-order
from test_training import ROOT, _env, _flags  # pylint: disable=g-bad-import-order
from test_training import prepared_data, small_config  # pylint: disable=g-bad-import-order
from ivd_jax import checkpoint as ckpt_lib
from ivd_jax import errors
from ivd_jax.io import lock
from ivd_jax.pipelines import train

HOST = socket.gethostname()


def _lock_info(path):
  with open(os.path.join(path, lock.LOCK_FILE)) as f:
    return json.load(f)


def _write_lock(workdir, **fields):
  os.makedirs(workdir, exist_ok=True)
  info = dict(host=HOST, pid=1, pid_start=None, since='2026-11-30T00:00:00Z',
              heartbeat=time.time(), mode='train', command='python -m ivd_jax.main', token='x')
  info.update(fields)
  tmp = os.path.join(workdir, f'.lock-{threading.get_ident()}.tmp')
  with open(tmp, 'w') as f:
    json.dump(info, f)
  os.replace(tmp, os.path.join(workdir, lock.LOCK_FILE))  # a reader never sees half a file
  return info


def _dead_pid():
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


# ---------------------------------------------------------------------------------------------
# The workdir lock.
# ---------------------------------------------------------------------------------------------
def test_lock_is_held_nested_and_released_on_exceptions(tmp_path):
  workdir = str(tmp_path / 'run')
  with lock.hold(workdir, mode='train', heartbeat_s=60, stale_after_s=600):
    info = _lock_info(workdir)
    assert (info['host'], info['pid'], info['mode']) == (HOST, os.getpid(), 'train')
    assert info['since'].endswith('Z') and info['command']
    with lock.hold(workdir, mode='prepare', heartbeat_s=60, stale_after_s=600):  # nested
      assert _lock_info(workdir)['token'] == info['token']
    assert _lock_info(workdir)['token'] == info['token']  # the inner exit keeps it
  assert not os.path.exists(os.path.join(workdir, lock.LOCK_FILE))
  with pytest.raises(RuntimeError, match='boom'):
    with lock.hold(workdir, mode='train', heartbeat_s=60, stale_after_s=600):
      raise RuntimeError('boom')
  assert os.listdir(workdir) == []  # released; no temporary files left


def test_live_holder_is_named_and_stale_holders_are_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  # A live process of this host (this test's parent shell stands in for another trainer).
  _write_lock(workdir, pid=os.getppid())
  with pytest.raises(lock.WorkdirLocked) as e:
    with lock.hold(workdir, mode='train', heartbeat_s=60, stale_after_s=600):
      pass
  message = str(e.value)
  assert f'host {HOST}, pid {os.getppid()}, since 2026-11-30T00:00:00Z' in message
  assert 'Fix: wait for that run to finish' in message and '\n' not in message
  assert _lock_info(workdir)['pid'] == os.getppid()  # untouched

  # The same pid but another process (a pid reused after a reboot / container restart).
  _, ticks = lock._proc_stat(os.getppid())  # pylint: disable=protected-access
  _write_lock(workdir, pid=os.getppid(), pid_start=ticks + 1)
  with lock.hold(workdir, mode='train', heartbeat_s=60, stale_after_s=600):
    assert _lock_info(workdir)['pid'] == os.getpid()
  # A pid that has exited (what kill -9 leaves behind), and a lock file that is garbage.
  for case in ('dead', 'garbage'):
    if case == 'dead':
      _write_lock(workdir, pid=_dead_pid())
    else:
      with open(os.path.join(workdir, lock.LOCK_FILE), 'w') as f:
        f.write('{"host": "a')
    caplog.clear()
    with lock.hold(workdir, mode='train', heartbeat_s=60, stale_after_s=600):
      assert _lock_info(workdir)['pid'] == os.getpid()
    assert any('taking' in r.getMessage() and 'over' in r.getMessage() for r in caplog.records)
  assert os.listdir(workdir) == []


def test_other_host_lock_is_watched_until_stale_or_alive(tmp_path):
  workdir = str(tmp_path / 'run')
  # Older than lock_stale_after_s: taken over at once.
  _write_lock(workdir, host='elsewhere', heartbeat=time.time() - 1000)
  t = time.monotonic()
  with lock.hold(workdir, mode='train', heartbeat_s=60, stale_after_s=600):
    assert _lock_info(workdir)['host'] == HOST
  assert time.monotonic() - t < 5
  # Young but its heartbeat never advances (a pre-empted host): taken over after stale_after_s.
  _write_lock(workdir, host='elsewhere', heartbeat=time.time())
  t = time.monotonic()
  with lock.hold(workdir, mode='train', heartbeat_s=0.2, stale_after_s=1.0):
    assert _lock_info(workdir)['host'] == HOST
  assert 0.9 < time.monotonic() - t < 10
  # Young and alive: its heartbeat advances while this run watches -> refused.
  info = _write_lock(workdir, host='elsewhere', heartbeat=time.time())
  stop = threading.Event()

  def beat():
    while not stop.wait(0.1):
      _write_lock(workdir, **dict(info, heartbeat=time.time()))

  beater = threading.Thread(target=beat, daemon=True)
  beater.start()
  try:
    with pytest.raises(lock.WorkdirLocked, match='heartbeat advanced.*host elsewhere'):
      with lock.hold(workdir, mode='train', heartbeat_s=0.2, stale_after_s=30.0):
        pass
  finally:
    stop.set()
    beater.join()
  assert _lock_info(workdir)['host'] == 'elsewhere'


def test_heartbeat_advances_while_held(tmp_path):
  workdir = str(tmp_path / 'run')
  with lock.hold(workdir, mode='train', heartbeat_s=0.1, stale_after_s=1.0):
    first = _lock_info(workdir)['heartbeat']
    deadline = time.time() + 20
    while _lock_info(workdir)['heartbeat'] == first:
      assert time.time() < deadline, 'no heartbeat within 20 s'
      time.sleep(0.05)


_TWO_PROCESS_WORKER = """
import os, sys, jax
jax.distributed.initialize(f'localhost:{sys.argv[1]}', num_processes=2, process_id=int(sys.argv[2]))
from ivd_jax import checkpoint
from ivd_jax.io import lock
workdir = sys.argv[3]
try:
  with lock.hold(workdir, mode='train', heartbeat_s=60, stale_after_s=600):
    held = os.path.exists(os.path.join(workdir, lock.LOCK_FILE))
    checkpoint.wait_for_all_processes('held')  # both inside before process 0 releases it
    print('held', jax.process_index(), held, flush=True)
except lock.WorkdirLocked as e:
  print('refused', jax.process_index(), e, flush=True)
jax.distributed.shutdown()
"""


def _two_processes(workdir):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, '-c', _TWO_PROCESS_WORKER, str(port), str(i),
                             workdir], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  return [next(l for l in out.splitlines() if l.startswith(('held', 'refused'))) for out in outs]


def test_two_process_job_holds_one_lock_and_fails_together(tmp_path):
  """jax.distributed on localhost: process 0 takes the lock for the job and tells process 1
  over the coordination service; a held lock refuses both processes with the same message."""
  workdir = str(tmp_path / 'run')
  assert _two_processes(workdir) == ['held 0 True', 'held 1 True']
  assert not os.path.exists(os.path.join(workdir, lock.LOCK_FILE))
  with lock.hold(workdir, mode='sample', heartbeat_s=60, stale_after_s=600):
    lines = _two_processes(workdir)
  assert [l.split()[:2] for l in lines] == [['refused', '0'], ['refused', '1']]
  assert lines[0].split(' ', 2)[2] == lines[1].split(' ', 2)[2]
  assert f'host {HOST}, pid {os.getpid()}, since ' in lines[1]


def test_second_trainer_on_the_command_line_exits_2(tmp_path):
  """A run holds the workdir: `python -m ivd_jax.main` train there stops before writing
  anything, one line on stderr naming the holder, exit code 2."""
  workdir = str(tmp_path / 'run')
  with lock.hold(workdir, mode='train', heartbeat_s=60, stale_after_s=600):
    result = subprocess.run(
        [sys.executable, '-m', 'ivd_jax.main', '--config=configs/uncond.py',
         f'--workdir={workdir}', *_flags(**{'train.num_steps': 4})],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert f'is in use by another run: host {HOST}, pid {os.getpid()}, since ' in lines[0]
    assert 'Fix: wait for that run to finish' in lines[0]
    assert sorted(os.listdir(workdir)) == [lock.LOCK_FILE]  # nothing else written


# ---------------------------------------------------------------------------------------------
# Checkpoint integrity (the Checkpointer on a small state).
# ---------------------------------------------------------------------------------------------
def _saved(tmp_path, steps=(1, 2, 3)):
  state = _state(_mesh((1, 1), 1))
  ck = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=5)
  for step in steps:
    ck.save(step, state.replace(step=jnp.int32(step)), data_state={'i': step}, config={})
  ck.wait()
  return ck, state


def _damaged(tmp_path, step):
  return sorted(n for n in os.listdir(tmp_path) if n.startswith(f'{step}.damaged-'))


def _rewrite_state(step_dir, edit):
  """Rewrites a saved state item with `edit` applied (bytes changed behind orbax's back)."""
  path = os.path.join(step_dir, 'state')
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.restore(path)
  tree = jax.tree.map(np.asarray, tree)
  edit(tree)
  checkpointer.save(path, tree, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()


def _set_first(leaf_dict, value):
  kernel = np.array(leaf_dict['dense']['kernel'])
  kernel.flat[0] = value
  leaf_dict['dense']['kernel'] = kernel


@pytest.mark.parametrize('fault', ['truncated', 'bit_flip', 'nan_ema', 'inf_opt_state',
                                   'nan_without_checksums', 'huge_finite_ema'])
def test_damaged_step_is_moved_aside_and_saved_again(tmp_path, fault, caplog):
  ck, state = _saved(tmp_path)
  step_dir = str(tmp_path / '3')
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, 'state'))
           for f in fs if '/d/' in os.path.join(d, f) + '/']
  largest = max(files, key=os.path.getsize)
  if fault == 'truncated':  # every data file (what this process wrote may still be cached)
    for name in files:
      with open(name, 'r+b') as f:
        f.truncate(os.path.getsize(name) // 2)
  elif fault == 'bit_flip':
    data = bytearray(open(largest, 'rb').read())
    for i in range(len(data) // 3, len(data) // 3 + 16):
      data[i] ^= 0xFF
    open(largest, 'wb').write(bytes(data))
  elif fault == 'nan_ema':
    _rewrite_state(step_dir, lambda t: _set_first(t['ema_params'], np.nan))
  elif fault == 'inf_opt_state':
    _rewrite_state(step_dir, lambda t: _set_first(t['opt_state'][0]['mu'], np.inf))
  elif fault == 'nan_without_checksums':  # a checkpoint of an older version: finiteness alone
    _rewrite_state(step_dir, lambda t: _set_first(t['params'], np.nan))
    for d, _, fs in os.walk(os.path.join(step_dir, 'integrity'), topdown=False):
      for f in fs:
        os.remove(os.path.join(d, f))
      os.rmdir(d)
  else:  # a flipped exponent bit: finite but wrong (3e38); only the checksum sees it
    _rewrite_state(step_dir, lambda t: _set_first(t['ema_params'], np.float32(3e38)))
  caplog.clear()
  restored, data_state, _, step = ck.restore(ckpt_lib.abstract_state_like(state))
  assert step == 2 and int(restored.step) == 2 and data_state == {'i': 2}
  aside = _damaged(tmp_path, 3)
  assert len(aside) == 1 and not os.path.exists(step_dir)
  warning = ' '.join(r.getMessage() for r in caplog.records if 'moved aside' in r.getMessage())
  assert aside[0] in warning, caplog.text
  expected = {'truncated': ['does not restore', 'unreadable metadata'],
              'bit_flip': ['does not restore', 'fails its checksum'],
              'nan_ema': ['NaN/inf in ema_params'], 'inf_opt_state': ['NaN/inf in opt_state'],
              'nan_without_checksums': ['NaN/inf in params'],
              'huge_finite_ema': ['fails its checksum in ema_params']}[fault]
  assert any(e in warning for e in expected), warning
  # The step can be saved again (Checkpointer.save skips only steps that exist).
  assert ck.all_steps() == [1, 2]
  ck.save(3, state.replace(step=jnp.int32(3)), data_state={'i': 3}, config={})
  ck.wait()
  assert ck.all_steps() == [1, 2, 3]
  again, data_state, _, step = ck.restore(ckpt_lib.abstract_state_like(state))
  ck.close()
  assert step == 3 and data_state == {'i': 3} and _damaged(tmp_path, 3) == aside
  for x, y in zip(jax.tree.leaves(again.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


_TWO_PROCESS_CHECKPOINT = """
import glob, json, os, sys, jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(f'localhost:{sys.argv[1]}', num_processes=2, process_id=int(sys.argv[2]))
import jax.numpy as jnp, ml_collections
from ivd_jax import checkpoint, parallel
from ivd_jax.training import state as state_lib
mesh = parallel.make_mesh(ml_collections.ConfigDict({'shape': (2, 4)}))
tx = state_lib.make_optimizer(ml_collections.ConfigDict(dict(
    lr=1e-3, warmup_steps=0, schedule='constant', b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)))
def make(step):
  params = {'dense': {'kernel': jnp.arange(256 * 128, dtype=jnp.float32).reshape(256, 128)},
            'bias': jnp.ones(64)}
  return state_lib.create_train_state(params, tx, jax.random.PRNGKey(0)).replace(
      step=jnp.int32(step))
shapes = jax.eval_shape(lambda: make(0))
shardings = parallel.tree_shardings(mesh, shapes)
ck = checkpoint.Checkpointer(sys.argv[3], every_steps=1)
for step in (1, 2):
  ck.save(step, jax.jit(lambda: make(step), out_shardings=shardings)(),
          data_state={'process': jax.process_index()}, config={})
ck.wait()
checkpoint.wait_for_all_processes('saved')
if jax.process_index() == 0:  # truncate step 2's array files
  for name in glob.glob(os.path.join(sys.argv[3], '2', 'state', '**', 'd', '*'), recursive=True):
    with open(name, 'r+b') as f:
      f.truncate(os.path.getsize(name) // 2)
checkpoint.wait_for_all_processes('damaged')
abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, shardings)
restored, data_state, _, step = ck.restore(abstract)
ck.close()
print('restored', json.dumps(dict(step=step, data=data_state, kernel_sum=float(
    jax.jit(jnp.sum)(restored.params['dense']['kernel'])), steps=ck.all_steps())), flush=True)
jax.distributed.shutdown()
"""


def test_two_process_checkpoint_falls_back_together(tmp_path):
  """2 processes x 4 devices (gloo): checksums of sharded arrays at save and restore, a
  truncated newest step moved aside once, both processes restoring the same older step."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(_env(), XLA_FLAGS='--xla_force_host_platform_device_count=4')
  procs = [subprocess.Popen([sys.executable, '-c', _TWO_PROCESS_CHECKPOINT, str(port), str(i),
                             str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
  results = [json.loads(next(l for l in o.splitlines() if l.startswith('restored '))[9:])
             for o in outs]
  kernel_sum = float(np.arange(256 * 128, dtype=np.float32).sum(dtype=np.float64))
  for i, r in enumerate(results):
    assert r['step'] == 1 and r['data'] == {'process': i} and r['steps'] == [1]
    assert r['kernel_sum'] == pytest.approx(kernel_sum, rel=1e-6)
  assert len(_damaged(tmp_path, 2)) == 1 and sorted(
      n for n in os.listdir(tmp_path) if n.isdigit()) == ['1']


def test_nonfinite_state_is_never_saved(tmp_path):
  ck, state = _saved(tmp_path, steps=(1,))
  bad = state.replace(step=jnp.int32(2), ema_params=jax.tree.map(
      lambda x: x.at[(0,) * x.ndim].set(jnp.nan), state.ema_params))
  with pytest.raises(ckpt_lib.NonFiniteState, match='NaN/inf in ema_params.*stays step 1'):
    ck.save(2, bad, data_state={}, config={})
  ck.wait()
  assert ck.all_steps() == [1] and sorted(os.listdir(tmp_path)) == ['1']
  ck.close()


def test_other_network_is_a_config_error_and_moves_nothing(tmp_path):
  ck, state = _saved(tmp_path, steps=(1, 2))
  other = jax.tree.map(lambda x: x, ckpt_lib.abstract_state_like(state))
  other = other.replace(params=dict(other.params, dense={'kernel': jax.ShapeDtypeStruct(
      (256, 64), jnp.float32, sharding=other.params['dense']['kernel'].sharding)}))
  with pytest.raises(errors.UserError, match=r'another network.*params/dense/kernel: saved '
                                             r'\(\(256, 128\), .float32.\), this config '
                                             r'\(\(256, 64\)'):
    ck.restore(other)
  assert sorted(os.listdir(tmp_path)) == ['1', '2']
  # Every step damaged: all moved aside, and a UserError that says so.
  for step in (1, 2):
    _rewrite_state(str(tmp_path / str(step)), lambda t: _set_first(t['params'], np.nan))
  with pytest.raises(errors.UserError, match='no checkpoint .* is good: step 2 holds NaN/inf'):
    ck.restore(ckpt_lib.abstract_state_like(state))
  assert ck.all_steps() == [] and len(_damaged(tmp_path, 1)) == len(_damaged(tmp_path, 2)) == 1
  ck.close()
  # Readers (sampling's load_params) skip a damaged step and never move anything.
  ck, state = _saved(tmp_path / 'r', steps=(1, 2))
  ck.close()
  _rewrite_state(str(tmp_path / 'r' / '2'), lambda t: _set_first(t['ema_params'], np.inf))
  params, _ = ckpt_lib.load_params(str(tmp_path / 'r'))
  np.testing.assert_array_equal(np.asarray(params['dense']['kernel']),
                                np.asarray(state.ema_params['dense']['kernel']))
  assert sorted(os.listdir(tmp_path / 'r')) == ['1', '2']


# ---------------------------------------------------------------------------------------------
# Training: concurrent trainers, damaged checkpoints, a missing input-iterator state.
# ---------------------------------------------------------------------------------------------
def _train(workdir, num_steps, **overrides):
  config = small_config(False, **{'train.num_steps': num_steps, 'data.dir': prepared_data(),
                                  **overrides})
  return train.train_and_evaluate(config, workdir)


def _steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())


def _assert_same_run(a, b):
  for ema in (False, True):
    pa, _ = ckpt_lib.load_params(a, ema=ema)
    pb, _ = ckpt_lib.load_params(b, ema=ema)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ma, mb = (_metrics(w) for w in (a, b))
  assert sorted(ma) == sorted(mb)
  assert all(ma[s]['loss'] == mb[s]['loss'] for s in ma)


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {m['step']: m for m in map(json.loads, f)}


def test_second_trainer_is_refused_while_the_first_runs_then_takes_over(tmp_path):
  """Two trainers on one workdir: the second is refused naming the first (which keeps
  running); after kill -9 of the first, its stale lock is taken over and training resumes."""
  workdir = str(tmp_path / 'run')
  first = subprocess.Popen(
      [sys.executable, '-m', 'ivd_jax.main', '--config=configs/uncond.py', f'--workdir={workdir}',
       *_flags(**{'train.num_steps': 1000, 'data.dir': prepared_data()})],
      cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 300
    while not os.path.isdir(os.path.join(workdir, 'checkpoints', '4')):
      if first.poll() is not None:
        pytest.fail(f'training exited early: {first.stderr.read().decode()[-3000:]}')
      assert time.time() < deadline, 'no checkpoint within 300 s'
      time.sleep(0.05)
    with pytest.raises(lock.WorkdirLocked) as e:
      _train(workdir, 8)
    assert f'host {HOST}, pid {first.pid}, since ' in str(e.value)
    assert first.poll() is None  # the first run goes on
  finally:
    first.kill()
    first.wait()
  resumed = _steps(workdir)[-1]
  result = _train(workdir, resumed + 2)
  assert result['step'] == resumed + 2 and _steps(workdir)[-1] == resumed + 2
  assert not os.path.exists(os.path.join(workdir, lock.LOCK_FILE))


def test_damaged_latest_step_is_retrained_and_saved_again(tmp_path):
  """NaN/inf written into the latest step, then a truncated file there: each time the run moves
  it aside, falls back to step 4, retrains and saves step 8 again; the final parameters and the
  losses are bitwise those of an uninterrupted run. (The truncated step is resumed by a new
  process: the one that wrote a file may still hold its contents in TensorStore's cache.)"""
  straight, workdir = str(tmp_path / 'straight'), str(tmp_path / 'run')
  _train(straight, 8)
  _train(workdir, 8)
  assert _steps(workdir) == [4, 8]
  step8 = os.path.join(workdir, 'checkpoints', '8')

  def nan_ema(tree):
    out = tree['ema_params']['out_conv']
    out['kernel'] = np.full_like(out['kernel'], np.nan)

  _rewrite_state(step8, nan_ema)
  assert _train(workdir, 8)['step'] == 8
  assert _steps(workdir) == [4, 8] and len(_damaged(os.path.join(workdir, 'checkpoints'), 8)) == 1
  _assert_same_run(straight, workdir)
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step8, 'state'))
           for f in fs if f'{os.sep}d{os.sep}' in d + os.sep]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)
  rerun = subprocess.run(
      [sys.executable, '-m', 'ivd_jax.main', '--config=configs/uncond.py', f'--workdir={workdir}',
       *_flags(**{'train.num_steps': 8, 'data.dir': prepared_data()})],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  aside = _damaged(os.path.join(workdir, 'checkpoints'), 8)
  assert _steps(workdir) == [4, 8] and len(aside) == 2
  assert any(f'moved aside to {os.path.join(workdir, "checkpoints", a)}' in rerun.stderr
             for a in aside), rerun.stderr[-3000:]
  _assert_same_run(straight, workdir)


def test_missing_input_state_is_an_error_unless_opted_in(tmp_path):
  workdir = str(tmp_path / 'run')
  _train(workdir, 4)
  data_file = os.path.join(workdir, 'checkpoints', '4', 'data', 'process_0-of-1.json')
  os.remove(data_file)
  with pytest.raises(errors.ConfigError) as e:
    _train(workdir, 6)
  assert e.value.field == 'checkpoint.allow_fresh_data_order'
  assert 'lacks the input-iterator state of process [0]' in str(e.value)
  assert 'process count' not in e.value.problem  # the old warning blamed the process count
  assert _steps(workdir) == [4]  # nothing moved, nothing trained
  result = _train(workdir, 6, **{'checkpoint.allow_fresh_data_order': True})
  assert result['step'] == 6 and _steps(workdir) == [4, 6]


def test_disk_full_is_one_line_and_the_run_resumes(tmp_path):
  """The workdir on a small file system (a tmpfs in a private mount namespace), filled up as
  soon as step 4's checkpoint is complete: writing step 8 fails. One line on stderr, exit 2, no
  traceback; step 4 is intact, and the same run on a disk with space resumes from it."""
  small, copy = tmp_path / 'small', tmp_path / 'copy'
  small.mkdir()
  cmd = [sys.executable, '-m', 'ivd_jax.main', '--config=configs/uncond.py',
         f'--workdir={small}/run', *_flags(**{'train.num_steps': 8, 'data.dir': prepared_data()})]
  script = (f'mount -t tmpfs -o size=64m tmpfs {small} || exit 99; {shlex.join(cmd)} & pid=$!; '
            f'while [ ! -d {small}/run/checkpoints/4 ] && kill -0 $pid 2>/dev/null; do '
            'sleep 0.02; done; '
            f'dd if=/dev/zero of={small}/filler bs=1M 2>/dev/null; '  # until the disk is full
            f'wait $pid; rc=$?; cp -a {small}/run {copy}; exit $rc')
  namespace = ['unshare', '-m'] if os.geteuid() == 0 else ['unshare', '-rm']
  result = subprocess.run([*namespace, 'sh', '-c', script], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=900)
  if result.returncode == 99 or (result.returncode == 1 and 'unshare' in result.stderr):
    pytest.skip(f'no private mount namespace for a small file system: {result.stderr[-300:]}')
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert f'the disk holding {small}/run is full (No space left on device)' in lines[0]
  assert 'rerun the same command to resume' in lines[0]
  assert _steps(str(copy)) == [4]
  result = _train(str(copy), 8)
  assert result['step'] == 8 and _steps(str(copy)) == [4, 8]
