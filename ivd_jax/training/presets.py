"""Training configurations of G_u and G_c: shared defaults and the presets of METHOD 6 and 9.

configs/uncond.py and configs/cond.py are thin wrappers around train_config(); the quickstart
builds its training stages from the same function. Presets change numbers, never code paths.
"""
from typing import Optional

import ml_collections

PRESETS = ('tiny', 'imagenet128', 'dogs128', 'elephants128', 'horses128')

# Reference datasets (METHOD 9), used in the "missing dataset" message.
DATASETS = {'imagenet128': 'ImageNet (1.28 M images, 1000 classes)',
            'dogs128': 'SDIP Dogs (125 K images)', 'elephants128': 'SDIP Elephants (38 K images)',
            'horses128': 'LSUN Horses (163 K images)'}


def data_defaults() -> ml_collections.ConfigDict:
  """The `data` section read by prepare and by the input pipeline (contract field names)."""
  d = ml_collections.ConfigDict()
  d.source = 'procedural'  # 'procedural' | 'folder'
  d.folder = ''  # image folder for source='folder' (ImageNet layout: class subfolders)
  d.depth = 'exact'  # 'exact' (procedural) | 'midas' | 'depth_map' | 'estimator'
  d.resolution = 32
  d.num_examples = 2000  # procedural scenes
  d.dir = ''  # the prepared dataset; '' = WORKDIR/data
  d.seed = 0
  d.flip = True
  d.num_workers = 0
  d.near = 0.5
  d.far = 100.0
  d.num_classes = 0
  return d


def model_defaults() -> ml_collections.ConfigDict:
  """UNet fields (ivd_jax.models.unet.UNet) for the single-category 128 px network."""
  m = ml_collections.ConfigDict()
  m.image_size = 128
  m.in_channels = 4  # 4 = G_u, 10 = G_c
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
  m.remat = False
  return m


def train_config(preset: Optional[str] = 'tiny', *, conditional: bool = False
                 ) -> ml_collections.ConfigDict:
  """The full training configuration of G_u (conditional=False) or G_c for a preset."""
  preset = preset or 'tiny'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; use one of {", ".join(PRESETS)}')
  config = ml_collections.ConfigDict()
  config.mode = 'train'
  config.preset = preset
  # G_c only: a G_u training workdir or exported params; its weights initialise G_c with the new
  # input channels zero (METHOD 6). '' = random initialisation.
  config.init_from = ''

  config.data = data_defaults()
  # Procedural prepare also writes a 'test' split with true novel views (evaluation); training
  # only reads 'train'.
  config.data.num_eval_examples = 64
  config.model = model_defaults()
  config.model.in_channels = 10 if conditional else 4

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.num_steps = 1000  # T
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.diffusion.p_uncond = 0.1  # class label dropped to -1 (classifier-free guidance)

  # Training pairs of G_c (METHOD 5); ignored by G_u.
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

  # Multi-process runs (ivd_jax/distributed.py). TPU pods and SLURM steps are detected; set
  # coordinator_address/num_processes/process_id for anything else (e.g. localhost tests).
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ''
  config.distributed.num_processes = 1
  config.distributed.process_id = 0
  config.distributed.local_device_ids = ()
  config.distributed.cpu_collectives = ''  # 'gloo' for multi-process CPU runs
  config.distributed.enabled = False

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 5000
  config.checkpoint.keep = 3  # latest checkpoints kept
  config.checkpoint.keep_every = 50_000  # plus every multiple of this (0 = none)
  config.checkpoint.async_save = True

  config.log = ml_collections.ConfigDict()
  config.log.every_steps = 100
  config.log.progress = True  # progress bar with ETA on process 0
  config.log.sample_every_steps = 10_000  # sample grids; 0 = never
  config.log.num_samples = 8
  config.log.sample_steps = 50  # DDIM steps of the preview grids
  config.log.tensorboard = True

  if preset == 'tiny':
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
    # The reference recipe (METHOD 9): AdamW 1e-4, no weight decay, no warm-up, no clipping,
    # EMA 0.9999 every step; bfloat16 compute with float32 master weights on accelerators.
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
