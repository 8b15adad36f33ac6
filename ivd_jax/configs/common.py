"""The sections every config shares: data, model, training recipe, sampling, distributed.

The one home of every default number (docs/method.md gives where each comes from). The mode
configs (uncond, cond, prepare, sample, eval, quickstart) build on these; presets change
numbers, never code paths. Library code takes its settings from the resulting config. The
`sample` section is in configs/sampling.py (common.sample_section names it here too).
"""
from typing import Optional

import ml_collections

from ivd_jax.configs.sampling import sample_section  # the sample section lives in sampling.py

PRESETS = ('tiny', 'imagenet128', 'dogs128', 'elephants128', 'horses128')
# Presets of the super-resolution network (role 'sr', configs/sr.py): the reference's two 256_128
# networks and a small one on the procedural scenes.
SR_PRESETS = ('tiny', 'imagenet256', 'singlecategory256')

# Reference datasets (docs/method.md §9), used in the "missing dataset" message.
DATASETS = {'imagenet128': 'ImageNet (1.28 M images, 1000 classes)',
            'dogs128': 'SDIP Dogs (125 K images)', 'elephants128': 'SDIP Elephants (38 K images)',
            'horses128': 'LSUN Horses (163 K images)'}


def data_section() -> ml_collections.ConfigDict:
  """The `data` section: what prepare writes and the input pipeline and training read."""
  d = ml_collections.ConfigDict()
  d.source = 'procedural'  # 'procedural' | 'folder'
  d.folder = ''  # image folder for source='folder' (ImageNet layout: class subfolders)
  d.depth = 'exact'  # 'exact' (procedural) | 'midas' | 'depth_map' | 'estimator'
  d.resolution = 32
  d.num_examples = 2000  # procedural scenes
  d.dir = ''  # the prepared dataset; '' = WORKDIR/data (a local folder or gs://bucket/...)
  # Where a dataset on a bucket is copied before the input pipeline reads it (ArrayRecord reads
  # local files only); '' = $IVD_JAX_CACHE or ~/.cache/ivd_jax. Each host copies the dataset once
  # and refreshes only changed files; for a dataset larger than the local disk, mount the bucket
  # (gcsfuse) and set data.dir to the mount instead.
  d.cache_dir = ''
  d.seed = 0
  d.flip = True
  d.num_workers = 0
  d.near = 0.5
  d.far = 100.0
  d.num_classes = 0
  # Prepare only: folders, depth files and estimators, the procedural test split, shards.
  d.split = 'train'  # split written from a folder
  d.depth_folder = ''  # where depth files live ('' = beside each image), mirroring the layout
  d.depth_map_kind = 'metric'  # 'metric' (planar depth) | 'inverse' (disparity)
  d.depth_map_scale = 1.0  # raw value * scale = depth (metric) or disparity (inverse)
  d.estimator = ''  # 'package.module:factory' for depth='estimator'
  d.estimator_kwargs = ml_collections.ConfigDict()
  d.estimator_batch_size = 16
  d.estimator_resolution = 512  # the estimator sees the same centre crop at this size
  d.max_invalid_depth = 0.05  # fraction of NaN/inf/<=0 depth filled from neighbours; more: skip
  # prepare fails (after writing its summary) when it writes no example or skips more than this
  # fraction of the images it found.
  d.max_skipped_fraction = 0.5
  d.labels = 'auto'  # 'auto' (class subfolders give labels) | 'none' (all -1)
  d.classes = ''  # optional comma-separated class list fixing the label order
  d.num_eval_examples = 64  # procedural 'test' split
  d.novel_viewset = '3x9'  # procedural test-split views: a view set name, 'custom' or ''
  d.novel_poses = ()  # 'custom': (yaw, pitch[, radius]) rows, the first the source view
  d.examples_per_shard = 1024
  d.prepare_workers = 0  # local worker processes; 0 = all CPU cores
  return d


def distributed_section() -> ml_collections.ConfigDict:
  """The `distributed` section of every mode: multi-process initialisation (ivd_jax.main).

  Read by parallel.maybe_initialize before anything touches a device. TPU pod slices and SLURM
  job steps are detected; set coordinator_address / num_processes / process_id for anything else
  (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID in the environment, as
  launch/local.sh NUM_PROCESSES=2 does; parallel.detect_cluster lists every rule).
  """
  d = ml_collections.ConfigDict()
  d.coordinator_address = ''  # 'host:port' of process 0; '' = detect (or single process)
  d.num_processes = 1
  d.process_id = 0
  d.local_device_ids = ()  # this process's devices; () = all local ones
  d.cpu_collectives = ''  # 'gloo' for multi-process CPU runs
  d.enabled = False  # True: jax.distributed.initialize() with JAX's own cluster detection
  # Training only: every this many steps the processes all-reduce their local stop flags (Ctrl-C
  # on one host; SIGTERM where JAX's preemption service is off), so that all save the same step
  # and stop together. SIGTERM with the preemption service on (the default of multi-process
  # runs) is agreed at the next step by the service itself. 0 = never (one host's Ctrl-C is then
  # ignored by a multi-process run).
  d.stop_check_every_steps = 10
  # The workdir lock (ivd_jax/io/lock.py) every writing mode holds: its holder rewrites the
  # lock's heartbeat this often, and another host's lock whose heartbeat is older than
  # lock_stale_after_s is taken over (a lock of this host is taken over as soon as its pid is gone).
  d.lock_heartbeat_s = 60.0
  d.lock_stale_after_s = 600.0
  return d


