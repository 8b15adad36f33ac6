"""Dataset preparation (mode 'prepare'): RGBD examples -> a TFDS ArrayRecord dataset.

  python -m ivd_jax.main --config=configs/prepare.py[:procedural] --workdir=DIR
  python -m ivd_jax.main --config=configs/prepare.py:folder --workdir=DIR \
      --config.data.folder=/data/imagenet/train --config.data.depth=midas

Presets:
  procedural  (default) the embedded analytic scenes with exact depth: `num_examples` training
              scenes plus a 'test' split of `num_eval_examples` scenes with true novel views.
  folder      a folder of images (class subfolders give labels) with depth from MiDaS disparity
              files beside the images (depth=midas, the reference's .npz format), depth maps
              (depth=depth_map, with depth_map_kind metric|inverse) or a depth estimator
              (depth=estimator, estimator='package.module:factory').
The dataset is written to config.data.dir (default DIR/data) and the summary to
DIR/prepare_summary.json. See ivd_jax/data/builders.py for every field.
"""
import ml_collections

from ivd_jax.data import builders
from ivd_jax.training import presets

PRESETS = ('procedural', 'folder')


def get_config(arg=None):
  preset = arg or 'procedural'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; use one of {PRESETS}')
  config = ml_collections.ConfigDict()
  config.mode = 'prepare'
  data = presets.data_defaults()
  for name, value in builders.PREPARE_DEFAULTS.items():
    data[name] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  if preset == 'procedural':
    data.source = 'procedural'
    data.depth = 'exact'
    data.resolution = 64
    data.num_examples = 1000
  else:
    data.source = 'folder'
    data.depth = 'midas'
    data.resolution = 128
  config.data = data
  config.log = ml_collections.ConfigDict()
  config.log.progress = True
  return config
