"""G_u and G_c for sampling: restored from checkpoints together with what they were trained on.

A checkpoint's own config says everything the sampler needs about its network: the role
(ivd_jax.roles), the UNet shape, the diffusion schedule and the data's depth encoding. Exports of
the reference's PyTorch release carry only the UNet shape; they were trained with the
reference's schedule and encoding (docs/method.md §3, §7).
"""
import dataclasses
from typing import Any

import ml_collections

from ivd_jax import checkpoint
from ivd_jax import errors
from ivd_jax import roles
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.io import paths
from ivd_jax.models import unet as unet_lib

# (near, far) of the z-buffer depth the reference trained on (docs/method.md §3): the encoding of
# checkpoints whose config has no `data` section.
REFERENCE_DATA_ENCODING = (0.5, 100.0)


@dataclasses.dataclass
class Network:
  """A UNet of one role and its parameters."""
  role: roles.Role
  model: unet_lib.UNet
  params: Any

  @property
  def has_classes(self) -> bool:
    return bool(self.model.num_classes)


def load_network(path: str, *, field: str, ema: bool) -> tuple[Network, ml_collections.ConfigDict]:
  """Restores a network from a training workdir or an exported params checkpoint.

  Args:
    path: the checkpoint.
    field: the config field that named `path` (for error messages), e.g. 'sample.cond'.
    ema: restore the EMA parameters of a training checkpoint.

  Returns:
    (the network, built by its role from the checkpoint's model section; the checkpoint config).
  """
  if not path:
    raise errors.ConfigError(field, 'is empty', 'give a training workdir or a params checkpoint')
  if not paths.exists(path):  # a local path or gs://
    raise errors.ConfigError(field, f'{path} does not exist',
                             'give a training workdir or an exported params checkpoint')
  params, config = checkpoint.load_params(path, ema=ema)
  if not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config)
  role = roles.role_of(config)
  return Network(role, role.network(config.model), params), config


def data_encoding(config: Any) -> tuple[float, float]:
  """(near, far) of the z-buffer depth a checkpoint's network was trained on."""
  data = config.get('data')
  if not data:
    return REFERENCE_DATA_ENCODING
  return float(data['near']), float(data['far'])


def diffusion_schedule(config: Any) -> schedule_lib.Schedule:
  """The noise schedule a checkpoint's network was trained with."""
  diffusion = config.get('diffusion')
  if not diffusion:
    return schedule_lib.linear_schedule()  # the reference's (docs/method.md §7)
  return schedule_lib.schedule_from_config(diffusion)
