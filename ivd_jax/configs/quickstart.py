"""The quickstart: the whole method on the embedded procedural scenes, on a laptop CPU.

  python -m ivd_jax.main --config=configs/quickstart.py --workdir=/tmp/ivd_quickstart

prepares procedural RGBD data, trains G_u, trains G_c from G_u's weights, then samples twice:
  full generation   view 0 from G_u, the 3x9 view set and a fusion orbit video from G_c
                    (DIR/samples/quickstart_3x9/);
  novel views       view 0 is the TRUE render of a held-out procedural scene, further views and
                    the video from G_c (DIR/samples/quickstart_novel_views/);
both with the condition edits at 1.0 (the reference: 0.1 / 0.2), i.e. the visible content pinned
to the warped condition and G_c filling only the revealed holes,
and scores both with the 3D-consistency metric next to the true views of the same held-out scenes
(the ceiling). Re-running resumes every stage.

Presets: `default` (G_u 1000 steps, G_c 400 steps from G_u, batch 8 at 32 px; 4 instances of 3x9
+ 36-frame video per run), `smoke` (16 px, a minimal UNet, 2 steps of everything; the test's run),
`pretrained` (no training: the demo G_u / G_c shipped in ivd_jax/pretrained/demo32, trained by
this project on the procedural scenes, sample the default's two runs; README "The quickstart").

Measured on the idle 2-core development CPU (jax 0.10.2, cold compile, 2026-11-25):
  12.5 min in all: prepare 9 s, G_u 364 s, G_c 181 s, full generation 128 s, novel views 64 s;
  eps loss G_u 0.956 (step 20) -> 0.035-0.053 (steps 980-1000);
  3D consistency on the 3x9 cameras (702 view pairs over 4 instances, colour PSNR / depth
  agreement / co-visible fraction):
    full generation   20.0 dB / 0.928 / 0.406   (G_u's view 0: wall, ground and objects)
    novel views       21.0 dB / 0.948 / 0.395   (true view 0 of test-split scenes; 2026-12-01)
    true views        22.2 dB / 0.995 / 0.411   (ceiling, the same test-split scenes)
"""
import pathlib

import ml_collections

from ivd_jax.configs import common

# The demo networks inside the package (found from this file, so it works installed too):
# ivd_jax/tools/export_demo.py wrote them from the training command in README "The quickstart".
PRETRAINED_DIR = str(pathlib.Path(__file__).resolve().parents[1] / 'pretrained' / 'demo32')
PRESETS = ('default', 'smoke', 'pretrained')


