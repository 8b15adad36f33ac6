"""The `sample` section: how view sets are sampled, lifted, exported and scored.

Read by configs/sample.py, eval.py and quickstart.py, and by training previews through
common.train_config.
"""
import ml_collections


def sample_section() -> ml_collections.ConfigDict:
  """The `sample` section of configs/sample.py; eval and the quickstart reuse it."""
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
  # all classes evenly, the FID protocol), 'fixed' (cycle through `labels`). Ignored without
  # classes.
  s.label_mode = 'random'
  s.labels = ()
  s.guidance = 3.0  # classifier-free guidance weight w: eps = (1 + w) eps(c) - w eps(null)
  s.sampler_uncond = 'ddpm'  # 'ddpm' (steps_uncond must be 1000) or 'ddim'
  s.steps_uncond = 1000
  s.steps_cond = 50  # DDIM steps of G_c
  s.eta = 0.0  # DDIM eta for both samplers
  s.clip_denoised = False  # clip predicted x_0 to [-1, 1] each step (the reference: False)
  # Condition edits inside G_c's DDIM (docs/method.md §7); 0 disables an edit. The one home of
  # these weights (training previews copy them into config.log).
  s.replace_rgb = 0.1
  s.replace_depth = 0.2
  s.constrain_depth = 0.5
  # Lifting generated views to 3D (docs/method.md §3, §8): the z-buffer depth is re-read with
  # near/far. The depth encoding the networks were trained with (data near/far, used to turn a
  # photo's depth into the network encoding) is read from the G_c checkpoint's own config.
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
  # Fraction of the photo's depth that may be invalid (NaN/inf, or <= 0 for depth) and is filled
  # from the nearest valid pixel; more is refused (prepare's rule, ivd_jax.io.ingest).
  s.max_invalid_depth = 0.5
  # Fusion video: every generated view aggregated into a smooth camera path.
  s.video = True
  s.video_path = 'auto'  # 'auto' (orbit360 for that view set, else swing) | 'swing' | 'orbit360'
  s.video_frames = 48
  s.fps = 12.0
  # Outputs.
  s.run_name = ''  # default: <viewset>_seed<seed>
  s.export = True
  s.ply_max_depth = 0.0  # drop points farther than this (0 = keep all)
  # Grids, overview and orbit video: views enlarged (nearest neighbour) to at least this many
  # pixels, so 32 px views are not thumbnails; the per-view PNGs keep the generated size.
  s.grid_view_px = 128
  s.consistency = True
  s.consistency_neighbours = 0  # 0 = every ordered pair of views; k = only the k nearest cameras
  # TSED (evaluation/tsed.py, Yu et al. 2023): the paper's 2 px / 10 matches at 256 px, the
  # authors' COLMAP ratio test 0.8 and SIFT edge threshold 30; each view with its 2 nearest.
  s.tsed, s.tsed_error, s.tsed_matches, s.tsed_resolution = True, 2.0, 10, 256
  s.tsed_neighbours, s.tsed_ratio, s.tsed_edge = 2, 0.8, 30.0
  s.tsed_sweep = (1.0, 2.0, 4.0, 8.0)  # TSED also at these T_error (px)
  # Fused mesh per instance (sampling/mesh.py): TSDF of all views in mesh_bounds (world units;
  # () = the lifted views' box, voxel coarsened to <= mesh_max_voxels), truncation in voxels.
  # The default box holds the procedural scenes (wall z -1.6..-2.3) around the orbit centre.
  s.mesh, s.mesh_voxel, s.mesh_truncation, s.mesh_max_voxels = True, 0.025, 3.0, 8_000_000
  s.mesh_bounds = ((-1.6, -1.0, -2.6), (1.6, 1.0, 0.6))
  s.mesh_frustum_size = 0.08  # planar depth of the camera frustums in cameras.ply
  # Super-resolution stage after the view set (ivd_jax/sampling/superres.py): every view through
  # G_sr with DDIM, written to samples/<run>/sr/. '' = no stage.
  s.sr = ''  # a G_sr training workdir or exported params (e.g. a converted reference 256_128)
  # 'consistent': view n's SR is pinned (condition edits) to the SR views before it, warped into
  # its camera and aggregated, so only newly revealed pixels are free; 'independent': every view
  # on its own.
  s.sr_mode = 'consistent'
  s.sr_steps = 50  # DDIM steps
  # The chain starts at t0 = sr_start * T: 1.0 = from pure noise (the reference); below 1, from the
  # bilinear upsampling (the warped SR views where pinned) diffused to t0, the sr_steps spent
  # below it (Chung et al. 2022, "Come-Closer-Diffuse-Faster").
  s.sr_start = 1.0
  s.sr_guidance = 3.0  # classifier-free guidance of class-conditional G_sr (the reference's)
  s.sr_replace_rgb = 1.0  # edit weights of the warped SR views ('consistent'); 0 disables
  s.sr_replace_depth = 1.0
  s.sr_constrain_depth = 0.0
  # Super-resolve the views of an earlier run (its views.npz, or the run folder) instead of
  # sampling new ones: sample.uncond / sample.cond are then not needed.
  s.sr_source = ''
  s.progress = True
  return s
