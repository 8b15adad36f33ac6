"""Sampling 3D-consistent view sets with G_u and G_c (METHOD 7-8).

  python -m ivd_jax.main --config=configs/sample.py:imagenet128 --workdir=DIR \
      --config.sample.uncond=GU_DIR_OR_CKPT --config.sample.cond=GC_DIR_OR_CKPT

Presets:
  tiny         (default) the quickstart's small models on procedural data: exact depth, so views
               are lifted with the data's near/far.
  imagenet128  the reference's picture settings: classes at random, guidance 3, 1000 DDPM steps
               for view 0, 50 DDIM steps with the condition edits for every further view.
  fid          the FID protocol of METHOD 10: view set `random`, classes uniform, guidance 0.5.
  photo        novel views of a real photograph: --config.sample.source_image=IMG plus
               --config.sample.source_depth=DISPARITY.npz (MiDaS scale) or an estimator.

Outputs go to DIR/samples/<run_name>/ (see ivd_jax/inference/views.py).
"""
import ml_collections


def sample_defaults() -> ml_collections.ConfigDict:
  """The `sample` section; other configs (eval, quickstart) reuse it."""
  s = ml_collections.ConfigDict()
  # Checkpoints: a training workdir (latest good step, EMA params) or an exported params checkpoint
  # (e.g. one converted from the reference's PyTorch release).
  s.uncond = ''
  s.cond = ''
  s.ema = True
  # Cameras: 'random' | '3x9' | 'swing' | 'orbit360' | 'custom' (custom_poses: (yaw, pitch, radius)
  # triples in radians; the first one is view 0 and should be (0, 0, 1)).
  s.viewset = '3x9'
  s.custom_poses = ()
  s.num_frames = 60  # views of 'swing' / 'orbit360' view sets
  s.num_instances = 4
  s.batch_size = 8  # instances generated together (padded to a multiple of the device count)
  s.seed = 0
  # Class labels: 'random' (uniform draw per instance from the seed), 'uniform' (cycle through
  # all classes evenly, the FID protocol), 'fixed' (cycle through `labels`). Ignored without classes.
  s.label_mode = 'random'
  s.labels = ()
  s.guidance = 3.0  # classifier-free guidance weight w: eps = (1 + w) eps(c) - w eps(null)
  s.sampler_uncond = 'ddpm'  # 'ddpm' (steps_uncond must be 1000) or 'ddim'
  s.steps_uncond = 1000
  s.steps_cond = 50  # DDIM steps of G_c
  s.eta = 0.0  # DDIM eta for both samplers
  # Condition edits inside G_c's DDIM (METHOD 7); 0 disables an edit.
  s.replace_rgb = 0.1
  s.replace_depth = 0.2
  s.constrain_depth = 0.5
  # Lifting generated views to 3D (METHOD 3, 8): the z-buffer depth is re-read with near/far.
  s.near = 0.6
  s.far = 5.0
  s.fov_deg = 45.0
  s.ssaa = 3
  s.atol = 0.03
  s.rtol = 0.03
  s.erode = 3
  # Start from a real photo instead of a G_u sample: image path and its depth, given as
  # 'midas' (raw MiDaS disparity .npy/.npz, reference scale), 'zbuf' (z-buffer in [0, 1] .npy or
  # 16-bit PNG), 'depth' (planar metric depth .npy) or 'estimator' ('module:callable' factory
  # that returns fn(uint8 [B, H, W, 3]) -> MiDaS-scale disparity).
  s.source_image = ''
  s.source_depth = ''
  s.source_depth_kind = 'midas'
  s.estimator = ''
  s.estimator_kwargs = ml_collections.ConfigDict()
  # Encoding the networks were trained with (used to turn real depth into the network encoding).
  s.data_near = 0.5
  s.data_far = 100.0
  # Fusion video: every generated view aggregated into a smooth camera path.
  s.video = True
  s.video_path = 'auto'  # 'auto' (orbit360 for that view set, else swing) | 'swing' | 'orbit360'
  s.video_frames = 48
  s.fps = 12.0
  # Outputs.
  s.run_name = ''  # default: <viewset>_seed<seed>
  s.export = True
  s.ply_max_depth = 0.0  # drop points farther than this (0 = keep all)
  s.consistency = True
  s.consistency_neighbours = 0  # 0 = every ordered pair of views; k = only the k nearest cameras
  s.progress = True
  return s


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  """Preset `arg` of the sample mode."""
  config = ml_collections.ConfigDict()
  config.mode = 'sample'
  config.sample = sample_defaults()
  config.mesh = ml_collections.ConfigDict({'shape': (-1, 1)})
  preset = arg or 'tiny'
  s = config.sample
  if preset == 'tiny':
    s.guidance = 0.0
    s.sampler_uncond = 'ddim'
    s.steps_uncond = 50
    s.steps_cond = 25
    s.near, s.far = 0.5, 100.0
  elif preset == 'imagenet128':
    s.guidance = 3.0
    s.num_instances = 8
  elif preset == 'fid':
    s.viewset = 'random'
    s.label_mode = 'uniform'
    s.guidance = 0.5
    s.video = False
    s.export = False
  elif preset == 'photo':
    s.guidance = 0.0
    s.num_instances = 1
  else:
    raise ValueError(f"unknown preset {preset!r} of configs/sample.py; use one of "
                     "'tiny', 'imagenet128', 'fid', 'photo'")
  return config