def model_section() -> ml_collections.ConfigDict:
  """UNet fields (ivd_jax.models.unet.UNet) of the single-category 128 px network.

  The input channels are not here: the network role (config.role, ivd_jax.roles) sets them.
  """
  m = ml_collections.ConfigDict()
  m.image_size = 128
  m.out_channels = 4
  m.model_channels = 128
  m.channel_mult = (1, 1, 2, 3, 4)
  m.num_res_blocks = 2
  m.attention_resolutions = (32, 16, 8)
  m.num_classes = 0
  m.num_head_channels = 64
  m.num_heads = 1
  m.num_groups = 32
  m.dropout = 0.0
  m.dtype = 'float32'  # compute dtype; parameters are always float32
  # What each UNet block keeps for the backward pass: 'none' (all activations), 'dots' (conv and
  # matmul outputs; norms and activations recomputed), 'full' (nothing; the block runs again).
  m.remat = 'none'
  m.attention = 'xla'  # 'xla' | 'cudnn' (fused flash attention: NVIDIA GPUs, bfloat16)
  return m


def train_config(preset: Optional[str] = 'tiny', *, role: str = 'uncond'
                 ) -> ml_collections.ConfigDict:
  """The full training configuration of network `role` ('uncond' = G_u, 'cond' = G_c,
  'sr' = G_sr, whose presets are SR_PRESETS)."""
  preset = preset or 'tiny'
  known = SR_PRESETS if role == 'sr' else PRESETS
  if preset not in known:
    raise ValueError(f'unknown preset {preset!r}; use one of {", ".join(known)}')
  config = ml_collections.ConfigDict()
  config.mode = 'train'
  config.preset = preset
  config.role = role  # ivd_jax.roles: 'uncond' (G_u) | 'cond' (G_c) | 'sr' (G_sr)
  # G_c only: a G_u training workdir or exported params; its weights initialise G_c with the new
  # input channels zero (docs/method.md §6). '' = random initialisation.
  config.init_from = ''

  config.data = data_section()
  config.model = model_section()

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.num_steps = 1000  # T
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.diffusion.p_uncond = 0.1  # class label dropped to -1 (classifier-free guidance)

  # Training pairs of G_c (docs/method.md §5); ignored by G_u.
  # The random camera (yaw, pitch ~ N(0, 0.15^2), r = 1 + N(0, 0.1^2), target ~ N(0, 0.05^2))
  # is geometry.cameras.random_training_view.
  config.pairs = ml_collections.ConfigDict()
  config.pairs.prewarp_noise = 0.005  # sigma ~ U(0, this)
  config.pairs.blur_prob = 0.8
  config.pairs.blur_sigma_max = 1.0
  config.pairs.erosion_sizes = (1, 3, 5, 7, 9)
  config.pairs.ssaa = 3
  config.pairs.atol = 0.02
  config.pairs.rtol = 0.02
  config.pairs.fov_deg = 45.0

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 500_000
  config.train.batch_size = 64  # global, over all processes and devices
  config.train.seed = 0

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 1e-4
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.weight_decay = 0.0
  config.optim.warmup_steps = 0
  config.optim.schedule = 'constant'  # 'constant' | 'cosine'
  config.optim.decay_steps = 0  # cosine: total steps of the decay (0 = train.num_steps)
  config.optim.grad_clip = 0.0  # global-norm clipping; 0 = off (the reference)
  config.optim.ema_decay = 0.9999
  config.optim.ema_warmup = False

  config.mesh = ml_collections.ConfigDict()
  config.mesh.shape = (-1, 1)  # ('data', 'fsdp'); -1 = all remaining devices
  config.mesh.fsdp_min_size = 2**14  # arrays with fewer elements stay replicated under fsdp

  config.distributed = distributed_section()

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 5000
  config.checkpoint.keep = 3  # latest checkpoints kept
  config.checkpoint.keep_every = 50_000  # plus every multiple of this (0 = none)
  config.checkpoint.async_save = True
  # Resuming needs each process's input-iterator state (checkpoints/<step>/data/); when it is
  # missing (deleted, or saved by another process count) the run stops with a ConfigError.
  # True: resume anyway with the input order restarted from the beginning of the dataset (the
  # run is then no longer bitwise equal to an uninterrupted one).
  config.checkpoint.allow_fresh_data_order = False

  config.log = ml_collections.ConfigDict()
  config.log.every_steps = 100
  config.log.progress = True  # progress bar with ETA on process 0
  config.log.sample_every_steps = 10_000  # sample grids; 0 = never
  config.log.num_samples = 8
  config.log.sample_steps = 50  # DDIM steps of the preview grids
  # G_c's preview grids edit x_0 like sampling does (the weights of the sample section).
  sampling = sample_section()
  for edit in ('replace_rgb', 'replace_depth', 'constrain_depth'):
    config.log[edit] = sampling[edit]
  config.log.tensorboard = True

  if role == 'sr':
    sr_preset(config, preset)
  elif preset == 'tiny':
    # Embedded procedural scenes at 32 px with a ~2.7 M-parameter UNet: trains on a laptop CPU.
    config.data.resolution = 32
    config.model.image_size = 32
    config.model.model_channels = 32
    config.model.channel_mult = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (8,)
    config.model.num_head_channels = 32
    config.train.num_steps = 400
    config.train.batch_size = 16
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 50
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.999
    config.optim.ema_warmup = True
    config.checkpoint.every_steps = 200
    config.checkpoint.keep_every = 0
    config.log.every_steps = 20
    config.log.sample_every_steps = 0
    config.log.num_samples = 8
    config.log.sample_steps = 25
  else:
    # The reference recipe (docs/method.md §9): AdamW 1e-4, no weight decay, no warm-up, no
    # clipping, EMA 0.9999 every step; bfloat16 compute with float32 master weights on accelerators.
    config.data.source = 'folder'
    config.data.resolution = 128
    config.model.image_size = 128
    config.model.dtype = 'bfloat16'
    if preset == 'imagenet128':
      config.data.depth = 'midas'
      config.data.num_classes = 1000
      config.model.model_channels = 256
      config.model.num_classes = 1000
      config.train.batch_size = 128  # 16 per GPU x 8
    else:
      config.data.depth = 'midas'
      config.train.batch_size = 64  # 8 per GPU x 8
  return config


