"""Training G_sr, the RGBD super-resolution network (the reference's 256_128 SR configs).

  python -m ivd_jax.main --config=configs/sr.py[:preset] --workdir=DIR_SR \
      [--config.train.batch_size=32 --config.data.dir=DATA_256 ...]

Training examples are the prepared high-resolution RGBD images; the train step makes each one's
low-resolution copy as the reference does (colour Lanczos-resized then blurred 3 x 3 with sigma
~ U(0, 1] ; depth nearest-resized; config.sr) and G_sr sees [x_t, the copy upsampled bilinearly],
8 channels (ivd_jax/roles/sr.py). Eps loss and label dropout as G_u.

Presets (configs/common.py: SR_PRESETS):
  tiny              (default) procedural scenes, 32 -> 64 px (the quickstart's views), a 1.3 M
                    parameter UNet; the dataset is generated in DIR_SR/data when missing.
  imagenet256       the reference's rgbd_imagenet_adm_256_128_small_sr: 128 -> 256 px, 1000
                    classes, 105,714,052 parameters, global batch 32.
  singlecategory256 the reference's rgbd_singlecategory_adm_256_128_small_sr (no classes,
                    105,202,052 parameters).
The 256 px presets read a dataset prepared at 256 px, e.g.
  python -m ivd_jax.main --config=configs/prepare.py:imagenet128 --workdir=DIR_SR \
      --config.data.resolution=256 --config.data.folder=/data/imagenet/train
Sampling with it: --config.sample.sr=DIR_SR on configs/sample.py (see README.md,
"Super-resolution to 256 px").
"""
from ivd_jax.configs import common


def get_config(arg=None):
  return common.train_config(arg, role='sr')
