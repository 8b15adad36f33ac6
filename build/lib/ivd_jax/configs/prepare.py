"""Dataset preparation (mode 'prepare'): RGBD examples -> a TFDS ArrayRecord dataset.

  python -m ivd_jax.main --config=configs/prepare.py[:procedural] --workdir=DIR
  python -m ivd_jax.main --config=configs/prepare.py:folder --workdir=DIR \
      --config.data.folder=/data/photos --config.data.depth=midas
  python -m ivd_jax.main --config=configs/prepare.py:imagenet128 --workdir=DIR \
      --config.data.folder=/data/imagenet/train        # then, into the same dataset:
  python -m ivd_jax.main --config=configs/prepare.py:imagenet128 --workdir=DIR \
      --config.data.folder=/data/imagenet/val --config.data.split=validation

Presets:
  procedural  (default) the embedded analytic scenes with exact depth at 64 px: `num_examples`
              training scenes plus a 'test' split of `num_eval_examples` scenes with their true
              novel views (`novel_viewset`).
  folder      a folder of images at 128 px (class subfolders give labels) with depth from MiDaS
              disparity files beside the images (depth=midas: <stem>.npz key arr_0 or
              <stem>.npy, the reference's format), depth maps (depth=depth_map, depth_folder,
              depth_map_kind metric|inverse, depth_map_scale) or a depth estimator
              (depth=estimator, estimator='package.module:factory', estimator_kwargs).
  imagenet128, dogs128, elephants128, horses128
              `folder` with the data settings of the training presets of the same name
              (configs/common.py): 128 px, MiDaS depth; ImageNet keeps its 1000 class
              folders as labels, the single-category sets are unlabeled.
The dataset is written to config.data.dir (default DIR/data) and the summary to
DIR/prepare_summary.json. Sharding and resume: examples_per_shard, prepare_workers (0 = auto);
multi-host jobs run this command on every host. configs/common.py:data_section lists every field.
"""
import ml_collections

from ivd_jax.configs import common

DATASET_PRESETS = ('imagenet128', 'dogs128', 'elephants128', 'horses128')
PRESETS = ('procedural', 'folder') + DATASET_PRESETS


def get_config(arg=None):
  preset = arg or 'procedural'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; use one of {", ".join(PRESETS)}')
  config = ml_collections.ConfigDict()
  config.mode = 'prepare'
  config.preset = preset
  # The data numbers of the training preset of the same name.
  data = common.train_config(preset if preset in DATASET_PRESETS else 'tiny').data
  if preset == 'procedural':
    data.source = 'procedural'
    data.depth = 'exact'
    data.resolution = 64
    data.num_examples = 1000
  elif preset == 'folder':
    data.source = 'folder'
    data.depth = 'midas'
    data.resolution = 128
  elif preset != 'imagenet128':
    data.labels = 'none'  # single-category sets train an unconditional model
  config.data = data
  config.log = ml_collections.ConfigDict()
  config.log.progress = True
  config.distributed = common.distributed_section()
  return config
