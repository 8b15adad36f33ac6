"""Network roles: what each diffusion network of the method sees and how it learns.

A role is the one place that knows a network's input channel layout, how a training example
becomes that input, which metrics its loss splits into, and how it is initialised from another
role's weights. The train step, sampling and checkpoint loading ask the role of a config
(`role_of`) and never look at channel counts. A new network is a new entry in ROLES, not a new
`if` in each stage: G_u, G_c and the 128 -> 256 super-resolution network G_sr (`sr`). See
docs/method.md ("Networks").
"""
import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from ivd_jax import errors
from ivd_jax.diffusion import conditioning
from ivd_jax.models import unet as unet_lib
from ivd_jax.roles import pairs as pairs_lib
from ivd_jax.roles import sr as sr_lib

# The condition a role is trained on, made from a clean training batch:
# (x0 [B, H, W, 4] in [-1, 1], key, config) -> dict of arrays. None for unconditioned roles.
ConditionFn = Callable[[jax.Array, jax.Array, Any], dict[str, jax.Array]]
# The network input: (x_t, condition or None, hole-noise key) -> [B, H, W, in_channels].
InputFn = Callable[[jax.Array, Optional[Mapping[str, jax.Array]], jax.Array], jax.Array]
# Extra training metrics: (squared eps error [B, H, W, 4], condition) -> {name: scalar}.
MetricsFn = Callable[[jax.Array, Optional[Mapping[str, jax.Array]]], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Role:
  """One diffusion network of the method."""
  name: str  # the value of config.role
  title: str  # the paper's name, used in logs
  layout: tuple[tuple[str, int], ...]  # input channel groups in order: (name, channels)
  network_input: InputFn
  make_condition: Optional[ConditionFn] = None
  metrics: Optional[MetricsFn] = None
  init_from: Optional[str] = None  # the role whose weights may initialise this one

  @property
  def in_channels(self) -> int:
    return sum(c for _, c in self.layout)

  def network(self, model_config: Any) -> unet_lib.UNet:
    """The UNet of this role for a `model` config section."""
    return unet_lib.unet_from_config(model_config, in_channels=self.in_channels)

  def eps_fn(self, net_fn: Callable[[jax.Array, jax.Array], jax.Array],
             condition: Optional[Mapping[str, jax.Array]], key: jax.Array
             ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A sampler's eps_fn(x_t, t) for this role's network `net_fn(input, t)` and condition.

    The hole noise is drawn afresh at every step from `key` folded with the step's timestep, so
    a run stays reproducible (docs/method.md §6).
    """
    def eps(x_t, t):
      return net_fn(self.network_input(x_t, condition, jax.random.fold_in(key, t[0])), t)
    return eps


def pair_settings(config: Any) -> dict[str, Any]:
  """Keyword arguments of pairs.make_training_pairs from config.pairs and the data's near/far."""
  p = config.pairs
  return dict(near=config.data.near, far=config.data.far, fov_deg=p.fov_deg, ssaa=p.ssaa,
              atol=p.atol, rtol=p.rtol, prewarp_noise=p.prewarp_noise, blur_prob=p.blur_prob,
              blur_sigma_max=p.blur_sigma_max, erosion_sizes=tuple(p.erosion_sizes))


def _noisy_image(x_t, condition, key):
  del condition, key
  return x_t


def _training_pair(x0, key, config):
  """x0 warped to a random camera and back (docs/method.md §5), in the network encoding."""
  return pairs_lib.make_training_pairs(x0, key, **pair_settings(config))


def _with_condition(x_t, condition, key):
  return conditioning.conditional_input(x_t, condition['y_rgb'], condition['y_depth'],
                                        condition['mask_rgb'], condition['mask'], key=key)


def _visible_and_hole_losses(sq_err, condition):
  """The eps loss split into pixels the condition shows and pixels G_c must invent."""
  visible = jnp.broadcast_to(condition['mask'], sq_err.shape)
  return dict(
      loss_visible=jnp.sum(sq_err * visible) / jnp.maximum(jnp.sum(visible), 1.0),
      loss_holes=jnp.sum(sq_err * (1 - visible)) / jnp.maximum(jnp.sum(1 - visible), 1.0),
      visible_fraction=jnp.mean(condition['mask']))


UNCOND = Role(name='uncond', title='G_u', layout=(('x_t', 4),), network_input=_noisy_image)
COND = Role(name='cond', title='G_c',
            layout=(('x_t', 4), ('mask_rgb', 1), ('y_rgb', 3), ('y_depth', 1), ('mask', 1)),
            network_input=_with_condition, make_condition=_training_pair,
            metrics=_visible_and_hole_losses, init_from='uncond')
# [x_t, the low-resolution copy upsampled bilinearly]; trained from scratch like the reference's.
SR = Role(name='sr', title='G_sr', layout=(('x_t', 4), ('y_rgb', 3), ('y_depth', 1)),
          network_input=sr_lib.network_input, make_condition=sr_lib.training_condition)
ROLES = {r.name: r for r in (UNCOND, COND, SR)}


def get(name: str) -> Role:
  if name not in ROLES:
    raise errors.ConfigError('role', f'unknown network role {name!r}',
                             f'use one of {sorted(ROLES)}')
  return ROLES[name]


def role_of(config: Any) -> Role:
  """The role a run or checkpoint config describes.

  Configs written by ivd_jax carry `role`; configs of older runs and of converted reference
  checkpoints only have the UNet's model.in_channels, which names the role just as well.
  """
  name = config.get('role') if hasattr(config, 'get') else None
  if name:
    return get(name)
  model = config.get('model') or {} if hasattr(config, 'get') else {}
  channels = model.get('in_channels') if hasattr(model, 'get') else None
  for role in ROLES.values():
    if channels == role.in_channels:
      return role
  raise errors.UserError(
      f'the config names no network role (role={name!r}, model.in_channels={channels!r}). '
      f'Fix: set role to one of {sorted(ROLES)}')
