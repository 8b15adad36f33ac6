"""Command line of the warp demo: `python -m ivd_jax.tools.warp_demo --out DIR`.

The settings are configs/warp_demo.py's (the one home of its numbers); this only maps the three
flags onto them and runs ivd_jax.pipelines.warp_demo.
"""
import argparse
import importlib.util
import pathlib

import ml_collections

from ivd_jax import errors
from ivd_jax.pipelines import warp_demo

CONFIG_FILE = pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'warp_demo.py'


def default_config() -> ml_collections.ConfigDict:
  """configs/warp_demo.py's config."""
  if not CONFIG_FILE.is_file():
    raise errors.UserError(f'{CONFIG_FILE} is missing. Fix: run from a checkout of ivd_jax, or '
                           'use python -m ivd_jax.main --config=PATH/warp_demo.py')
  spec = importlib.util.spec_from_file_location('warp_demo_config', CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main(argv=None):
  parser = argparse.ArgumentParser(description='Writes a PNG panel of a scene, its warps and masks.')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--seed', type=int, default=None, help='procedural scene seed')
  parser.add_argument('--resolution', type=int, default=None)
  parser.add_argument('--poses', default=None, help="'yaw,pitch[,radius]; ...' in radians")
  args = parser.parse_args(argv)
  try:
    config = default_config()
    for key in ('seed', 'resolution', 'poses'):
      if getattr(args, key) is not None:
        setattr(config.demo, key, getattr(args, key))
    warp_demo.run(config, args.out)
  except errors.UserError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  main()
