"""Real 2-process training runs on localhost: jax.distributed with gloo CPU collectives.

Every run is 2 processes x 4 CPU devices on a (4, 2) mesh: 'data' across the processes, 'fsdp'
inside each. One uninterrupted run of NUM_STEPS is shared by the tests; the pre-emption tests
signal ONE process of another run and check that both stop at the same step, save it, and that the
resumed run ends bitwise equal to the uninterrupted one.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from test_training import ROOT, _env, _flags, prepared_data  # pylint: disable=g-bad-import-order
from ivd_jax import checkpoint as ckpt_lib

NUM_STEPS = 12
# A hang (one process stuck in a collective the other never joins) fails the test after this.
# Far above a quiet run (about 2 minutes), since the other test worker shares the cores.
RUN_TIMEOUT_S = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_processes(args: list[str], workdir: str, *, devices: int = 4, num: int = 2
                    ) -> list[subprocess.Popen]:
  """`python -m ivd_jax.main ARGS` as NUM processes of one jax.distributed run (gloo).

  Each process has DEVICES CPU devices; its output goes to WORKDIR/logs/process_<i>.log.
  """
  os.makedirs(os.path.join(workdir, 'logs'), exist_ok=True)
  port = _free_port()
  env = _env()
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  procs = []
  for pid in range(num):
    cmd = [sys.executable, '-m', 'ivd_jax.main', *args,
           f'--config.distributed.coordinator_address=localhost:{port}',
           f'--config.distributed.num_processes={num}', f'--config.distributed.process_id={pid}',
           '--config.distributed.cpu_collectives=gloo']
    with open(_log_path(workdir, pid), 'ab') as log:
      procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT))
  return procs


def _launch(workdir: str, *, num_steps: int, extra: tuple[str, ...] = ()
            ) -> list[subprocess.Popen]:
  """Both processes of a training run of the small test UNet."""
  return start_processes(
      ['--config=configs/uncond.py', f'--workdir={workdir}',
       *_flags(**{'train.num_steps': num_steps, 'checkpoint.every_steps': 4,
                  'data.dir': prepared_data(), 'mesh.shape': (4, 2)}), *extra], workdir)


def _log_path(workdir: str, pid: int) -> str:
  return os.path.join(workdir, 'logs', f'process_{pid}.log')


def _log(workdir: str, pid: int) -> str:
  with open(_log_path(workdir, pid), errors='replace') as f:
    return f.read()


def wait_processes(procs: list[subprocess.Popen], workdir: str,
                   timeout: float = RUN_TIMEOUT_S) -> None:
  """Both processes exit 0 within `timeout` seconds; otherwise both are killed and the test fails."""
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      for q in procs:
        q.wait()
      pytest.fail(f'processes still running after {timeout} s (a hang): '
                  + '\n'.join(_log(workdir, i)[-3000:] for i in range(2)))
  for i, p in enumerate(procs):
    assert p.returncode == 0, _log(workdir, i)[-4000:]


def _count_lines(path: str) -> int:
  with open(path) as f:
    return len(f.readlines())


def _metrics(workdir: str) -> dict[int, dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {m['step']: m for m in map(json.loads, f)}


def _saved_steps(workdir: str) -> list[int]:
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())


@pytest.fixture(scope='module')
def straight(tmp_path_factory) -> str:
  """The uninterrupted 2-process run of NUM_STEPS steps."""
  workdir = str(tmp_path_factory.mktemp('straight') / 'run')
  wait_processes(_launch(workdir, num_steps=NUM_STEPS), workdir)
  return workdir


def test_two_process_run_trains_and_checkpoints(straight):
  # Process 0 alone writes logs: one line per step.
  lines = _metrics(straight)
  assert sorted(lines) == list(range(1, NUM_STEPS + 1))
  assert all(np.isfinite(m['loss']) and 0.2 < m['loss'] < 2.0 for m in lines.values())
  # Orbax coordinated the checkpoint; each process saved its own input iterator state.
  step_dir = os.path.join(straight, 'checkpoints', str(NUM_STEPS))
  assert sorted(os.listdir(os.path.join(step_dir, 'data'))) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']
  states = [json.load(open(os.path.join(step_dir, 'data', f'process_{i}-of-2.json')))
            for i in range(2)]
  assert [s['process_index'] for s in states] == [0, 1]
  assert all(s['global_batch_size'] == 8 for s in states)
  # The sharded checkpoint restores in this single process (8 devices).
  params, saved_config = ckpt_lib.load_params(straight, ema=False)
  assert saved_config.mesh.shape == [4, 2]
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


@pytest.mark.parametrize('sig,target', [('SIGTERM', 1), ('SIGTERM', 0), ('SIGINT', 1)])
def test_signal_to_one_process_stops_both_at_one_step(tmp_path, straight, sig, target):
  """SIGTERM (JAX's preemption service) or Ctrl-C (the flag all-gather) on ONE host.

  Both processes save the same step and exit (no hang in a collective); after SIGTERM, rerunning
  the same command resumes to a result bitwise equal to the uninterrupted run.
  """
  workdir = str(tmp_path / 'run')
  # Ctrl-C is agreed every stop_check_every_steps steps (2 here, so it lands before NUM_STEPS).
  extra = ('--config.distributed.stop_check_every_steps=2',)
  procs = _launch(workdir, num_steps=NUM_STEPS, extra=extra)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + RUN_TIMEOUT_S
  while not (os.path.exists(metrics_path) and _count_lines(metrics_path) >= 2):
    if any(p.poll() is not None for p in procs) or time.time() > deadline:
      wait_processes(procs, workdir, timeout=1)
      pytest.fail('training ended before two steps were logged: ' + _log(workdir, 0)[-3000:])
    time.sleep(0.05)
  procs[target].send_signal(getattr(signal, sig))
  wait_processes(procs, workdir)

  # Both processes stopped after the same step and saved it.
  saved_at = []
  for i in range(2):
    found = re.findall(r'(\w+): saving step (\d+) and exiting', _log(workdir, i))
    assert len(found) == 1, _log(workdir, i)[-3000:]
    saved_at.append(int(found[0][1]))
    assert found[0][0] == ('preemption' if sig == 'SIGTERM' else sig)
  assert saved_at[0] == saved_at[1], saved_at
  stop_step = saved_at[0]
  assert 2 <= stop_step < NUM_STEPS
  assert _saved_steps(workdir)[-1] == stop_step
  assert max(_metrics(workdir)) == stop_step

  if sig != 'SIGTERM':
    return  # resuming is the same whatever stopped the run
  # The same command again resumes from that step and ends where the uninterrupted run did.
  wait_processes(_launch(workdir, num_steps=NUM_STEPS, extra=extra), workdir)
  assert _saved_steps(workdir)[-1] == NUM_STEPS
  a, b = _metrics(straight), _metrics(workdir)
  assert sorted(b) == list(range(1, NUM_STEPS + 1))
  for step in a:
    assert a[step]['loss'] == b[step]['loss'], step
  for ema in (False, True):
    pa, _ = ckpt_lib.load_params(straight, ema=ema)
    pb, _ = ckpt_lib.load_params(workdir, ema=ema)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
