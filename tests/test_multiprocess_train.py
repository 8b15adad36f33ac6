"""A real 2-process training run on localhost: jax.distributed with gloo CPU collectives."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from test_training import ROOT, _env, _flags, prepared_data  # pylint: disable=g-bad-import-order
from ivd_jax import checkpoint as ckpt_lib


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_process_run_trains_and_checkpoints(tmp_path):
  data = prepared_data()
  workdir = str(tmp_path / 'run')
  port = _free_port()
  env = _env()
  # 2 CPU devices per process: a (2, 2) mesh puts 'data' across the processes and 'fsdp' inside.
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  procs = []
  for pid in range(2):
    cmd = [sys.executable, '-m', 'ivd_jax.main', '--config=configs/uncond.py',
           f'--workdir={workdir}',
           *_flags(**{'train.num_steps': 3, 'checkpoint.every_steps': 3, 'data.dir': data,
                      'mesh.shape': (2, 2)}),
           f'--config.distributed.coordinator_address=localhost:{port}',
           '--config.distributed.num_processes=2', f'--config.distributed.process_id={pid}',
           '--config.distributed.cpu_collectives=gloo']
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT))
  outputs = [p.communicate(timeout=420)[0].decode() for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  # Process 0 alone writes logs: one line per step.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(l) for l in f]
  assert [m['step'] for m in lines] == [1, 2, 3]
  assert all(np.isfinite(m['loss']) and 0.2 < m['loss'] < 2.0 for m in lines)
  # Orbax coordinated the checkpoint; each process saved its own input iterator state.
  step_dir = os.path.join(workdir, 'checkpoints', '3')
  assert sorted(os.listdir(os.path.join(step_dir, 'data'))) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']
  states = [json.load(open(os.path.join(step_dir, 'data', f'process_{i}-of-2.json')))
            for i in range(2)]
  assert [s['process_index'] for s in states] == [0, 1]
  assert all(s['global_batch_size'] == 8 for s in states)
  # The sharded checkpoint restores in this single process (8 devices).
  params, saved_config = ckpt_lib.load_params(workdir, ema=False)
  assert saved_config.mesh.shape == [2, 2]
  assert all(np.all(np.isfinite(np.asarray(x))) for x in __import__('jax').tree.leaves(params))
