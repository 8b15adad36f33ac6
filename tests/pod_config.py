"""G_u shrunk for the simulated TPU pod of tests/test_launch.py: 16 px, a 0.1 M-parameter UNet,
ten steps of global batch 8, a checkpoint every 3 steps. `launch/tpu_pod.sh run
tests/pod_config.py WORKDIR` trains it with no overrides."""
from ivd_jax.configs import common

SMALL = {
    'data.resolution': 16, 'model.image_size': 16, 'data.num_examples': 16,
    'data.num_eval_examples': 0,
    'model.model_channels': 16, 'model.channel_mult': (1,), 'model.num_res_blocks': 1,
    'model.attention_resolutions': (), 'model.num_head_channels': 16, 'model.num_groups': 8,
    'train.batch_size': 8, 'train.num_steps': 10, 'optim.warmup_steps': 0,
    'log.progress': False, 'log.sample_every_steps': 0, 'log.every_steps': 1,
    'log.tensorboard': False, 'checkpoint.every_steps': 3,
}


def get_config(arg=None):
  del arg
  config = common.train_config('tiny', role='uncond')
  for name, value in SMALL.items():
    section, field = name.split('.')
    config[section][field] = value
  return config
