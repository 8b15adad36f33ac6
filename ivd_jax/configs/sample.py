"""Sampling 3D-consistent view sets with G_u and G_c (docs/method.md §7-8).

  python -m ivd_jax.main --config=configs/sample.py:imagenet128 --workdir=DIR \
      --config.sample.uncond=GU_DIR_OR_CKPT --config.sample.cond=GC_DIR_OR_CKPT

Presets:
  tiny         (default) the quickstart's small models on procedural data: exact depth, so views
               are lifted with the data's near/far.
  imagenet128  the reference's picture settings: classes at random, guidance 3, 1000 DDPM steps
               for view 0, 50 DDIM steps with the condition edits for every further view.
  fid          the FID protocol of docs/method.md §10: view set `random`, classes uniform,
               guidance 0.5.
  photo        novel views of a real photograph: --config.sample.source_image=IMG plus
               --config.sample.source_depth=DISPARITY.npz (MiDaS scale) or an estimator.
  quickstart_sr
               super-resolve the quickstart's 32 px view sets with the tiny G_sr of
               configs/sr.py (32 -> 64 px): --config.sample.sr=DIR_SR
               --config.sample.sr_source=DIR/samples/quickstart_3x9; the quickstart's lifting
               settings, 5 DDIM steps from 0.15 T (the best of benchmarks/sr.py's starts).
Any preset adds the super-resolution stage with --config.sample.sr=DIR_SR (DIR/samples/<run>/sr/,
ivd_jax/pipelines/superres.py; sample.sr_mode 'consistent' or 'independent').

Outputs go to DIR/samples/<run_name>/ (see ivd_jax/pipelines/sample.py).
"""
import ml_collections

from ivd_jax.configs import common


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  """Preset `arg` of the sample mode."""
  config = ml_collections.ConfigDict()
  config.mode = 'sample'
  config.sample = common.sample_section()
  config.mesh = ml_collections.ConfigDict({'shape': (-1, 1)})
  config.distributed = common.distributed_section()
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
  elif preset == 'quickstart_sr':
    # configs/quickstart.py's exact-depth lifting at 32 px (its views' encoding and thresholds).
    s.near, s.far = 0.5, 100.0
    s.erode, s.atol, s.rtol = 1, 0.1, 0.1
    s.clip_denoised = True
    s.sr_guidance = 0.0
    # From the bilinear view diffused to 0.15 T: measured the closest to the true views of the
    # starts tried (benchmarks/README.md "Super-resolution"), and 5 steps suffice from there.
    s.sr_start, s.sr_steps = 0.15, 5
    s.video_path, s.video_frames = 'swing', 36
  else:
    raise ValueError(f"unknown preset {preset!r} of configs/sample.py; use one of "
                     "'tiny', 'imagenet128', 'fid', 'photo', 'quickstart_sr'")
  return config
