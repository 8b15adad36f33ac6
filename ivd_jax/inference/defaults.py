"""Defaults of the `sample` config section (configs/sample.py, configs/quickstart.py, eval)."""
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
  # View-buffer slots (0 = the number of views). Larger lets view sets of different lengths share
  # one compilation, at the cost of aggregating over every slot.
  s.buffer_size = 0
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
  s.clip_denoised = False  # clip predicted x_0 to [-1, 1] each step (the reference: False)
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