def sr_preset(config: ml_collections.ConfigDict, preset: str) -> None:
  """The numbers of super-resolution preset `preset` (SR_PRESETS) on a train_config.

  The `sr` section: the low-resolution copy made in the train step (ivd_jax/roles/sr.py).
  imagenet256 / singlecategory256 are the reference's rgbd_*_adm_256_128_small_sr configs
  (docs/method.md §6: 105,714,052 / 105,202,052 parameters) with its recipe: batch 4 per GPU on
  8 GPUs, AdamW 1e-4, EMA 0.9999, 1 M steps. tiny super-resolves the quickstart's 32 px views to
  64 px on the procedural scenes.
  """
  config.sr = ml_collections.ConfigDict()
  config.sr.low_resolution = 128
  config.sr.blur_sigma_max = 1.0  # colour blur sigma ~ U(0, this) + 1e-3 (the reference)
  # Previews sample like the independent SR stage: the copy enters through the network input
  # only, no condition edits.
  for edit in ('replace_rgb', 'replace_depth', 'constrain_depth'):
    config.log[edit] = 0.0
  m = config.model
  if preset == 'tiny':
    config.data.resolution = m.image_size = 64
    config.sr.low_resolution = 32
    m.model_channels = 32
    m.channel_mult = (1, 2, 2)
    m.num_res_blocks = 1
    m.attention_resolutions = ()
    m.num_head_channels = 32
    m.num_groups = 8  # 4 channels per group (32 groups of 32 channels would normalise each alone)
    config.train.num_steps = 1000
    config.train.batch_size = 8
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 50
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.999
    config.optim.ema_warmup = True
    config.checkpoint.every_steps = 500
    config.checkpoint.keep_every = 0
    config.log.every_steps = 50
    config.log.sample_every_steps = 0
    config.log.sample_steps = 25
    return
  config.data.source = 'folder'
  config.data.depth = 'midas'
  config.data.resolution = m.image_size = 256
  m.model_channels = 128
  m.channel_mult = (1, 1, 2, 3, 4)
  m.num_res_blocks = 2
  m.attention_resolutions = (64, 32, 16)
  m.num_head_channels = 64
  m.dtype = 'bfloat16'
  config.train.num_steps = 1_000_000
  config.train.batch_size = 32  # 4 per GPU x 8
  config.checkpoint.keep_every = 50_000
  if preset == 'imagenet256':
    config.data.num_classes = m.num_classes = 1000

