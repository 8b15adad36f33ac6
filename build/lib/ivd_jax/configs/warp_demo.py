"""The warp demo: a PNG panel of a procedural scene, its warps and their masks.

  python -m ivd_jax.main --config=configs/warp_demo.py --workdir=/tmp/warp_demo \
      [--config.demo.seed=5 --config.demo.poses='0.3,0,1; -0.2,0.1']

Same as `python -m ivd_jax.tools.warp_demo --out DIR`. Writes DIR/warp_demo.png and
DIR/warp_demo.json (precision / recall against the true co-visibility, PSNR in the masks).
"""
import ml_collections

from ivd_jax.configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg  # one preset
  config = ml_collections.ConfigDict()
  config.mode = 'warp_demo'
  # Target cameras 'yaw,pitch[,radius]; ...' in radians; the training warp's settings
  # (docs/method.md §3-4: near/far of the data, 45 degree fov, 3x supersampling, 2 % cuts).
  config.demo = ml_collections.ConfigDict(dict(
      seed=3, resolution=128, poses='0.3,0,1; -0.25,0.12,1; 0.15,-0.1,0.85',
      near=0.5, far=100.0, fov_deg=45.0, ssaa=3, atol=0.02, rtol=0.02, scale=2))
  config.distributed = common.distributed_section()
  return config
