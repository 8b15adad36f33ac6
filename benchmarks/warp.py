r"""Forward-backward warp throughput (the G_c training-pair hot path); one JSON line per case.

  .venv/bin/python benchmarks/warp.py                          # 64/128/256 px x batch 1/8/32
  .venv/bin/python benchmarks/warp.py --sizes 128 --batches 8 --repeats 5

Each case jits jax.vmap(forward_backward_warp) over a batch of exactly rendered procedural scenes
and random training views (docs/method.md §5), reports the compile time (first call minus a
steady call), the median seconds per batch after compilation, ms per image / images per second,
and the process CPU time per image (all threads; the load-independent figure on a shared
machine). Cases whose batch would hold more than --max_pixels pixels (256 px x 32 by default) are
skipped so the whole run stays within a few minutes on a 2-core CPU. Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ivd_jax.data import procedural  # pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.geometry import cameras  # pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.geometry import warp  # pylint: disable=g-import-not-at-top,wrong-import-position


def _batch(size: int, batch: int):
  scenes = [procedural.sample_scene(i) for i in range(min(batch, 4))]
  rgbd = np.stack([procedural.render_rgbd(scenes[i % len(scenes)], cameras.SOURCE_VIEW, size)
                   for i in range(batch)])
  views = jax.vmap(cameras.random_training_view)(jax.random.split(jax.random.key(0), batch))
  return rgbd, np.asarray(views)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[64, 128, 256])
  parser.add_argument('--batches', type=int, nargs='+', default=[1, 8, 32])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--max_pixels', type=int, default=8 * 256 * 256,
                      help='skip cases with batch * size^2 above this')
  args = parser.parse_args(argv)
  fbw = jax.jit(jax.vmap(lambda r, v: warp.forward_backward_warp(
      r, cameras.SOURCE_VIEW, v, near=0.5, far=100.0)))
  info = dict(machine=f'{os.cpu_count()}-core {platform.machine()} CPU',
              backend=jax.default_backend(), jax=jax.__version__,
              python=platform.python_version())
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
      times = []
      cpu = time.process_time()
      for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(fbw(rgbd, views))
        times.append(time.perf_counter() - start)
      cpu = (time.process_time() - cpu) / args.repeats
      step = statistics.median(times)
      print(json.dumps(dict(case, compile_s=round(max(first - step, 0.0), 2),
                            s_per_batch=round(step, 4), ms_per_image=round(1e3 * step / batch, 2),
                            images_per_s=round(batch / step, 1),
                            us_per_pixel=round(1e6 * step / (batch * size * size), 3),
                            cpu_ms_per_image=round(1e3 * cpu / batch, 2),
                            load_average=round(os.getloadavg()[0], 1))),
            flush=True)


if __name__ == '__main__':
  main()
