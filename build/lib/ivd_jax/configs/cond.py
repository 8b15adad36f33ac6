"""Training G_c, the RGBD diffusion model conditioned on a warped earlier view.

docs/method.md §5-6.

  python -m ivd_jax.main --config=configs/cond.py[:preset] --workdir=DIR_GC \
      --config.init_from=DIR_GU [--config.train.batch_size=64 ...]

Same presets as configs/uncond.py, with 10 input channels [x_t, mask_rgb, y_rgb, y_depth, mask].
Training pairs are made inside the jitted step by forward-backward warping each image through a
random camera (config.pairs). `init_from` (a G_u workdir or exported params) starts G_c from G_u's
weights with the six new input channels zero, as the reference does.
"""
from ivd_jax.configs import common


def get_config(arg=None):
  return common.train_config(arg, role='cond')
