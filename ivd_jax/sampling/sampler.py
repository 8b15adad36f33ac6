"""The sequential view sampler: G_u for view 0, aggregation and G_c for every further view.

View 0 comes from G_u (class label, classifier-free guidance, DDPM or DDIM) or from a real photo
with its depth. Every further view n aggregates all earlier views into camera n
(geometry.aggregate_views over a FIXED-SIZE buffer of V views with a validity mask, so one
compilation serves the whole sequence) and is sampled by G_c with DDIM and the condition edits
(docs/method.md §7-8).

Reproducibility: instance i of a run with seed s uses only keys derived from
fold_in(PRNGKey(s), i), and the samplers run per instance under vmap, so an instance's views do
not depend on the batch size, on which other instances share its batch, or on the device count.
"""
import functools
from typing import Any, Callable, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax.diffusion import samplers
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.geometry import aggregate as aggregate_lib
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.sampling import networks
from ivd_jax.sampling import settings as settings_lib


def _network_eps_fn(net: networks.Network, params: Any, label: jax.Array,
                    guidance: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """eps_fn(x, t) of one network; classifier-free guidance when it has classes and w > 0."""
  apply = lambda x, t, y=None: net.model.apply({'params': params}, x, t, y)
  if not net.has_classes:
    return lambda x, t: apply(x, t)
  if guidance == 0.0:
    return lambda x, t: apply(x, t, label)
  # One network call on [cond; null] with the same input (docs/method.md §7).
  return samplers.guided_eps_fn(apply, label, guidance)


def _check_role(net: networks.Network, role: roles.Role, field: str) -> None:
  if net.role is not role:
    raise errors.ConfigError(field, f'the checkpoint is a {net.role.title} ({net.role.name!r})',
                             f'point {field} at a {role.title} ({role.name!r}) checkpoint')


def to_host(x: jax.Array) -> np.ndarray:
  """A batch-sharded array as one host numpy array (gathered across processes when needed)."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _from_host(params: Any) -> Any:
  """Parameters every process holds alike; arrays on one local device cannot be put on other
  hosts' devices, so a multi-process run puts them on the mesh from host memory."""
  return jax.device_get(params) if jax.process_count() > 1 else params


class ViewSampler:
  """G_u, aggregation and G_c, each compiled once per batch shape and reused for every view.

  Attributes:
    uncond, cond: the networks (uncond may be None when view 0 always comes from a photo).
    settings: SampleSettings.
    mesh: the parallel mesh; instance batches are split over all its devices (BATCH_SPEC).
    schedule: the noise schedule both networks were trained with.
    resolution: the networks' image size.
  """

  def __init__(self, uncond: Optional[networks.Network], cond: networks.Network,
               settings: settings_lib.SampleSettings, *, mesh: jax.sharding.Mesh,
               schedule: schedule_lib.Schedule):
    settings.validate()
    self.uncond, self.cond, self.settings = uncond, cond, settings
    self.mesh, self.schedule = mesh, schedule
    self.resolution = cond.model.image_size
    _check_role(cond, roles.COND, 'sample.cond')
    if uncond is not None:
      _check_role(uncond, roles.UNCOND, 'sample.uncond')
      if uncond.model.image_size != self.resolution:
        raise errors.ConfigError(
            'sample.uncond', f'G_u is {uncond.model.image_size} px but G_c is '
            f'{self.resolution} px', 'use a G_u and G_c trained at the same resolution')
    batch = parallel.batch_sharding(mesh)
    rep = parallel.replicated(mesh)
    self.batch_sharding = batch
    c_shard = parallel.tree_shardings(mesh, cond.params)
    self.cond_params = jax.device_put(_from_host(cond.params), c_shard)
    self._next_view = jax.jit(
        self._next_view_impl, in_shardings=(c_shard, batch, batch, rep, batch, rep, batch, batch),
        out_shardings=(batch, (batch, batch, batch)), donate_argnums=(1,))
    self._fuse = jax.jit(self._fuse_impl, in_shardings=(batch, batch, rep, rep),
                         out_shardings=(batch, batch))
    if uncond is not None:
      u_shard = parallel.tree_shardings(mesh, uncond.params)
      self.uncond_params = jax.device_put(_from_host(uncond.params), u_shard)
      self._first_view = jax.jit(self._first_view_impl, in_shardings=(u_shard, batch, batch),
                                 out_shardings=batch)

  @property
  def batch_multiple(self) -> int:
    """Instance batches must be a multiple of this (the number of devices in the mesh)."""
    return parallel.data_parallel_size(self.mesh)

  # -- compiled bodies ---------------------------------------------------------------------------
  def _first_view_impl(self, params, keys, labels):
    """[B] keys, [B] labels -> view 0 [B, H, W, 4] in [0, 1]."""
    s, res = self.settings, self.resolution

    def one(key, label):
      x_t = jax.random.normal(jax.random.fold_in(key, 0), (1, res, res, 4), jnp.float32)
      eps_fn = _network_eps_fn(self.uncond, params, label[None], s.guidance)
      if s.sampler_uncond == 'ddpm':
        x0 = samplers.ddpm_sample(eps_fn, x_t, schedule=self.schedule,
                                  key=jax.random.fold_in(key, 1), clip_denoised=s.clip_denoised)
      else:
        x0 = samplers.ddim_sample(eps_fn, x_t, schedule=self.schedule, steps=s.steps_uncond,
                                  eta=s.eta, key=jax.random.fold_in(key, 1),
                                  clip_denoised=s.clip_denoised)
      return jnp.clip(depth_lib.from_network(x0[0]), 0.0, 1.0)

    return jax.vmap(one)(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), labels)

  def aggregate(self, buffer, views, valid, target_view):
    """Every valid view of `buffer` [B, V, H, W, 4] aggregated into `target_view` [B, 4, 4]."""
    s = self.settings
    agg = functools.partial(aggregate_lib.aggregate_views, near=s.near, far=s.far,
                            fov_deg=s.fov_deg, ssaa=s.ssaa, atol=s.atol, rtol=s.rtol,
                            erode=s.erode)
    return jax.vmap(agg, in_axes=(0, 0, None, 0))(buffer, views, valid, target_view)

  def _next_view_impl(self, params, buffer, views, valid, target_view, n, keys, labels):
    """Aggregates the valid views of `buffer` into `target_view`, samples view n with G_c.

    Args:
      params: G_c parameters.
      buffer: [B, V, H, W, 4] views so far (slots where `valid` is False are ignored).
      views: [B, V, 4, 4] their cameras.
      valid: [V] bool.
      target_view: [B, 4, 4].
      n: int32 scalar, the slot the new view is written to (and folded into its key).
      keys: [B] instance keys.
      labels: [B] class labels.

    Returns:
      (buffer with slot n written, (condition rgbd, mask, mask_rgb)).
    """
    s, res = self.settings, self.resolution
    agg = self.aggregate(buffer, views, valid, target_view)

    def one(key, label, a):
      vkey = jax.random.fold_in(key, n)
      y_rgb = depth_lib.to_network(a.rgbd[None, ..., :3])
      y_depth = depth_lib.to_network(a.rgbd[None, ..., 3:])
      mask_rgb, mask = a.mask_rgb[None], a.mask[None]
      # Fresh noise in the holes at every network call (docs/method.md §6), keyed by (view, t).
      condition = dict(y_rgb=y_rgb, y_depth=y_depth, mask_rgb=mask_rgb, mask=mask)
      eps_fn = self.cond.role.eps_fn(_network_eps_fn(self.cond, params, label[None], s.guidance),
                                     condition, jax.random.fold_in(vkey, 2))
      edits = samplers.ConditionEdits(
          rgb=y_rgb, depth=y_depth, mask_rgb=mask_rgb, mask=mask,
          hull=depth_lib.to_network(a.hull[None]), rgb_weight=s.replace_rgb,
          depth_weight=s.replace_depth, hull_weight=s.constrain_depth)
      x_t = jax.random.normal(jax.random.fold_in(vkey, 0), (1, res, res, 4), jnp.float32)
      x0 = samplers.ddim_sample(eps_fn, x_t, schedule=self.schedule, steps=s.steps_cond,
                                eta=s.eta, key=jax.random.fold_in(vkey, 1), edits=edits,
                                clip_denoised=s.clip_denoised)
      return jnp.clip(depth_lib.from_network(x0[0]), 0.0, 1.0)

    new = jax.vmap(one)(keys, labels, agg)
    buffer = jax.lax.dynamic_update_index_in_dim(buffer, new.astype(buffer.dtype), n, axis=1)
    return buffer, (agg.rgbd, agg.mask, agg.mask_rgb)

  def _fuse_impl(self, buffer, views, valid, frame_view):
    """Fusion rendering: the valid views of `buffer` aggregated into one frame camera [4, 4]."""
    target = jnp.broadcast_to(frame_view, (buffer.shape[0], 4, 4))
    agg = self.aggregate(buffer, views, valid, target)
    return agg.rgbd * agg.mask, agg.mask

  # -- host-side API -----------------------------------------------------------------------------
  def first_view(self, keys: jax.Array, labels: np.ndarray) -> jax.Array:
    """View 0 [B, H, W, 4] of every instance from G_u."""
    if self.uncond is None:
      raise errors.ConfigError('sample.uncond', 'no G_u checkpoint was given',
                               'set sample.uncond, or sample.source_image to start from a photo')
    return self._first_view(self.uncond_params, keys, jnp.asarray(labels, jnp.int32))

  def next_view(self, buffer, views, valid, target_view, n, keys, labels):
    """View n from G_c, written into slot n of `buffer` (donated); also the condition it saw."""
    return self._next_view(self.cond_params, buffer, views, jnp.asarray(valid, bool), target_view,
                           jnp.int32(n), keys, jnp.asarray(labels, jnp.int32))

  def fuse(self, buffer, views, valid, frame_views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fusion-rendered frames [B, T, H, W, 4] and masks [B, T, H, W, 1] along a camera path."""
    frames, masks = [], []
    valid = jnp.asarray(valid, bool)
    for fv in np.asarray(frame_views, np.float32):
      rgbd, mask = self._fuse(buffer, views, valid, jnp.asarray(fv))
      frames.append(to_host(rgbd))
      masks.append(to_host(mask))
    return np.stack(frames, 1), np.stack(masks, 1)

  def compile_counts(self) -> dict[str, int]:
    """Distinct compiled specialisations of each jitted function (tests check 1 per shape)."""
    # pylint: disable=protected-access
    counts = {'next_view': self._next_view._cache_size(), 'fuse': self._fuse._cache_size()}
    if self.uncond is not None:
      counts['first_view'] = self._first_view._cache_size()
    return counts
