r"""Forward-backward warp throughput (the G_c training-pair hot path); one JSON line per case.

  .venv/bin/python benchmarks/warp.py                          # 64/128/256 px x batch 1/8/32
  .venv/bin/python benchmarks/warp.py --sizes 128 --batches 8 --repeats 5
  .venv/bin/python benchmarks/warp.py --baseline /tmp/old/warp.py --sizes 64 128 --batches 8

With --baseline FILE (a copy of an earlier geometry/warp.py, or any file defining
forward_backward_warp with the same signature; modules next to it import first) both versions are
compiled in the same process and called alternately, and each line also reports the baseline's
times and the ratio new / baseline (wall and CPU): an A/B that the machine's load affects alike.

Each case jits jax.vmap(forward_backward_warp) over a batch of exactly rendered procedural scenes
and random training views (docs/method.md §5), reports the compile time (first call minus a
steady call), the median seconds per batch after compilation, ms per image / images per second,
and the process CPU time per image (all threads; the load-independent figure on a shared
machine). Cases whose batch would hold more than --max_pixels pixels (256 px x 32 by default) are
skipped so the whole run stays within a few minutes on a 2-core CPU. XLA:CPU runs with the
project's settings (ivd_jax/runtime.py; IVD_XLA_CPU_FLAGS=0 for XLA's defaults), recorded as
xla_flags in every line. Never asserts a time.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ivd_jax import runtime  # pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.data import procedural  # pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.geometry import cameras  # pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.geometry import warp  # pylint: disable=g-import-not-at-top,wrong-import-position


def _batch(size: int, batch: int):
  scenes = [procedural.sample_scene(i) for i in range(min(batch, 4))]
  rgbd = np.stack([procedural.render_rgbd(scenes[i % len(scenes)], cameras.SOURCE_VIEW, size)
                   for i in range(batch)])
  views = jax.vmap(cameras.random_training_view)(jax.random.split(jax.random.key(0), batch))
  return rgbd, np.asarray(views)


def _load(path: str):
  """The module of a baseline file; its folder goes first on sys.path for its own imports."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
  spec = importlib.util.spec_from_file_location('warp_baseline', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _jit_fbw(module):
  return jax.jit(jax.vmap(lambda r, v: module.forward_backward_warp(
      r, cameras.SOURCE_VIEW, v, near=0.5, far=100.0)))


def _timed(fn, rgbd, views):
  """(wall s, process CPU s) of one call."""
  start, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn(rgbd, views))
  return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[64, 128, 256])
  parser.add_argument('--batches', type=int, nargs='+', default=[1, 8, 32])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--max_pixels', type=int, default=8 * 256 * 256,
                      help='skip cases with batch * size^2 above this')
  parser.add_argument('--baseline', default=None,
                      help='file with an earlier forward_backward_warp to A/B against')
  args = parser.parse_args(argv)
  # XLA:CPU as ivd_jax.main runs it (IVD_XLA_CPU_FLAGS=0: XLA's defaults), for both versions.
  xla_flags = runtime.configure()
  fbw = _jit_fbw(warp)
  base = _jit_fbw(_load(args.baseline)) if args.baseline else None
  info = dict(machine=f'{os.cpu_count()}-core {platform.machine()} CPU',
              backend=jax.default_backend(), jax=jax.__version__,
              python=platform.python_version(), xla_flags=xla_flags)
  for size in args.sizes:
    for batch in args.batches:
      case = dict(bench='forward_backward_warp', size=size, batch=batch, ssaa=3, **info)
      if batch * size * size > args.max_pixels:
        print(json.dumps(dict(case, skipped=f'batch * size^2 > --max_pixels={args.max_pixels}')))
        continue
      rgbd, views = _batch(size, batch)
      start = time.perf_counter()
      jax.block_until_ready(fbw(rgbd, views))
      first = time.perf_counter() - start
      if base is not None:
        jax.block_until_ready(base(rgbd, views))
      times, cpus, base_times, base_cpus = [], [], [], []
      for _ in range(args.repeats):
        wall, cpu = _timed(fbw, rgbd, views)
        times.append(wall)
        cpus.append(cpu)
        if base is not None:
          wall, cpu = _timed(base, rgbd, views)
          base_times.append(wall)
          base_cpus.append(cpu)
      step = statistics.median(times)
      cpu = sum(cpus) / args.repeats
      line = dict(case, compile_s=round(max(first - step, 0.0), 2), s_per_batch=round(step, 4),
                  ms_per_image=round(1e3 * step / batch, 2), images_per_s=round(batch / step, 1),
                  us_per_pixel=round(1e6 * step / (batch * size * size), 3),
                  cpu_ms_per_image=round(1e3 * cpu / batch, 2))
      if base is not None:
        base_step = statistics.median(base_times)
        base_cpu = sum(base_cpus) / args.repeats
        line.update(baseline=args.baseline,
                    baseline_ms_per_image=round(1e3 * base_step / batch, 2),
                    baseline_cpu_ms_per_image=round(1e3 * base_cpu / batch, 2),
                    ratio_wall=round(step / base_step, 3), ratio_cpu=round(cpu / base_cpu, 3))
      print(json.dumps(dict(line, load_average=round(os.getloadavg()[0], 1))), flush=True)


if __name__ == '__main__':
  main()
