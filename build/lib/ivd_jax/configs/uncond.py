"""Training G_u, the unconditional (optionally class-conditional) RGBD diffusion model.

  python -m ivd_jax.main --config=configs/uncond.py[:preset] --workdir=DIR \
      [--config.train.batch_size=64 --config.data.folder=IMAGES ...]

Presets (configs/common.py; docs/method.md §6 and 9):
  tiny          (default) embedded procedural scenes at 32 px, a 2.7 M-parameter UNet; trains
                on a CPU in minutes. The dataset is generated in DIR/data when missing.
  imagenet128   ImageNet 128, 1000 classes, model_channels 256, global batch 128.
  dogs128, elephants128, horses128
                single-category 128 px, model_channels 128, global batch 64.
The 128 px presets read a dataset prepared by
  python -m ivd_jax.main --config=configs/prepare.py:<preset> --workdir=DIR
(config.data.dir, default DIR/data).
"""
from ivd_jax.configs import common


def get_config(arg=None):
  return common.train_config(arg, role='uncond')
