r"""Does a trained G_c use its condition? eps loss with the true condition vs an empty one.

  .venv/bin/python benchmarks/gc_condition.py --data=DIR/data DIR/cond [DIR/uncond ...]

For held-out training pairs (docs/method.md §5, built from `--num` images of the prepared dataset
with a fixed key) and the same x_t, t and noise, the eps loss of each network on the visible
region and on the holes, once with the true condition and once with an empty one (every pixel a
hole). A network that uses its condition predicts the visible region better with it. A G_u checkpoint is
widened to G_c first (new input channels zero): it cannot see the condition, so its two losses
are equal by construction, the control. One JSON line per network and t; never asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.data import pipeline
from ivd_jax.diffusion import conditioning
from ivd_jax.diffusion import losses
from ivd_jax import checkpoint as ckpt_lib
from ivd_jax import parallel as shard_lib
from ivd_jax import roles
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.models import unet as unet_lib
# pylint: enable=g-import-not-at-top,wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('networks', nargs='+', help='G_c (or G_u) training workdirs')
  parser.add_argument('--data', required=True, help='the prepared dataset both trained on')
  parser.add_argument('--num', type=int, default=64, help='held-out images')
  parser.add_argument('--t', default='250,500,750', help='network timesteps')
  args = parser.parse_args()

  _, config = ckpt_lib.load_params(args.networks[0])
  config.data.dir = args.data
  mesh = shard_lib.make_mesh(config.mesh)
  schedule = schedule_lib.schedule_from_config(config.diffusion)
  model = roles.COND.network(config.model)
  batch = next(pipeline.create_input_iterator(config.data, global_batch_size=args.num,
                                               mesh=mesh, seed=123))
  x0 = batch['rgbd']
  pair = jax.jit(lambda x: roles.COND.make_condition(x, jax.random.key(5), config))(x0)
  visible = jnp.broadcast_to(pair['mask'], x0.shape)

  @jax.jit
  def region_losses(params, t_value):
    t = jnp.full((x0.shape[0],), t_value, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(7), t_value), x0.shape)
    x_t = losses.q_sample(schedule, x0, t, noise)
    out = {}
    for name, mask_rgb, mask in (('with', pair['mask_rgb'], pair['mask']),
                                 ('empty', jnp.zeros_like(pair['mask_rgb']),
                                  jnp.zeros_like(pair['mask']))):
      net_in = conditioning.conditional_input(x_t, pair['y_rgb'], pair['y_depth'], mask_rgb, mask,
                                              key=jax.random.key(9))
      sq_err = jnp.square(model.apply({'params': params}, net_in, t) - noise)
      out[f'visible_{name}'] = jnp.sum(sq_err * visible) / jnp.sum(visible)
      out[f'holes_{name}'] = jnp.sum(sq_err * (1 - visible)) / jnp.sum(1 - visible)
    return out

  for path in args.networks:
    params, net_config = ckpt_lib.load_params(path)
    if roles.role_of(net_config) is roles.UNCOND:
      params = unet_lib.widen_input(jax.device_get(params), 10)
    for t_value in (int(v) for v in args.t.split(',')):
      result = jax.tree.map(float, jax.device_get(region_losses(params, t_value)))
      print(json.dumps(dict(network=path, t=t_value, **result)), flush=True)


if __name__ == '__main__':
  main()
