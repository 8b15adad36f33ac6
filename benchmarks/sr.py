r"""G_sr on the procedural scenes: SR vs bilinear upsampling, and consistent vs independent SR.

  .venv/bin/python benchmarks/sr.py --copy_cost
  .venv/bin/python benchmarks/sr.py --workdir=/tmp/sr_bench [--train_steps=2000] \
      [--scenes=64] [--viewset_scenes=4] [--sr_steps=25] [--starts=1.0,0.3,0.1@1] \
      [--viewset_start=0.3] [--modes=independent,consistent]

1. Trains configs/sr.py:tiny shrunk to 16 -> 32 px (`tiny_16_32`, the test's shape) for
   --train_steps with the real train mode in WORKDIR (procedural data prepared there; resumes).
2. Single views: view 0 of --scenes held-out scenes (the procedural 'test' stream, never trained
   on), rendered exactly at 32 px; their low-resolution copies (Lanczos, nearest depth, as in
   training but unblurred) are super-resolved and scored against the true renders
   (evaluation/superres.py: colour PSNR, z-buffer MAE, depth abs-rel) beside bilinear upsampling,
   for every chain start of --starts (sample.sr_start: 1 = DDIM from pure noise, the reference;
   `START@STEPS` overrides --sr_steps for that start: `0.1@1` is one network evaluation, the
   predicted x_0 at t = 0.1 T from the noised bilinear upsampling, close to the posterior mean
   that PSNR rewards, where a sample adds texture PSNR penalises).
3. View sets: the 3x9 cameras of --viewset_scenes held-out scenes; the low-resolution true views
   super-resolved independently and consistently (sampling/superres.py, chain start
   --viewset_start), scored against the truth
   and by the pairwise 3D consistency of evaluation/consistency.py, beside the true views (the
   ceiling) and bilinear upsampling.
4. --copy_cost: seconds of the low-resolution training copy (roles/sr.py, made inside the train
   step) at 32 px (batch 8) and 256 px (the reference's batch of 32), against the whole tiny
   16 -> 32 train step; only this when given.
One JSON line per figure; never asserts (tests/test_sr.py asserts a shorter run's bounds). The
functions are shared with tests/test_sr.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax import runtime
from ivd_jax.configs import common
from ivd_jax.configs import sr as sr_config
from ivd_jax.data import procedural
from ivd_jax.evaluation import consistency
from ivd_jax.evaluation import superres as sr_eval
from ivd_jax.evaluation import tsed as tsed_lib
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.pipelines import train
from ivd_jax.roles import sr as sr_lib
from ivd_jax.sampling import superres
from ivd_jax.training import state as state_lib
from ivd_jax.training import step as step_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

NEAR, FAR = 0.5, 100.0  # the procedural data's z-buffer encoding
TEST_STREAM = 1  # procedural.scene_seed stream of prepare's held-out 'test' split


def tiny_16_32(num_steps: int) -> ml_collections.ConfigDict:
  """configs/sr.py:tiny at 16 -> 32 px: the CPU-cheap shape of the test and this benchmark."""
  config = sr_config.get_config('tiny')
  config.data.resolution = config.model.image_size = 32
  config.sr.low_resolution = 16
  config.data.num_examples = 1000
  config.data.num_eval_examples = 8
  config.data.novel_viewset = ''  # the views scored here are rendered by true_views()
  config.train.num_steps = num_steps
  config.checkpoint.every_steps = min(1000, num_steps)
  config.checkpoint.keep = 20
  config.log.every_steps = min(50, num_steps)
  config.log.progress = False
  return config


def sample_config(sr_dir: str, *, sr_steps: int, mode: str,
                  start: float) -> ml_collections.ConfigDict:
  """The sample section of the evaluation: exact-depth lifting at 32 px (the quickstart's erosion
  1 and tolerances 0.1), predicted x_0 clipped (a network trained for minutes)."""
  s = common.sample_section()
  s.sr, s.sr_steps, s.sr_mode, s.sr_start = sr_dir, sr_steps, mode, start
  s.near, s.far = NEAR, FAR
  s.erode, s.atol, s.rtol = 1, 0.1, 0.1
  s.clip_denoised = True
  s.guidance = s.sr_guidance = 0.0
  return s


def true_views(num_scenes: int, poses: np.ndarray, resolution: int) -> np.ndarray:
  """[S, V, R, R, 4] exact renders of held-out scenes 0..S-1 from cameras (yaw, pitch, r)."""
  views = np.asarray(cameras.views_from_poses(jnp.asarray(poses, jnp.float32)), np.float32)
  return np.stack([
      np.stack([procedural.render_rgbd(procedural.sample_scene(
          procedural.scene_seed(0, TEST_STREAM, i)), v, resolution, near=NEAR, far=FAR)
                for v in views]) for i in range(num_scenes)]), views


def low_and_bilinear(truth: np.ndarray, low_resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """The unblurred training copy of views [..., R, R, 4] in [0, 1] and its bilinear upsampling."""
  shape = truth.shape
  x = depth_lib.to_network(jnp.asarray(truth.reshape((-1,) + shape[-3:])))
  low = sr_lib.low_resolution_copy(x, jax.random.PRNGKey(0), low_resolution=low_resolution,
                                   blur_sigma_max=0.0)
  up = sr_lib.bilinear_upsample(low, shape[-2])
  to01 = lambda a: np.clip(np.asarray(depth_lib.from_network(a)), 0.0, 1.0)
  return (to01(low).reshape(shape[:-3] + low.shape[1:]), to01(up).reshape(shape))


def super_resolve(s: Any, low: np.ndarray, views: np.ndarray, seed: int = 0
                  ) -> tuple[np.ndarray, dict]:
  """SR of view sets [N, V, h, w, 4] with G_sr of s.sr; (views [N, V, H, W, 4], timings)."""
  mesh = ml_collections.ConfigDict({'shape': (-1, 1)})
  sampler, _ = superres.build(s, mesh)
  n = low.shape[0]
  result, _ = superres.super_resolve(sampler, low, views, seed=seed, instance_ids=np.arange(n),
                                     labels=np.full(n, -1, np.int32), batch_size=n)
  return result.rgbd, result.timings


def pair_consistency(rgbd: np.ndarray, views: np.ndarray, s: Any,
                     neighbours: int | None) -> dict:
  return consistency.pairwise_consistency(rgbd, views, near=NEAR, far=FAR, fov_deg=s.fov_deg,
                                          ssaa=s.ssaa, atol=s.atol, rtol=s.rtol,
                                          neighbours=neighbours)


def view_set_tsed(rgbd: np.ndarray, views: np.ndarray, s: Any) -> dict:
  """TSED (evaluation/tsed.py, the sample section's settings) of view sets [N, V, H, W, 4]."""
  figures = tsed_lib.tsed(rgbd, views, fov_deg=s.fov_deg,
                          settings=tsed_lib.TsedSettings.from_config(s), control=False)['views']
  return {k: figures[k] for k in ('tsed', 'num_pairs', 'num_consistent', 'median_sed',
                                  'matches_per_pair')}


def _seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  t = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / repeats


def copy_cost(repeats: int = 20) -> list[dict]:
  """Seconds of the training copy (jitted make_condition) and of the tiny train step."""
  rows = []
  key = jax.random.PRNGKey(0)
  for res, low, batch in ((32, 16, 8), (256, 128, 32)):
    config = sr_config.get_config('tiny')
    config.sr.low_resolution = low
    x = jax.random.uniform(key, (batch, res, res, 4), minval=-1.0, maxval=1.0)
    fn = jax.jit(lambda x, k, c=config: roles.SR.make_condition(x, k, c))
    rows.append(dict(case='copy', resolution=res, low_resolution=low, batch=batch,
                     seconds=_seconds(lambda: fn(x, key), repeats)))
  config = tiny_16_32(1)
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'shape': (1, 1)}), jax.devices()[:1])
  model = roles.SR.network(config.model)
  tx = state_lib.make_optimizer(config.optim)
  state, _ = step_lib.init_state(model, tx, config, mesh)
  step = jax.jit(step_lib.make_train_step(model, tx, config))
  batch = {'rgbd': jax.random.uniform(key, (8, 32, 32, 4), minval=-1.0, maxval=1.0),
           'label': jnp.full((8,), -1, jnp.int32)}
  seconds = _seconds(lambda: step(state, batch)[1]['loss'], repeats)
  rows.append(dict(case='train_step', resolution=32, batch=8, seconds=seconds,
                   copy_share=rows[0]['seconds'] / seconds))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', help='the G_sr training workdir (created, or resumed)')
  parser.add_argument('--train_steps', type=int, default=2000)
  parser.add_argument('--scenes', type=int, default=64)
  parser.add_argument('--viewset_scenes', type=int, default=4)
  parser.add_argument('--sr_steps', type=int, default=25)
  parser.add_argument('--starts', default='1.0,0.3,0.1@1',
                      help='sample.sr_start values (START or START@STEPS), single views')
  parser.add_argument('--viewset_start', type=float, default=0.3)
  parser.add_argument('--modes', default='independent,consistent')
  parser.add_argument('--neighbours', type=int, default=0, help='0 = all view pairs')
  parser.add_argument('--copy_cost', action='store_true')
  args = parser.parse_args()
  runtime.configure()  # XLA:CPU as ivd_jax.main runs it
  emit = lambda **kw: print(json.dumps(kw), flush=True)
  if args.copy_cost:
    for row in copy_cost():
      emit(**row)
    return
  if not args.workdir:
    parser.error('--workdir is required')

  t0 = time.perf_counter()
  last = train.train_and_evaluate(tiny_16_32(args.train_steps), args.workdir)
  emit(case='train', steps=last['step'], loss=last.get('loss'),
       seconds=time.perf_counter() - t0)
  truth, views = true_views(args.scenes, np.zeros((1, 3)) + [0.0, 0.0, 1.0], 32)
  low, up = low_and_bilinear(truth, 16)
  emit(case='single_views', method='bilinear', **sr_eval.sr_error(up, truth, near=NEAR, far=FAR))
  for item in args.starts.split(','):
    start, _, steps = item.partition('@')
    start, steps = float(start), int(steps or args.sr_steps)
    s = sample_config(args.workdir, sr_steps=steps, mode='independent', start=start)
    sr, timings = super_resolve(s, low, np.broadcast_to(views, (args.scenes,) + views.shape))
    emit(case='single_views', method='sr', sr_steps=steps, sr_start=start,
         timings=timings, **sr_eval.sr_error(sr, truth, near=NEAR, far=FAR))

  s = sample_config(args.workdir, sr_steps=args.sr_steps, mode='independent',
                    start=args.viewset_start)
  poses = cameras.viewset_poses('3x9')
  truth, views = true_views(args.viewset_scenes, poses, 32)
  views = np.broadcast_to(views, (args.viewset_scenes,) + views.shape)
  low, up = low_and_bilinear(truth, 16)
  neighbours = args.neighbours or None
  for method, rgbd in (('truth', truth), ('bilinear', up)):
    emit(case='3x9', method=method, consistency=pair_consistency(rgbd, views, s, neighbours),
         tsed=view_set_tsed(rgbd, views, s),
         **sr_eval.sr_error(rgbd, truth, near=NEAR, far=FAR))
  for mode in args.modes.split(','):
    s.sr_mode = mode
    sr, timings = super_resolve(s, low, views)
    emit(case='3x9', method=f'sr_{mode}', sr_steps=args.sr_steps, sr_start=s.sr_start,
         timings=timings,
         consistency=pair_consistency(sr, views, s, neighbours),
         tsed=view_set_tsed(sr, views, s),
         **sr_eval.sr_error(sr, truth, near=NEAR, far=FAR))


if __name__ == '__main__':
  main()
