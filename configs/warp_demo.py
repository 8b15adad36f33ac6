"""The warp demo: a PNG panel of a procedural scene, its warps and their masks.

  python -m ivd_jax.main --config=configs/warp_demo.py --workdir=/tmp/warp_demo \
      [--config.demo.seed=5 --config.demo.poses='0.3,0,1; -0.2,0.1']

Same as `python -m ivd_jax.tools.warp_demo --out DIR`. Writes DIR/warp_demo.png and
DIR/warp_demo.json (precision / recall against the true co-visibility, PSNR in the masks).
"""
import ml_collections

from ivd_jax.tools import warp_demo


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg  # one preset
  return warp_demo.default_config()
