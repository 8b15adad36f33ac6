#!/usr/bin/env python3
"""A stand-in for `gcloud` that turns a Cloud TPU pod slice into local processes.

tests/test_launch.py puts an executable `gcloud` that runs this file first on PATH. Every call
is appended to $FAKE_GCLOUD_LOG as one JSON line {"argv": [...], "worker": null | N} (worker is
set when a worker's own command calls gcloud). The pod lives in $FAKE_POD_DIR:

  compute tpus tpu-vm describe NAME      READY when `create` made it, else exit 1
  compute tpus tpu-vm create NAME ...    makes the worker homes FAKE_POD_DIR/NAME/worker_<i>
  compute tpus tpu-vm delete NAME ...    forgets the slice (the homes stay for inspection)
  compute tpus tpu-vm scp SRC NAME:DEST --worker=W    copies SRC to DEST in the worker homes
  compute tpus tpu-vm ssh NAME --worker=W --command=CMD
      runs `bash -c CMD` once per worker, concurrently, in the worker's home (HOME too), and
      exits with the first non-zero status. A worker of a multi-host slice gets what a 2-host
      CPU run needs in place of the TPU runtime and the metadata server: TPU_WORKER_ID,
      JAX_PLATFORMS=cpu, $FAKE_POD_DEVICES simulated devices (XLA_FLAGS), gloo collectives, and
      explicit coordinates on localhost (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
      JAX_PROCESS_ID: ivd_jax.parallel's 'env' rule), a fresh port per ssh call.
  storage rsync --recursive gs://BUCKET/PATH DEST     copies $FAKE_GCS_DIR/BUCKET/PATH to DEST

Settings: FAKE_POD_WORKERS (default 2), FAKE_POD_DEVICES (default 4).
"""
import json
import os
import shutil
import socket
import subprocess
import sys


def _flags(args):
  flags, positional = {}, []
  for a in args:
    if a.startswith('--'):
      key, _, value = a[2:].partition('=')
      flags[key] = value
    else:
      positional.append(a)
  return flags, positional


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _homes(pod, name, worker):
  n = int(os.environ.get('FAKE_POD_WORKERS', '2'))
  workers = range(n) if worker == 'all' else [int(w) for w in worker.split(',')]
  return [(i, os.path.join(pod, name, f'worker_{i}')) for i in workers]


def _worker_env(i, home, port):
  n = int(os.environ.get('FAKE_POD_WORKERS', '2'))
  env = dict(os.environ, HOME=home, TPU_WORKER_ID=str(i), FAKE_POD_WORKER=str(i),
             JAX_PLATFORMS='cpu', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             XLA_FLAGS='--xla_force_host_platform_device_count=' +
             os.environ.get('FAKE_POD_DEVICES', '4'))
  if n > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES=str(n),
               JAX_PROCESS_ID=str(i))
  return env


def tpu_vm(pod, args):
  command, rest = args[0], args[1:]
  flags, positional = _flags(rest)
  if command == 'describe':
    if os.path.exists(os.path.join(pod, positional[0], 'CREATED')):
      print('READY')
      return 0
    print(f'ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: {positional[0]}',
          file=sys.stderr)
    return 1
  if command == 'create':
    for _, home in _homes(pod, positional[0], 'all'):
      os.makedirs(home, exist_ok=True)
    open(os.path.join(pod, positional[0], 'CREATED'), 'w').close()
    return 0
  if command == 'delete':
    marker = os.path.join(pod, positional[0], 'CREATED')
    if os.path.exists(marker):
      os.remove(marker)
    return 0
  if command == 'scp':
    src, dest = positional
    name, _, remote = dest.partition(':')
    for _, home in _homes(pod, name, flags.get('worker', '0')):
      shutil.copy(src, os.path.join(home, remote))
    return 0
  if command == 'ssh':
    port = _free_port()
    procs = [subprocess.Popen(['bash', '-c', flags['command']], cwd=home,
                              env=_worker_env(i, home, port))
             for i, home in _homes(pod, positional[0], flags.get('worker', '0'))]
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)
  print(f'fake gcloud: unsupported tpu-vm command {command}', file=sys.stderr)
  return 2


def storage(args):
  flags, positional = _flags(args[1:])
  if args[0] != 'rsync' or 'recursive' not in flags or len(positional) != 2:
    print(f'fake gcloud: unsupported storage call {args}', file=sys.stderr)
    return 2
  src, dest = positional
  bucket_path = src[len('gs://'):]
  shutil.copytree(os.path.join(os.environ['FAKE_GCS_DIR'], bucket_path), dest, dirs_exist_ok=True)
  return 0


def main(argv):
  pod = os.environ['FAKE_POD_DIR']
  with open(os.environ.get('FAKE_GCLOUD_LOG') or os.path.join(pod, 'gcloud_calls.jsonl'),
            'a') as f:
    f.write(json.dumps({'argv': argv, 'worker': os.environ.get('FAKE_POD_WORKER')}) + '\n')
  if argv[:3] == ['compute', 'tpus', 'tpu-vm']:
    return tpu_vm(pod, argv[3:])
  if argv[:1] == ['storage']:
    return storage(argv[1:])
  print(f'fake gcloud: unsupported call {argv}', file=sys.stderr)
  return 2


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