def get_config(arg: str = 'default') -> ml_collections.ConfigDict:
  """Preset `arg` of the quickstart."""
  preset = arg or 'default'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} of configs/quickstart.py; use one of '
                     f'{", ".join(PRESETS)}')
  config = ml_collections.ConfigDict()
  config.mode = 'quickstart'
  # The two training stages: the `tiny` preset of configs/uncond.py and configs/cond.py sharing
  # ONE data, model and mesh section (overriding config.data.* changes both stages).
  config.uncond = common.train_config('tiny', role='uncond')
  config.cond = common.train_config('tiny', role='cond')
  config.data = config.uncond.data
  config.data.dir = ''  # '' = WORKDIR/data
  config.model = config.uncond.model
  config.mesh = config.uncond.mesh
  config.distributed = config.uncond.distributed  # read by ivd_jax.main; the stages share it
  for stage, num_steps in ((config.uncond, 1000), (config.cond, 400)):
    stage.data, stage.model, stage.mesh = config.data, config.model, config.mesh
    stage.distributed = config.distributed
    # Batch 8 at twice the tiny preset's learning rate: more updates per CPU-second, which is
    # what a minutes-long run is short of.
    stage.train.num_steps = num_steps
    stage.train.batch_size = 8
    stage.optim.lr = 1e-3
    # One checkpoint at the end (a stage resumes as a whole on this small run); no preview
    # grids: the sampled view sets are the pictures.
    # `+ 0` makes a derived reference: it follows num_steps, but overriding every_steps no longer
    # rewrites num_steps through the shared reference.
    stage.checkpoint.every_steps = stage.train.get_ref('num_steps') + 0
    stage.log.sample_every_steps = 0
  # G_c starts from G_u's weights: the pipeline sets cond.init_from to WORKDIR/uncond.
  config.sample = common.sample_section()
  s = config.sample
  s.viewset = '3x9'
  s.num_instances = 4
  s.batch_size = 4
  s.guidance = 0.0  # unconditional procedural data: no classes
  # View 0 with the reference's 1000 DDPM steps (cheap at 32 px); predicted x_0 clipped to
  # [-1, 1] at every step, without which a network trained for minutes samples saturated noise.
  s.sampler_uncond = 'ddpm'
  s.steps_uncond = 1000
  s.steps_cond = 25
  s.clip_denoised = True
  # Condition edits (docs/method.md §7) at 1.0 instead of the reference's 0.1 / 0.2: networks
  # trained for minutes barely follow their condition, so the visible content is pinned to the
  # warped condition and G_c only fills the newly revealed holes.
  s.replace_rgb = 1.0
  s.replace_depth = 1.0
  # Exact depth: lift views with the data's own z-buffer encoding.
  s.near, s.far = config.data.near, config.data.far
  # Lifting at 32 px: docs/method.md §8's erosion radius 3 and depth-edge tolerances 0.03 are set
  # for 128 px; a depth step spans 4x fewer pixels here and the grazing ground plane changes depth
  # by more than 3 % per row. Scaled by 32/128: measured on a held-out scene (view 0 -> the
  # nearest 3x9 views), radius 3 / 0.03 keeps colour for 16-22 % of the target pixels (mostly
  # the back wall), radius 1 / 0.1 for 51-63 % at 0.03 mean colour error.
  s.erode = 1
  s.atol = s.rtol = 0.1
  s.video_path = 'swing'
  s.video_frames = 36
  s.run_name = 'quickstart_3x9'
  # Second run, novel views of unseen scenes: view 0 is the true render of the i-th scene of the
  # test split that prepare writes; further views by G_c. Overrides of the `sample` section.
  config.novel = ml_collections.ConfigDict({
      'num_instances': 4,
      'run_name': 'quickstart_novel_views',
  })
  # The test split's true views of its first `ceiling_scenes` scenes (the novel-view run's
  # scenes are the first of them), scored like the generated ones (the ceiling). Prepare renders
  # them on the sampled view set's cameras.
  config.ceiling_scenes = 4
  config.data.novel_viewset = s.viewset
  # '' trains G_u and G_c in WORKDIR; a folder with exported uncond/ and cond/ networks skips
  # training and samples from them.
  config.pretrained = ''

  if preset == 'pretrained':
    config.pretrained = PRETRAINED_DIR
    # Prepare writes only what sampling reads: the test split's scenes for the novel views and
    # the ceiling (and one training scene, prepare's minimum).
    config.data.num_examples = 1
    config.data.num_eval_examples = config.get_ref('ceiling_scenes')
    s.run_name = 'pretrained_3x9'
    config.novel.run_name = 'pretrained_novel_views'

  if preset == 'smoke':
    # Seconds of compute (the test's shrunk run): 16 px, a minimal UNet (one level, no attention,
    # narrow channels: compiling the two train steps and the samplers dominates), 2 steps of
    # everything. tests/test_quickstart.py: 88 s wall with a cold compile cache (was ~300 s).
    config.data.num_examples = 16
    config.data.num_eval_examples = 8
    config.data.resolution = 16
    config.model.image_size = 16
    config.model.model_channels = 16
    config.model.channel_mult = (1,)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = ()
    config.model.num_groups = 8
    config.model.num_head_channels = 16
    for stage in (config.uncond, config.cond):
      stage.train.num_steps = 2
      stage.log.every_steps = 2
    s.viewset = config.data.novel_viewset = 'custom'
    s.custom_poses = config.data.novel_poses = ((0.0, 0.0, 1.0), (0.3, 0.0, 1.0), (-0.3, 0.1, 1.0))
    s.num_instances = 2
    s.batch_size = 8
    s.sampler_uncond = 'ddim'
    s.steps_uncond = 2
    s.steps_cond = 2
    s.video_frames = 4
    s.progress = False
    s.run_name = 'quickstart_smoke'
    config.novel.num_instances = 2
    config.novel.run_name = 'quickstart_smoke_novel'
    config.ceiling_scenes = 2
  return config
