"""Input throughput: prepared examples/s (prepare) and streamed examples/s (pipeline).

  python benchmarks/input_pipeline.py [--resolutions 64 128] [--num 512] [--workers 0 2]

Prints one JSON line per case:
  procedural_render  sample_scene + render_rgbd (1000 scenes at 64 px, 250 at 128 px)
  prepare   procedural scenes (exact depth) and a folder of real JPEG photographs with MiDaS
            .npz disparity (Lanczos resize + crop, depth conversion, PNG encoding, ArrayRecord);
            one process and a pool of worker processes
  pipeline  create_input_iterator on all local devices: decode PNG -> float32 network encoding,
            random flip, batch, global jax.Array; in-process threads (workers=0) and grain worker
            processes; measured after a warm-up, ending with the batch on the devices
In-process cases also report CPU seconds (examples_per_cpu_s): on a shared machine that figure
is the one that does not depend on the load. Never asserts a time.
"""
import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from ivd_jax.configs import prepare as prepare_config  # pylint: disable=wrong-import-position
from ivd_jax import parallel  # pylint: disable=wrong-import-position
from ivd_jax.data import pipeline  # pylint: disable=wrong-import-position
from ivd_jax.pipelines import prepare  # pylint: disable=wrong-import-position


def _emit(**record):
  record.update(cpu_count=os.cpu_count(), platform=platform.machine(),
                jax=jax.__version__, backend=jax.default_backend())
  print(json.dumps(record), flush=True)


def _photo_folder(root: pathlib.Path, num: int) -> pathlib.Path:
  """`num` real photographs (scikit-image, 300x451 .. 872x1000) as JPEG + MiDaS-format .npz."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
            skimage.data.rocket(), skimage.data.hubble_deep_field(),
            skimage.data.immunohistochemistry()]
  folder = root / 'photos'
  folder.mkdir()
  for i in range(num):
    photo = photos[i % len(photos)]
    Image.fromarray(photo).save(folder / f'{i:05d}.jpg', quality=92)
    h, w = photo.shape[:2]
    disp = (3000 + 10000 * np.linspace(0, 1, h)[:, None] * np.ones((1, w))).astype(np.float16)
    np.savez_compressed(folder / f'{i:05d}.npz', disp)
  return folder


def bench_prepare(root: pathlib.Path, resolution: int, num: int, workers: int, source: str,
                  folder=None) -> pathlib.Path:
  config = prepare_config.get_config(source)
  config.data.resolution = resolution
  config.data.prepare_workers = workers
  config.data.examples_per_shard = max(1, num // 4)  # 4 shards so workers have work to share
  config.log.progress = False
  if source == 'procedural':
    config.data.num_examples = num
    config.data.num_eval_examples = 0
  else:
    config.data.folder = str(folder)
  out = root / f'{source}_{resolution}_{workers}'
  config.data.dir = str(out / 'data')
  start, cpu_start = time.perf_counter(), time.process_time()
  summary = prepare.run(config, str(out))
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  extra = {}
  if workers <= 1:  # all work in this process: CPU time per example is independent of load
    extra = dict(cpu_s=round(cpu, 3), examples_per_cpu_s=round(summary['num_written'] / cpu, 1))
  _emit(bench='prepare', source=source, resolution=resolution, workers=workers,
        examples=summary['num_written'], seconds=round(seconds, 3),
        examples_per_s=round(summary['num_written'] / seconds, 1), **extra)
  return out / 'data'


def bench_procedural(resolution: int, num: int) -> None:
  """sample_scene + render_rgbd from the source view (exact ray casting), one process."""
  from ivd_jax.data import procedural  # pylint: disable=g-import-not-at-top
  from ivd_jax.geometry import cameras  # pylint: disable=g-import-not-at-top
  procedural.render_rgbd(procedural.sample_scene(0), cameras.SOURCE_VIEW, resolution)
  start, cpu_start = time.perf_counter(), time.process_time()
  for seed in range(num):
    procedural.render_rgbd(procedural.sample_scene(seed), cameras.SOURCE_VIEW, resolution)
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  _emit(bench='procedural_render', resolution=resolution, scenes=num, seconds=round(seconds, 3),
        scenes_per_s=round(num / seconds, 1), cpu_s=round(cpu, 3),
        scenes_per_cpu_s=round(num / cpu, 1))


def bench_pipeline(path: pathlib.Path, resolution: int, batch: int, workers: int,
                   steps: int) -> None:
  config = prepare_config.get_config('procedural')
  config.data.dir = str(path)
  config.data.resolution = resolution
  config.data.flip = True
  config.data.num_workers = workers
  devices = jax.device_count()
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'shape': (devices, 1)}))
  it = pipeline.create_input_iterator(config.data, global_batch_size=batch, mesh=mesh, seed=0)
  for _ in range(3):  # warm-up: worker start, first reads
    jax.block_until_ready(next(it)['rgbd'])
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(steps):
    jax.block_until_ready(next(it)['rgbd'])
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  extra = {}
  if not workers:  # decoding runs in this process's threads
    extra = dict(cpu_s=round(cpu, 3), examples_per_cpu_s=round(steps * batch / cpu, 1))
  _emit(bench='pipeline', resolution=resolution, global_batch=batch, workers=workers,
        devices=devices, batches=steps, seconds=round(seconds, 3),
        examples_per_s=round(steps * batch / seconds, 1), **extra)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--resolutions', type=int, nargs='+', default=[64, 128])
  parser.add_argument('--num', type=int, default=512, help='examples to prepare per case')
  parser.add_argument('--workers', type=int, nargs='+', default=[0, 2])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=30)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    photos = _photo_folder(root, max(8, args.num // 4))
    for resolution in args.resolutions:
      bench_procedural(resolution, 1000 if resolution <= 64 else 250)
      data = None
      for workers in sorted({max(1, w) for w in args.workers}):
        path = bench_prepare(root, resolution, args.num, workers, 'procedural')
        data = data or path
        bench_prepare(root, resolution, args.num // 4, workers, 'folder', folder=photos)
      for workers in args.workers:
        bench_pipeline(data, resolution, args.batch, workers, args.steps)


if __name__ == '__main__':
  main()
