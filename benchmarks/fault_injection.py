"""Fault injection: kill -9 a training run at random times, resume, and compare bitwise.

  nice python benchmarks/fault_injection.py [--kills 10] [--num_steps 200] [--seed 1] [--out F]

Trains a 0.1 M-parameter UNet on 16 px procedural scenes (the tests' small config) with
asynchronous checkpoints every 2 steps, through the command line (`python -m ivd_jax.main`, one
process per attempt):
  1. a 2-step run (prepares the dataset, fills the compilation cache), then an uninterrupted run
     of --num_steps steps;
  2. the same run in another workdir, killed with SIGKILL --kills times at random moments, each
     attempt resuming from what the previous one left: during start-up / restore (1 in 5
     attempts, a uniform time in the first seconds) or while it trains (a uniform delay after
     its first new step, when saves are in flight), then a last attempt that runs to the end;
  3. the final parameters (raw and EMA) and every logged loss compared with run 1, bitwise.
Every kill leaves a stale workdir lock (taken over by the next attempt) and, when it lands in a
save, an unfinished orbax temporary directory (counted). Prints one JSON line (also appended to
--out): the kills, where they landed, the steps each attempt resumed from, and whether everything
is equal. Timings are reported, never asserted.
"""
import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from ivd_jax import checkpoint as ckpt_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

# The tests' small config (tests/test_training.py SMALL), as command-line overrides.
SMALL = {
    'data.resolution': 16, 'model.image_size': 16, 'data.num_examples': 32,
    'data.num_eval_examples': 0, 'model.model_channels': 16, 'model.channel_mult': (1, 2),
    'model.num_res_blocks': 1, 'model.attention_resolutions': (8,),
    'model.num_head_channels': 16, 'model.num_groups': 8, 'train.batch_size': 8,
    'optim.warmup_steps': 0, 'log.progress': False, 'log.sample_every_steps': 0,
    'log.every_steps': 1, 'checkpoint.every_steps': 2, 'checkpoint.async_save': True,
    'mesh.shape': (1, 1),
}


def _command(workdir: str, data_dir: str, num_steps: int) -> list[str]:
  flags = {**SMALL, 'train.num_steps': num_steps, 'data.dir': data_dir}
  return [sys.executable, '-m', 'ivd_jax.main', '--config=configs/uncond.py',
          f'--workdir={workdir}', *[f'--config.{k}={v}' for k, v in flags.items()]]


def _env(cache_dir: str) -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
              JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _logged_steps(workdir: str) -> int:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if line.strip())


def _checkpoints(workdir: str) -> tuple[list[int], list[str], list[str]]:
  """(finished steps, unfinished orbax temporary directories, moved-aside damaged steps)."""
  folder = os.path.join(workdir, 'checkpoints')
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return (sorted(int(n) for n in names if n.isdigit()),
          sorted(n for n in names if 'orbax-checkpoint-tmp' in n),
          sorted(n for n in names if '.damaged-' in n))


def _run(cmd: list[str], env: dict[str, str], log_path: str) -> int:
  with open(log_path, 'ab') as log:
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def _losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {m['step']: m['loss'] for m in map(json.loads, f)}


def _equal_params(a: str, b: str, ema: bool) -> bool:
  pa, _ = ckpt_lib.load_params(a, ema=ema)
  pb, _ = ckpt_lib.load_params(b, ema=ema)
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kills', type=int, default=10)
  parser.add_argument('--num_steps', type=int, default=200)
  parser.add_argument('--max_delay_s', type=float, default=3.0,
                      help='kills while training land uniformly in this many seconds after the '
                      "attempt's first new step")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--dir', default='', help='working folder (default: a temporary one)')
  parser.add_argument('--out', default='', help='also append the JSON line to this file')
  args = parser.parse_args()

  rng = random.Random(args.seed)
  base = args.dir or tempfile.mkdtemp(prefix='ivd_fault_injection_')
  data_dir, cache = os.path.join(base, 'data'), os.path.join(base, 'jax_cache')
  straight, killed = os.path.join(base, 'straight'), os.path.join(base, 'killed')
  for d in (straight, killed):
    shutil.rmtree(d, ignore_errors=True)
  os.makedirs(killed)
  env, log = _env(cache), os.path.join(base, 'log.txt')
  t_start = time.perf_counter()

  # A 2-step run prepares the dataset and fills the compilation cache, so that every later run
  # (uninterrupted or not) starts the same way: restore, then the cached executables.
  for name, steps in (('warmup', 2), ('straight', args.num_steps)):
    shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    rc = _run(_command(os.path.join(base, name), data_dir, steps), env,
              os.path.join(base, f'{name}.log'))
    if rc:
      sys.exit(f'the {name} run failed (exit {rc}); see {base}/{name}.log')
  t_straight = time.perf_counter() - t_start

  kills = []
  for attempt in range(args.kills):
    before = _logged_steps(killed)
    resumed_from = (_checkpoints(killed)[0] or [0])[-1]
    with open(log, 'ab') as f:
      proc = subprocess.Popen(_command(killed, data_dir, args.num_steps), cwd=ROOT, env=env,
                              stdout=f, stderr=subprocess.STDOUT)
    t0 = time.perf_counter()
    phase = 'startup' if rng.random() < 0.2 else 'training'
    if phase == 'startup':
      time.sleep(rng.uniform(0.0, 8.0))
    else:
      while _logged_steps(killed) <= before and proc.poll() is None:
        time.sleep(0.01)
      time.sleep(rng.uniform(0.0, args.max_delay_s))
    if proc.poll() is not None:  # finished (or failed) before its kill
      kills.append({'attempt': attempt, 'phase': phase, 'exited': proc.returncode})
      break
    proc.kill()
    proc.wait()
    steps, unfinished, _ = _checkpoints(killed)
    kills.append({'attempt': attempt, 'phase': phase, 'resumed_from': resumed_from,
                  'at_s': round(time.perf_counter() - t0, 2),
                  'logged_steps': _logged_steps(killed), 'latest_checkpoint': (steps or [0])[-1],
                  'during_save': bool(unfinished)})
  rc = _run(_command(killed, data_dir, args.num_steps), env, log)
  steps, unfinished, damaged = _checkpoints(killed)
  with open(log, errors='replace') as f:
    text = f.read()
  equal = {'params_equal': _equal_params(straight, killed, ema=False),
           'ema_params_equal': _equal_params(straight, killed, ema=True),
           'losses_equal': _losses(straight) == _losses(killed)}
  result = {
      'benchmark': 'fault_injection',
      'date': datetime.date.today().isoformat(),
      'kills': sum(1 for k in kills if 'exited' not in k),
      'kills_during_save': sum(1 for k in kills if k.get('during_save')),
      'kills_at_startup': sum(1 for k in kills if k['phase'] == 'startup' and 'exited' not in k),
      'num_steps': args.num_steps, 'every_steps': SMALL['checkpoint.every_steps'],
      'async_save': True, 'seed': args.seed,
      'resumed_from': [k['resumed_from'] for k in kills if 'resumed_from' in k],
      'stale_locks_taken_over': text.count('is stale ('),
      'final_exit': rc, 'final_steps': steps, 'damaged_steps': damaged,
      **equal, 'all_equal': rc == 0 and all(equal.values()),
      'warmup_and_straight_s': round(t_straight, 1),
      'seconds': round(time.perf_counter() - t_start, 1),
      'attempts': kills,
  }
  line = json.dumps(result)
  print(line)
  if args.out:
    with open(args.out, 'a') as f:
      f.write(line + '\n')
  if not args.dir:
    shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
  main()
