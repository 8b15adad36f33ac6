"""The launchers: distributed detection, a simulated TPU pod, SLURM and local exit codes and logs.

The pod: tests/fake_gcloud.py stands in for gcloud (first on PATH), records every call and runs
`tpu-vm ssh --worker=all` commands as 2 local processes x 4 CPU devices that find each other
through explicit coordinates on localhost. launch/tpu_pod.sh runs unchanged against it.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import pod_config  # pylint: disable=g-bad-import-order
from ivd_jax import checkpoint as ckpt_lib
from ivd_jax import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU_POD = str(ROOT / 'launch' / 'tpu_pod.sh')
GPU_SLURM = str(ROOT / 'launch' / 'gpu_slurm.sh')
LOCAL = str(ROOT / 'launch' / 'local.sh')
NUM_STEPS = pod_config.SMALL['train.num_steps']


# =============================================================================================
# parallel.detect_cluster: one case per rule, environment only (nothing is initialised).
# =============================================================================================
CLEAN = {}
DIST = {'coordinator_address': '', 'num_processes': 1, 'process_id': 0, 'local_device_ids': (),
        'cpu_collectives': '', 'enabled': False}


@pytest.mark.parametrize('dist, env, rule, kwargs', [
    ({}, CLEAN, None, {}),
    (DIST, CLEAN, None, {}),
    ({**DIST, 'coordinator_address': 'h:1234', 'num_processes': 2, 'process_id': 1,
      'local_device_ids': (3,)}, {'IVD_JAX_DISTRIBUTED': '0'}, 'config',
     dict(coordinator_address='h:1234', num_processes=2, process_id=1, local_device_ids=[3])),
    (DIST, {'JAX_COORDINATOR_ADDRESS': 'localhost:99', 'JAX_NUM_PROCESSES': '2',
            'JAX_PROCESS_ID': '1'}, 'env',
     dict(coordinator_address='localhost:99', num_processes=2, process_id=1)),
    (DIST, {'JAX_COORDINATOR_ADDRESS': 'localhost:99', 'JAX_NUM_PROCESSES': '1'}, None, {}),
    ({**DIST, 'enabled': True}, CLEAN, 'requested', {}),
    (DIST, {'IVD_JAX_DISTRIBUTED': '1'}, 'requested', {}),
    (DIST, {'TPU_WORKER_HOSTNAMES': 'w-0,w-1,w-2,w-3', 'TPU_WORKER_ID': '2'}, 'gke-tpu', {}),
    (DIST, {'TPU_PROCESS_ADDRESSES': 'a:8476,b:8476'}, 'gke-tpu', {}),
    (DIST, {'TPU_WORKER_HOSTNAMES': 'localhost', 'TPU_WORKER_ID': '0'}, None, {}),
    (DIST, {'TPU_PROCESS_BOUNDS': '2,2,8', 'TPU_CHIPS_PER_PROCESS_BOUNDS': '2,2,1'},
     'cloud-tpu', {}),
    (DIST, {'TPU_PROCESS_BOUNDS': '1,1,1', 'TPU_ACCELERATOR_TYPE': 'v4-8'}, None, {}),
    (DIST, {'TPU_HOST_BOUNDS': '1,1,2'}, 'cloud-tpu', {}),
    (DIST, {'MEGASCALE_NUM_SLICES': '2'}, 'cloud-tpu', {}),
    (DIST, {'TPU_ACCELERATOR_TYPE': 'v4-32', 'TPU_WORKER_ID': '1'}, 'cloud-tpu', {}),
    (DIST, {'TPU_ACCELERATOR_TYPE': 'v5litepod-16'}, 'cloud-tpu', {}),
    (DIST, {'TPU_ACCELERATOR_TYPE': 'v5litepod-8'}, None, {}),
    (DIST, {'TPU_ACCELERATOR_TYPE': 'v4-32', 'IVD_JAX_DISTRIBUTED': '0'}, None, {}),
    (DIST, {'SLURM_JOB_ID': '77', 'SLURM_STEP_ID': '0', 'SLURM_STEP_NODELIST': 'n[1-2]',
            'SLURM_NTASKS': '16', 'SLURM_PROCID': '9', 'SLURM_LOCALID': '1'}, 'slurm', {}),
    # The sbatch batch shell (no job step) and one-task steps are single-process.
    (DIST, {'SLURM_JOB_ID': '77', 'SLURM_STEP_NODELIST': 'n1', 'SLURM_NTASKS': '16',
            'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}, None, {}),
    (DIST, {'SLURM_JOB_ID': '77', 'SLURM_STEP_ID': '0', 'SLURM_STEP_NODELIST': 'n1',
            'SLURM_NTASKS': '1', 'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}, None, {}),
])
def test_detect_cluster(dist, env, rule, kwargs):
  assert parallel.detect_cluster(dist, env) == (rule, kwargs)


def test_maybe_initialize_calls_jax_with_the_detected_arguments(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  for var in list(os.environ):
    if var.startswith(('TPU_', 'SLURM_', 'MEGASCALE_', 'JAX_COORDINATOR', 'JAX_NUM_PROC',
                       'JAX_PROCESS', 'IVD_JAX_DISTRIBUTED')):
      monkeypatch.delenv(var)
  config = {'distributed': dict(DIST)}
  assert parallel.maybe_initialize(config) is False and calls == []
  monkeypatch.setenv('TPU_ACCELERATOR_TYPE', 'v4-32')  # a Cloud TPU VM worker of 4 hosts
  assert parallel.maybe_initialize(config) is True and calls == [{}]
  monkeypatch.setenv('IVD_JAX_DISTRIBUTED', '0')
  assert parallel.maybe_initialize(config) is False and len(calls) == 1
  for k, v in {'JAX_COORDINATOR_ADDRESS': 'localhost:5', 'JAX_NUM_PROCESSES': '2',
               'JAX_PROCESS_ID': '1'}.items():
    monkeypatch.setenv(k, v)
  assert parallel.maybe_initialize(config) is True
  assert calls[-1] == dict(coordinator_address='localhost:5', num_processes=2, process_id=1)


# =============================================================================================
# The simulated pod.
# =============================================================================================
def _pod_env(tmp: pathlib.Path) -> dict[str, str]:
  bin_dir = tmp / 'bin'
  bin_dir.mkdir()
  gcloud = bin_dir / 'gcloud'
  gcloud.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT / "tests" / "fake_gcloud.py"} "$@"\n')
  gcloud.chmod(0o755)
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('XLA_', 'JAX_', 'TPU_', 'SLURM_'))}
  env.update(PATH=f'{bin_dir}:{os.environ["PATH"]}', FAKE_POD_DIR=str(tmp / 'pod'),
             FAKE_GCLOUD_LOG=str(tmp / 'gcloud_calls.jsonl'), FAKE_GCS_DIR=str(tmp / 'gcs'),
             FAKE_POD_WORKERS='2', FAKE_POD_DEVICES='4',
             TPU_NAME='ivd-test', ZONE='us-central2-b', PROJECT='my-project',
             ACCELERATOR_TYPE='v4-16', INSTALL='0', REMOTE_PYTHON=sys.executable)
  return env


def _pod(env, *args, timeout=120, stderr=False, **extra):
  out = subprocess.run([TPU_POD, *args], env={**env, **extra}, capture_output=True, text=True,
                       timeout=timeout, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stderr if stderr else out.stdout


def _calls(env) -> list[list[str]]:
  """The local gcloud calls recorded since the last look (workers' own calls separately)."""
  path = pathlib.Path(env['FAKE_GCLOUD_LOG'])
  if not path.exists():
    return [], []
  calls = [json.loads(line) for line in path.read_text().splitlines()]
  path.unlink()
  return [c['argv'] for c in calls if c['worker'] is None], [c for c in calls if c['worker']]


def _home(env, worker: int) -> pathlib.Path:
  return pathlib.Path(env['FAKE_POD_DIR']) / 'ivd-test' / f'worker_{worker}' / 'ivd_jax'


def _wait_for_exit(env, timeout=300) -> list[int]:
  end = time.time() + timeout
  files = [_home(env, w) / 'logs' / 'run.exit' for w in range(2)]
  while not all(f.exists() for f in files):
    assert time.time() < end, 'the pod run did not finish: ' + _logs(env)
    time.sleep(0.5)
  return [int(f.read_text()) for f in files]


def _logs(env) -> str:
  return '\n'.join(f'--- worker {w}\n' + (_home(env, w) / 'logs' / 'latest.log').read_text()[-3000:]
                   for w in range(2) if (_home(env, w) / 'logs' / 'latest.log').exists())


def _log(env, worker: int) -> str:
  return (_home(env, worker) / 'logs' / 'latest.log').read_text()


def _steps(workdir) -> list[int]:
  return [json.loads(l)['step'] for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _tpu(*args):
  return ['compute', 'tpus', 'tpu-vm', *args]


COMMON = ['--zone=us-central2-b', '--project=my-project']


def test_simulated_tpu_pod(tmp_path):
  env = _pod_env(tmp_path)
  t0 = time.time()

  # ---- create (describe first: an existing slice is reused)
  _pod(env, 'create')
  assert 'reusing ivd-test' in _pod(env, 'create')
  local, _ = _calls(env)
  assert local == [_tpu('describe', 'ivd-test', *COMMON, '--format=value(state)'),
                   _tpu('create', 'ivd-test', *COMMON, '--accelerator-type=v4-16',
                        '--version=tpu-ubuntu2204-base'),
                   _tpu('describe', 'ivd-test', *COMMON, '--format=value(state)')]

  # ---- setup: the working tree on every worker; INSTALL=0 reuses this venv (REMOTE_PYTHON)
  out = _pod(env, 'setup')
  for w in range(2):
    assert f'{_home(env, w)}/ivd_jax/__init__.py' in out
    assert (_home(env, w) / 'launch' / 'tpu_pod.sh').is_file()
    assert (_home(env, w) / 'tests' / 'pod_config.py').is_file()
  local, _ = _calls(env)
  assert [c[:4] for c in local] == [_tpu('scp'), _tpu('ssh')]
  assert local[0][5:] == ['ivd-test:ivd_jax.tar.gz', *COMMON, '--worker=all']
  assert local[1][4:7] == ['ivd-test', *COMMON] and local[1][7] == '--worker=all'
  assert local[1][8].startswith('--command=') and len(local[1]) == 9

  # ---- run without overrides: G_u on 2 hosts x 4 devices, the dataset prepared on the way
  run_a = tmp_path / 'run_a'
  out = _pod(env, 'run', 'tests/pod_config.py', str(run_a))
  assert 'worker 0: started' in out and 'worker 1: started' in out
  local, _ = _calls(env)
  assert len(local) == 1 and local[0][:8] == _tpu('ssh', 'ivd-test', *COMMON, '--worker=all')
  assert "''" not in local[0][8]  # no empty argument
  assert _wait_for_exit(env) == [0, 0], _logs(env)
  t_a = time.time() - t0
  for w in range(2):
    log = _log(env, w)
    assert f'jax.distributed (env): process {w} of 2, 4 local / 8 global devices' in log, log
    assert "mesh {'data': 8, 'fsdp': 1} over 8 devices, 2 processes" in log
  assert _steps(run_a) == list(range(1, NUM_STEPS + 1))
  assert max(int(s) for s in os.listdir(run_a / 'checkpoints') if s.isdigit()) == NUM_STEPS

  # ---- run with overrides on data staged from a bucket; stop mid-run; run again: resumes
  shutil.copytree(run_a / 'data', tmp_path / 'gcs' / 'bucket' / 'data' / 'pod16')
  run_b = tmp_path / 'run_b'
  # The same settings as flags on the packaged tiny preset (tuples, parentheses, a space).
  args = ['run', 'configs/uncond.py:tiny', str(run_b),
          *[f'--config.{k}={v}' for k, v in pod_config.SMALL.items()
            if k != 'checkpoint.every_steps'],
          '--config.mesh.shape=(-1, 1)', '--config.data.dir=staged/pod16',
          '--config.checkpoint.every_steps=100']
  stage = dict(STAGE_DATA='gs://bucket/data/pod16', STAGE_DIR='staged')
  out = _pod(env, *args, **stage)
  assert 'staged gs://bucket/data/pod16 in staged/pod16' in out
  local, remote = _calls(env)  # staging on every worker first, then the run
  assert [c[:8] for c in local] == [_tpu('ssh', 'ivd-test', *COMMON, '--worker=all')] * 2
  assert 'gcloud storage rsync' in local[0][8] and 'setsid nohup' in local[1][8]
  assert sorted(c['worker'] for c in remote) == ['0', '1']
  assert all(c['argv'] == ['storage', 'rsync', '--recursive', 'gs://bucket/data/pod16',
                           'staged/pod16'] for c in remote)
  end = time.time() + 240
  while not ((run_b / 'metrics.jsonl').exists() and _steps(run_b)):  # step 1 is logged
    assert time.time() < end and not (_home(env, 0) / 'logs' / 'run.exit').exists(), _logs(env)
    time.sleep(0.2)
  out = _pod(env, 'stop')
  assert out.count('SIGTERM to') == 2 and out.count('exited 0') == 2, out
  saved = [re.findall(r'saving step (\d+) and exiting', _log(env, w)) for w in range(2)]
  assert saved[0] == saved[1] and len(saved[0]) == 1, _logs(env)  # one step, the same on both
  stop_step = int(saved[0][0])
  assert 1 <= stop_step < NUM_STEPS
  assert sorted(os.listdir(run_b / 'checkpoints')) == [str(stop_step)]
  assert _steps(run_b) == list(range(1, stop_step + 1))
  status = _pod(env, 'status')
  assert 'worker 0: exited 0' in status and 'worker 1: exited 0' in status

  _pod(env, *args, **stage)
  assert _wait_for_exit(env) == [0, 0], _logs(env)
  assert f'resumed from step {stop_step}' in _log(env, 0)
  assert _steps(run_b) == list(range(1, NUM_STEPS + 1))
  # Bitwise the uninterrupted run: parameters, EMA and every logged loss.
  for ema in (False, True):
    params_a, _ = ckpt_lib.load_params(str(run_a), ema=ema)
    params_b, _ = ckpt_lib.load_params(str(run_b), ema=ema)
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  losses = [[json.loads(l)['loss'] for l in (r / 'metrics.jsonl').read_text().splitlines()]
            for r in (run_a, run_b)]
  assert losses[0] == losses[1]

  # ---- logs, delete
  out = _pod(env, 'logs', FOLLOW='0', LINES='3')
  assert out.count('[worker 0] ') == 3 and f'finished at step {NUM_STEPS}' in out
  out = _pod(env, 'logs', 'all', FOLLOW='0', LINES='1')
  assert '[worker 0] ' in out and '[worker 1] ' in out
  _pod(env, 'delete')
  local, _ = _calls(env)
  ssh = _tpu('ssh', 'ivd-test', *COMMON)
  assert [c[:8] for c in local] == [
      ssh + ['--worker=all'],  # stop
      ssh + ['--worker=all'],  # status
      ssh + ['--worker=all'],  # run (resume): staging
      ssh + ['--worker=all'],  # run (resume): start
      ssh + ['--worker=0'],  # logs
      ssh + ['--worker=all'],  # logs all
      _tpu('delete', 'ivd-test', *COMMON, '--quiet')]
  assert 'kill -TERM' in local[0][8] and 'tail -n 3 ' in local[4][8]
  print(f'pod: first run {t_a:.0f} s, all {time.time() - t0:.0f} s')


def test_tpu_pod_usage_and_dry_run(tmp_path):
  env = _pod_env(tmp_path)
  out = subprocess.run([TPU_POD, 'run', 'configs/uncond.py'], env=env, capture_output=True,
                       text=True, check=False)
  assert out.returncode == 2 and 'usage:' in out.stderr
  no_name = {k: v for k, v in env.items() if k != 'TPU_NAME'}
  out = subprocess.run([TPU_POD], env=no_name, capture_output=True, text=True, check=False)
  assert out.returncode == 2 and 'TPU_NAME' in out.stdout and 'delete' in out.stdout
  out = _pod(env, 'create', DRY_RUN='1', SPOT='1', stderr=True)
  assert out.splitlines() == [
      'gcloud compute tpus tpu-vm describe ivd-test --zone=us-central2-b --project=my-project '
      '--format=value\\(state\\) ',
      'gcloud compute tpus tpu-vm create ivd-test --zone=us-central2-b --project=my-project '
      '--accelerator-type=v4-16 --version=tpu-ubuntu2204-base --spot ']
  # The real setup: uv's Python 3.11 venv and the package with its tpu and gcs extras.
  out = _pod(env, 'setup', DRY_RUN='1', INSTALL='1', stderr=True)
  assert 'uv venv -q --seed --python 3.11 .venv' in out
  assert re.search(r'uv pip install -q --python .venv/bin/python -e [.\\]+\[tpu[\\]*,gcs', out)
  assert _calls(env) == ([], [])


# =============================================================================================
# SLURM and local: exit codes and where the logs go.
# =============================================================================================
FAKE_SRUN = '''#!/usr/bin/env bash
# srun: records its arguments, runs the command once as task 0 into --output (%t -> 0).
echo "$*" >> "$FAKE_SLURM_LOG"
out=""
while [[ "$1" == --* ]]; do
  case "$1" in --output=*) out=${1#--output=}; out=${out//%t/0} ;; esac
  shift
done
trap 'echo "srun: TERM" >> "$FAKE_SLURM_LOG"; kill -TERM $child; wait $child; exit $?' TERM
SLURM_STEP_ID=0 SLURM_PROCID=0 "$@" > "$out" 2>&1 &
child=$!
wait $child
'''
FAKE_SBATCH = '''#!/usr/bin/env bash
# sbatch --wait SCRIPT ARGS: runs the batch script here with a job's variables.
echo "sbatch $*" >> "$FAKE_SLURM_LOG"
[ "$1" = --wait ] && shift
SLURM_JOB_ID=4242 SLURM_JOB_NAME=ivd_jax SLURM_SUBMIT_DIR=$PWD bash "$@"
'''
# The training command: exits with $FAKE_EXIT, or 0 after SIGTERM ("saved and exited").
FAKE_PYTHON = '''#!/usr/bin/env bash
echo "python $* task=$SLURM_PROCID process=${JAX_PROCESS_ID:-} of ${JAX_NUM_PROCESSES:-}"
trap 'echo saved; exit 0' TERM
if [ -n "${FAKE_SLEEP:-}" ]; then sleep "$FAKE_SLEEP" & wait $!; fi
exit "${FAKE_EXIT:-0}"
'''


def _slurm_env(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name, text in (('srun', FAKE_SRUN), ('sbatch', FAKE_SBATCH), ('python', FAKE_PYTHON)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  return dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', PYTHON=str(bin_dir / 'python'),
              FAKE_SLURM_LOG=str(tmp_path / 'slurm.log'))


def test_gpu_slurm_exit_status_and_bucket_logs(tmp_path):
  env = _slurm_env(tmp_path)
  submit = tmp_path / 'submit'
  submit.mkdir()
  # A failing job step: sbatch --wait returns the step's own status (3), not 127 (which a
  # second `wait` gives where bash forgets waited-for pids: POSIX mode, some bash versions).
  for posix in ({}, {'POSIXLY_CORRECT': '1'}):
    out = subprocess.run(['sbatch', '--wait', GPU_SLURM, 'configs/uncond.py',
                          str(tmp_path / 'w'), '--config.train.num_steps=3'],
                         env={**env, 'FAKE_EXIT': '3', **posix}, cwd=submit, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 3, out.stdout + out.stderr
  log = (tmp_path / 'w' / 'logs' / '0.log').read_text()
  assert 'python -m ivd_jax.main --config=configs/uncond.py' in log
  assert '--config.train.num_steps=3 task=0' in log
  # A gs:// workdir: logs in ./logs/<job name>_<job id> of the submit folder; nothing made
  # under a folder named gs:.
  out = subprocess.run(['sbatch', '--wait', GPU_SLURM, 'configs/uncond.py', 'gs://b/runs/gu'],
                       env=env, cwd=submit, capture_output=True, text=True, timeout=60,
                       check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  assert (submit / 'logs' / 'ivd_jax_4242' / '0.log').is_file()
  assert f'--output={submit}/logs/ivd_jax_4242/%t.log' in (tmp_path / 'slurm.log').read_text()
  assert not (submit / 'gs:').exists() and not (ROOT / 'gs:').exists()
  # SIGTERM to the batch shell (pre-emption) reaches the step, and the script returns the
  # step's status after it saved (0), not the signal's 143.
  proc = subprocess.Popen(['bash', GPU_SLURM, 'configs/uncond.py', str(tmp_path / 'w2')],
                          env={**env, 'FAKE_SLEEP': '30', 'SLURM_JOB_ID': '1'}, cwd=submit,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  log = tmp_path / 'w2' / 'logs' / '0.log'
  end = time.time() + 20
  while not (log.exists() and 'python' in log.read_text()):
    assert time.time() < end
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=20) == 0, proc.stdout.read()
  assert 'saved' in log.read_text()
  assert 'srun: TERM' in (tmp_path / 'slurm.log').read_text()


def test_local_launcher_coordinates_exit_status_and_bucket_logs(tmp_path):
  env = {**_slurm_env(tmp_path), 'NUM_PROCESSES': '2', 'FAKE_EXIT': '5',
         'LOG_DIR': str(tmp_path / 'logs')}
  out = subprocess.run([LOCAL, 'configs/uncond.py', 'gs://b/runs/local', '--config.x=1'],
                       env=env, capture_output=True, text=True, timeout=60, check=False)
  assert out.returncode == 5, out.stdout + out.stderr
  for i in range(2):
    log = (tmp_path / 'logs' / f'process_{i}.log').read_text()
    assert f'--workdir=gs://b/runs/local --config.x=1 task= process={i} of 2' in log
  assert not (ROOT / 'gs:').exists()
