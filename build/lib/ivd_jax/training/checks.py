"""Training configuration checks: every invalid setting named with its fix, before compiling."""
from typing import Any

from etils import epath

from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax import roles


def validate_config(config: Any, *, num_devices: int,
                    process_count: int = 1) -> None:
  """Raises ConfigError naming the field and the fix for every invalid setting.

  Checks what ml_collections cannot: the role, the resolution the UNet takes, the batch against
  the mesh and the processes, schedule and interval ranges, init_from.
  """
  m, d, t = config.model, config.data, config.train
  if m.image_size != d.resolution:
    raise errors.ConfigError(
        'model.image_size', f'{m.image_size} differs from data.resolution {d.resolution}',
        f'set both to the same size, e.g. --config.model.image_size={d.resolution}')
  factor = 2**(len(m.channel_mult) - 1)
  if m.image_size % factor:
    raise errors.ConfigError(
        'data.resolution', f'{m.image_size} px cannot pass the UNet\'s {len(m.channel_mult) - 1}'
        f' down-sampling levels (channel_mult={tuple(m.channel_mult)})',
        f'use a resolution divisible by {factor}, e.g. {max(factor, m.image_size // factor * factor)}')
  sizes = [m.image_size // 2**i for i in range(len(m.channel_mult))]
  bad = [r for r in m.attention_resolutions if r not in sizes]
  if bad:
    raise errors.ConfigError(
        'model.attention_resolutions', f'{bad} are not feature-map sizes of this UNet ({sizes})',
        'list feature-map sizes (image_size / 2^level) where attention should run')
  role = roles.role_of(config)
  if m.out_channels != 4:
    raise errors.ConfigError('model.out_channels', f'{m.out_channels} != 4',
                             'the networks predict RGBD epsilon: use 4')
  with errors.config_section('model'):
    role.network(m)  # the UNet's own checks (groups, heads, dtype)
  if t.num_steps <= 0:
    raise errors.ConfigError('train.num_steps', f'{t.num_steps} is not positive',
                             'give the number of optimizer steps, e.g. 1000')
  mesh_shape = parallel.resolve_mesh_shape(config.mesh.shape, num_devices)
  dp = mesh_shape[0] * mesh_shape[1]
  if t.batch_size <= 0 or t.batch_size % dp:
    raise errors.ConfigError(
        'train.batch_size', f'global batch {t.batch_size} is not divisible by the {dp} '
        f'data-parallel devices of mesh {mesh_shape}',
        f'use a multiple of {dp}, e.g. --config.train.batch_size={max(dp, t.batch_size // dp * dp)}')
  if t.batch_size % process_count:
    raise errors.ConfigError(
        'train.batch_size', f'{t.batch_size} does not split over {process_count} processes',
        f'use a multiple of {process_count}')
  if not 0.0 <= config.diffusion.p_uncond <= 1.0:
    raise errors.ConfigError('diffusion.p_uncond', f'{config.diffusion.p_uncond} not in [0, 1]',
                             'use 0.1 (the reference) or 0 to never drop labels')
  for field in ('checkpoint.every_steps', 'log.every_steps'):
    section, name = field.split('.')
    if config[section][name] <= 0:
      raise errors.ConfigError(field, f'{config[section][name]} is not positive',
                               'give an interval in steps')
  if config.optim.lr <= 0:
    raise errors.ConfigError('optim.lr', f'{config.optim.lr} is not positive', 'e.g. 1e-4')
  if not 0.0 <= config.optim.ema_decay < 1.0:
    raise errors.ConfigError('optim.ema_decay', f'{config.optim.ema_decay} not in [0, 1)',
                             'e.g. 0.9999 (the reference)')
  if config.optim.schedule not in ('constant', 'cosine'):
    raise errors.ConfigError('optim.schedule', f'unknown schedule {config.optim.schedule!r}',
                             "use 'constant' or 'cosine'")
  if config.init_from and not epath.Path(config.init_from).exists():
    raise errors.ConfigError('init_from', f'{config.init_from} does not exist',
                             'give a G_u training workdir or exported params, or leave it empty')
