"""Training step throughput of G_u and G_c, and the share of the G_c step spent building pairs.

  python benchmarks/train.py [--cases tiny_gu,tiny_gc,cat64_gu,cat64_gc] [--repeats 5]

Prints one JSON line per case: seconds per step, examples per second, parameter count and, for
G_c, seconds of make_training_pairs alone and its share of the step. Runs the real jitted step
(training.step.make_train_step: eps loss, AdamW, EMA; G_c pairs built inside) on one device,
float32, on procedural RGBD images. Timings are never asserted; see benchmarks/README.md.
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Runnable as a script from anywhere: the repository root goes on the path first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.configs import common
from ivd_jax import parallel as shard_lib
from ivd_jax import roles
from ivd_jax.data import procedural
from ivd_jax.geometry import cameras
from ivd_jax.training import state as state_lib
from ivd_jax.training import step as step_lib
# pylint: enable=g-import-not-at-top,wrong-import-position


def case_config(name: str):
  """tiny_*: the tiny preset (32 px); cat64_*: the single-category network at 64 px."""
  shape, kind = name.split('_')
  config = common.train_config('tiny' if shape == 'tiny' else 'dogs128',
                               role='cond' if kind == 'gc' else 'uncond')
  config.mesh.shape = (1, 1)
  config.model.dtype = 'float32'
  if shape == 'cat64':
    config.data.resolution = config.model.image_size = 64
    config.train.batch_size = 4
  return config


def _timed(fn, repeats):
  out = fn()
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / repeats


def run_case(name: str, repeats: int) -> dict:
  config = case_config(name)
  res, b = config.model.image_size, config.train.batch_size
  view = np.asarray(cameras.SOURCE_VIEW)
  rgbd = np.stack([procedural.render_rgbd(procedural.sample_scene(i), view, res)
                   for i in range(b)]) * 2 - 1
  mesh = shard_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    model = roles.role_of(config).network(config.model)
    tx = state_lib.make_optimizer(config.optim)
    state, shardings = step_lib.init_state(model, tx, config, mesh)
    bs = shard_lib.batch_sharding(mesh)
    batch = jax.device_put({'rgbd': jnp.asarray(rgbd, jnp.float32),
                            'label': jnp.full((b,), -1, jnp.int32)}, bs)
    step = jax.jit(step_lib.make_train_step(model, tx, config),
                   in_shardings=(shardings, {'rgbd': bs, 'label': bs}),
                   out_shardings=(shardings, shard_lib.replicated(mesh)), donate_argnums=(0,))
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    holder = {'state': state}

    def one():
      holder['state'], m = step(holder['state'], batch)
      return m

    s_per_step = _timed(one, repeats)
    result = dict(case=name, resolution=res, batch=b,
                  params=state_lib.param_count(holder['state'].params),
                  s_per_step=round(s_per_step, 4), examples_per_s=round(b / s_per_step, 2),
                  first_step_s=round(compile_s, 2), device=jax.devices()[0].device_kind)
    role = roles.role_of(config)
    if role.make_condition is not None:
      make = jax.jit(lambda x, k: role.make_condition(x, k, config))
      key = jax.random.PRNGKey(0)
      pair_s = _timed(lambda: make(batch['rgbd'], key), repeats)
      result.update(pairs_s=round(pair_s, 4), pairs_share=round(pair_s / s_per_step, 3))
  return result


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--cases', default='tiny_gu,tiny_gc,cat64_gu,cat64_gc')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  for name in args.cases.split(','):
    print(json.dumps(run_case(name, args.repeats)), flush=True)


if __name__ == '__main__':
  main()
