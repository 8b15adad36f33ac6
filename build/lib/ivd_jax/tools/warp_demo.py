"""Command line of the warp demo: `python -m ivd_jax.tools.warp_demo --out DIR`.

The settings are configs/warp_demo.py's (the one home of its numbers); this only maps the three
flags onto them and runs ivd_jax.pipelines.warp_demo.
"""
import argparse

from ivd_jax import errors
from ivd_jax.configs import warp_demo as warp_demo_config
from ivd_jax.pipelines import warp_demo


def main(argv=None):
  parser = argparse.ArgumentParser(
      description='Writes a PNG panel of a scene, its warps and masks.')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--seed', type=int, default=None, help='procedural scene seed')
  parser.add_argument('--resolution', type=int, default=None)
  parser.add_argument('--poses', default=None, help="'yaw,pitch[,radius]; ...' in radians")
  args = parser.parse_args(argv)
  try:
    config = warp_demo_config.get_config()
    for key in ('seed', 'resolution', 'poses'):
      if getattr(args, key) is not None:
        setattr(config.demo, key, getattr(args, key))
    warp_demo.run(config, args.out)
  except errors.UserError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  main()
