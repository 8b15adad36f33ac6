"""Sequential sampling of 3D-consistent view sets (METHOD 7-8) and the `sample` mode.

View 0 comes from G_u (class label, classifier-free guidance, DDPM or DDIM) or from a real photo
with its depth. Every further view n aggregates all earlier views into camera n
(geometry.aggregate_views over a FIXED-SIZE buffer of V views with a validity mask, so one
compilation serves the whole sequence) and is sampled by G_c with DDIM and the condition edits.

Reproducibility: instance i of a run with seed s uses only keys derived from
fold_in(PRNGKey(s), i), and the samplers run per instance under vmap, so an instance's views do
not depend on the batch size, on which other instances share its batch, or on the device count.

  python -m ivd_jax.main --config=configs/sample.py:imagenet128 --workdir=DIR \
      --config.sample.uncond=GU --config.sample.cond=GC
"""
import dataclasses
import functools
import importlib
import json
import os
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ivd_jax import errors
from ivd_jax.diffusion import conditioning
from ivd_jax.diffusion import samplers
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.geometry import aggregate as aggregate_lib
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.models import unet as unet_lib
from ivd_jax.training import sharding as sharding_lib

VIEWSETS = ('random', '3x9', 'swing', 'orbit360', 'custom')
LABEL_MODES = ('random', 'uniform', 'fixed')
# fold_in constant of the per-instance camera stream of the 'random' view set.
_POSE_STREAM = 0x7FFFFFFF


# ----------------------------------------------------------------------------------------------
# Settings and results
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """Sampler and lifting settings (config.sample fields of the same names)."""
  guidance: float = 3.0
  sampler_uncond: str = 'ddpm'
  steps_uncond: int = 1000
  steps_cond: int = 50
  eta: float = 0.0
  clip_denoised: bool = False
  replace_rgb: float = 0.1
  replace_depth: float = 0.2
  constrain_depth: float = 0.5
  near: float = 0.6
  far: float = 5.0
  fov_deg: float = 45.0
  ssaa: int = 3
  atol: float = 0.03
  rtol: float = 0.03
  erode: int = 3

  @classmethod
  def from_config(cls, sample_config: Any) -> 'SampleSettings':
    kwargs = {}
    for f in dataclasses.fields(cls):
      if f.name in sample_config:
        kwargs[f.name] = type(f.default)(sample_config[f.name])
    return cls(**kwargs)

  def validate(self) -> None:
    """Raises ConfigError (field named as config.sample.<field>) before anything compiles."""
    if self.sampler_uncond not in ('ddpm', 'ddim'):
      raise errors.ConfigError('sample.sampler_uncond', f'unknown sampler {self.sampler_uncond!r}',
                               "use 'ddpm' or 'ddim'")
    if self.sampler_uncond == 'ddpm' and self.steps_uncond != 1000:
      raise errors.ConfigError(
          'sample.steps_uncond', f'DDPM runs all 1000 steps, got {self.steps_uncond}',
          "set --config.sample.steps_uncond=1000 or use --config.sample.sampler_uncond=ddim")
    for name in ('steps_uncond', 'steps_cond'):
      steps = getattr(self, name)
      if not 1 <= steps <= 1000 or 1000 % steps:
        raise errors.ConfigError(f'sample.{name}', f'{steps} does not divide the 1000 steps',
                                 'use a divisor of 1000, e.g. 50, 100, 250 or 1000')
    if not 0.0 < self.near < self.far:
      raise errors.ConfigError('sample.near', f'near {self.near} / far {self.far} are invalid',
                               'use 0 < near < far, e.g. 0.6 and 5.0')
    if self.guidance < 0:
      raise errors.ConfigError('sample.guidance', f'{self.guidance} is negative',
                               'use w >= 0 (0 = no guidance)')
    for name in ('replace_rgb', 'replace_depth', 'constrain_depth'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise errors.ConfigError(f'sample.{name}', f'{getattr(self, name)} is not in [0, 1]',
                                 'use a weight in [0, 1] (0 disables the edit)')


@dataclasses.dataclass
class Network:
  """A UNet and its parameters."""
  model: unet_lib.UNet
  params: Any

  @property
  def has_classes(self) -> bool:
    return bool(self.model.num_classes)


class ViewSetResult(NamedTuple):
  """Generated view sets, host numpy arrays in the warp encoding ([0, 1], z-buffer depth).

  rgbd: [N, V, H, W, 4] generated views (the network's data near/far z-buffer encoding).
  cond_rgbd, cond_mask, cond_mask_rgb: [N, V, H, W, 4 | 1 | 1] what G_c was conditioned on
    (view 0: zeros).
  views: [N, V, 4, 4] world->camera matrices.
  labels: [N] class labels (-1 = none).
  instance_ids: [N] the instance index each key was derived from.
  timings: seconds spent (first view, further views, per view).
  """
  rgbd: np.ndarray
  cond_rgbd: np.ndarray
  cond_mask: np.ndarray
  cond_mask_rgb: np.ndarray
  views: np.ndarray
  labels: np.ndarray
  instance_ids: np.ndarray
  timings: dict


def instance_keys(seed: int, instance_ids: Sequence[int]) -> jax.Array:
  """Per-instance PRNG keys [N, 2]: fold_in(PRNGKey(seed), i); independent of batching."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(instance_ids, jnp.uint32))


def instance_labels(mode: str, num_classes: int, seed: int, instance_ids: Sequence[int],
                    labels: Sequence[int] = ()) -> np.ndarray:
  """Class label of each instance: -1 without classes; otherwise by `mode` (see configs)."""
  ids = np.asarray(instance_ids, np.int64)
  if not num_classes:
    return np.full(ids.shape, -1, np.int32)
  if mode == 'uniform':
    return (ids % num_classes).astype(np.int32)
  if mode == 'fixed':
    if not labels:
      raise errors.ConfigError('sample.labels', "label_mode 'fixed' needs labels",
                               'set --config.sample.labels="(207, 360)" or another label_mode')
    table = np.asarray(labels, np.int32)
    if table.min() < -1 or table.max() >= num_classes:
      raise errors.ConfigError('sample.labels', f'labels {tuple(table)} are outside '
                               f'[-1, {num_classes})', f'use class indices below {num_classes}')
    return table[ids % len(table)]
  if mode == 'random':
    return np.array([np.random.default_rng([seed, int(i)]).integers(num_classes) for i in ids],
                    np.int32)
  raise errors.ConfigError('sample.label_mode', f'unknown label mode {mode!r}',
                           f'use one of {LABEL_MODES}')


def viewset_views(name: str, *, seed: int, instance_ids: Sequence[int], num_frames: int = 60,
                  custom_poses: Sequence[Sequence[float]] = ()) -> tuple[np.ndarray, np.ndarray]:
  """Poses [N, V, 3] (yaw, pitch, radius) and view matrices [N, V, 4, 4] of a view set.

  'random' (the FID protocol) draws each instance's novel view from that instance's own key, so
  it is reproducible per instance; every other set is the same for all instances.
  """
  n = len(instance_ids)
  if name == 'custom':
    try:
      poses = cameras.viewset_poses(np.asarray(custom_poses, np.float32).reshape(
          -1, np.shape(custom_poses)[-1] if np.ndim(custom_poses) == 2 else 3))
    except (errors.UserError, ValueError) as e:
      raise errors.ConfigError('sample.custom_poses', str(e),
                               'give (yaw, pitch[, radius]) rows: "((0, 0, 1), (0.3, 0, 1))"')
    poses = np.broadcast_to(poses, (n,) + poses.shape)
  elif name == 'random':
    # A key stream of its own per instance, apart from the sampling keys fold_in(key, view).
    keys = jax.vmap(lambda k: jax.random.fold_in(k, _POSE_STREAM))(
        instance_keys(seed, instance_ids))
    poses = np.stack([cameras.viewset_poses('random', key=k) for k in keys])
  elif name in VIEWSETS:
    poses = cameras.viewset_poses(name, num_frames=num_frames)
    poses = np.broadcast_to(poses, (n,) + poses.shape)
  else:
    raise errors.ConfigError('sample.viewset', f'unknown view set {name!r}',
                             f'use one of {VIEWSETS}')
  poses = np.ascontiguousarray(poses, np.float32)
  views = np.asarray(cameras.views_from_poses(jnp.asarray(poses.reshape(-1, 3))), np.float32)
  return poses, views.reshape(poses.shape[:2] + (4, 4))


def video_path_views(path: str, viewset: str, num_frames: int) -> np.ndarray:
  """The smooth camera path [T, 4, 4] of the fusion video."""
  if path == 'auto':
    path = 'orbit360' if viewset == 'orbit360' else 'swing'
  if path not in ('swing', 'orbit360'):
    raise errors.ConfigError('sample.video_path', f'unknown path {path!r}',
                             "use 'auto', 'swing' or 'orbit360'")
  poses = cameras.viewset_poses(path, num_frames=num_frames)
  return np.asarray(cameras.views_from_poses(jnp.asarray(poses, jnp.float32)), np.float32)


# ----------------------------------------------------------------------------------------------
# The sampler: compiled functions shared by every view and every batch of one shape
# ----------------------------------------------------------------------------------------------
def _network_eps_fn(net: Network, params: Any, label: jax.Array,
                    guidance: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """eps_fn(x, t) of one network; classifier-free guidance when it has classes and w > 0."""
  apply = lambda x, t, y=None: net.model.apply({'params': params}, x, t, y)
  if not net.has_classes:
    return lambda x, t: apply(x, t)
  if guidance == 0.0:
    return lambda x, t: apply(x, t, label)
  # One network call on [cond; null] with the same input (METHOD 7).
  return samplers.guided_eps_fn(apply, label, guidance)


class ViewSampler:
  """G_u, aggregation and G_c, each compiled once per batch shape and reused for every view.

  Attributes:
    uncond, cond: the networks (uncond may be None when view 0 always comes from a photo).
    settings: SampleSettings.
    mesh: ('data', 'fsdp') mesh; instance batches are split over both axes.
  """

  def __init__(self, uncond: Optional[Network], cond: Network, settings: SampleSettings, *,
               mesh: Optional[jax.sharding.Mesh] = None,
               schedule: Optional[schedule_lib.Schedule] = None):
    settings.validate()
    self.uncond, self.cond, self.settings = uncond, cond, settings
    self.mesh = mesh or sharding_lib.make_mesh(ml_collections.ConfigDict({'shape': (-1, 1)}))
    self.schedule = schedule or schedule_lib.linear_schedule()
    self.resolution = cond.model.image_size
    if cond.model.in_channels != 10:
      raise errors.ConfigError('sample.cond', f'G_c has {cond.model.in_channels} input channels',
                               'point sample.cond at a conditional (10-channel) checkpoint')
    if uncond is not None:
      if uncond.model.in_channels != 4:
        raise errors.ConfigError(
            'sample.uncond', f'G_u has {uncond.model.in_channels} input channels',
            'point sample.uncond at an unconditional (4-channel) checkpoint')
      if uncond.model.image_size != self.resolution:
        raise errors.ConfigError(
            'sample.uncond', f'G_u is {uncond.model.image_size} px but G_c is '
            f'{self.resolution} px', 'use a G_u and G_c trained at the same resolution')
    batch = NamedSharding(self.mesh, sharding_lib.BATCH_SPEC)
    rep = NamedSharding(self.mesh, P())
    self._batch, self._rep = batch, rep
    c_shard = sharding_lib.tree_shardings(self.mesh, cond.params)
    self.cond_params = jax.device_put(cond.params, c_shard)
    self._next_view = jax.jit(
        self._next_view_impl, in_shardings=(c_shard, batch, batch, rep, batch, rep, batch, batch),
        out_shardings=(batch, (batch, batch, batch)), donate_argnums=(1,))
    self._fuse = jax.jit(self._fuse_impl, in_shardings=(batch, batch, rep, rep),
                         out_shardings=(batch, batch))
    if uncond is not None:
      u_shard = sharding_lib.tree_shardings(self.mesh, uncond.params)
      self.uncond_params = jax.device_put(uncond.params, u_shard)
      self._first_view = jax.jit(self._first_view_impl, in_shardings=(u_shard, batch, batch),
                                 out_shardings=batch)

  @property
  def batch_multiple(self) -> int:
    """Instance batches must be a multiple of this (the number of devices in the mesh)."""
    return sharding_lib.data_parallel_size(self.mesh)

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

  def _aggregate(self, buffer, views, valid, target_view, erode):
    s = self.settings
    agg = functools.partial(aggregate_lib.aggregate_views, near=s.near, far=s.far,
                            fov_deg=s.fov_deg, ssaa=s.ssaa, atol=s.atol, rtol=s.rtol, erode=erode)
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
    agg = self._aggregate(buffer, views, valid, target_view, s.erode)

    def one(key, label, a):
      vkey = jax.random.fold_in(key, n)
      y_rgb = depth_lib.to_network(a.rgbd[None, ..., :3])
      y_depth = depth_lib.to_network(a.rgbd[None, ..., 3:])
      mask_rgb, mask = a.mask_rgb[None], a.mask[None]
      # Fresh noise in the holes at every network call (METHOD 6), keyed by (view key, t).
      eps_fn = conditioning.conditional_eps_fn(
          _network_eps_fn(self.cond, params, label[None], s.guidance),
          y_rgb, y_depth, mask_rgb, mask, key=jax.random.fold_in(vkey, 2))
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
    agg = self._aggregate(buffer, views, valid, target, self.settings.erode)
    return agg.rgbd * agg.mask, agg.mask

  # -- host-side API -----------------------------------------------------------------------------
  def first_view(self, keys: jax.Array, labels: np.ndarray) -> jax.Array:
    if self.uncond is None:
      raise errors.ConfigError('sample.uncond', 'no G_u checkpoint was given',
                               'set sample.uncond, or sample.source_image to start from a photo')
    return self._first_view(self.uncond_params, keys, jnp.asarray(labels, jnp.int32))

  def next_view(self, buffer, views, valid, target_view, n, keys, labels):
    return self._next_view(self.cond_params, buffer, views, jnp.asarray(valid, bool), target_view,
                           jnp.int32(n), keys, jnp.asarray(labels, jnp.int32))

  def fuse(self, buffer, views, valid, frame_views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fusion-rendered frames [B, T, H, W, 4] and masks [B, T, H, W, 1] along a camera path."""
    frames, masks = [], []
    valid = jnp.asarray(valid, bool)
    for fv in np.asarray(frame_views, np.float32):
      rgbd, mask = self._fuse(buffer, views, valid, jnp.asarray(fv))
      frames.append(_to_host(rgbd))
      masks.append(_to_host(mask))
    return np.stack(frames, 1), np.stack(masks, 1)

  def compile_counts(self) -> dict[str, int]:
    """Distinct compiled specialisations of each jitted function (tests check 1 per shape)."""
    counts = {'next_view': self._next_view._cache_size(), 'fuse': self._fuse._cache_size()}  # pylint: disable=protected-access
    if self.uncond is not None:
      counts['first_view'] = self._first_view._cache_size()  # pylint: disable=protected-access
    return counts


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


# ----------------------------------------------------------------------------------------------
# Generating many instances
# ----------------------------------------------------------------------------------------------
def generate_views(sampler: ViewSampler, views: np.ndarray, *, seed: int,
                   instance_ids: Sequence[int], labels: Optional[np.ndarray] = None,
                   batch_size: int = 8, first_rgbd: Optional[np.ndarray] = None,
                   frame_views: Optional[np.ndarray] = None, buffer_size: int = 0,
                   progress: bool | Callable[[int], None] = False) -> tuple[ViewSetResult,
                                                                           Optional[np.ndarray]]:
  """Samples a view set for every instance, `batch_size` instances at a time.

  Args:
    sampler: the compiled networks.
    views: [V, 4, 4] (shared cameras) or [N, V, 4, 4] (one set per instance); views[..., 0, :, :]
      is view 0.
    seed: run seed; instance i uses keys derived from (seed, instance_ids[i]) only.
    instance_ids: [N] instance indices.
    labels: [N] class labels (-1 = null / none); default all -1.
    batch_size: instances per compiled call; rounded up to a multiple of the device count (the
      padding instances are computed and dropped).
    first_rgbd: optional [H, W, 4] or [N, H, W, 4] view 0 in [0, 1] (a real photo with depth, in
      the network's data encoding) used instead of G_u.
    frame_views: optional [T, 4, 4] camera path; when given, every instance's generated views are
      fused into it (orbit video frames).
    buffer_size: slots of the view buffer (0 = the number of views). A larger buffer lets view
      sets of different lengths share one compilation (each call then aggregates over all slots).
    progress: True for a tqdm bar, or a callback receiving the number of views completed.

  Returns:
    (ViewSetResult, fused frames [N, T, H, W, 4] in [0, 1] with holes black, or None).
  """
  ids = np.asarray(instance_ids, np.int64)
  n_inst = len(ids)
  views = np.asarray(views, np.float32)
  if views.ndim == 3:
    views = np.broadcast_to(views, (n_inst,) + views.shape)
  num_views, res = views.shape[1], sampler.resolution
  slots = buffer_size or num_views
  if slots < num_views:
    raise errors.ConfigError('sample.buffer_size', f'{slots} slots cannot hold {num_views} views',
                             'use 0 (as many slots as views) or at least the number of views')
  # Unused slots repeat the last camera; they are never valid, so they are never warped into
  # the result.
  views = np.concatenate([views, np.repeat(views[:, -1:], slots - num_views, axis=1)], axis=1)
  labels = np.full(n_inst, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
  if first_rgbd is not None:
    first_rgbd = np.asarray(first_rgbd, np.float32)
    if first_rgbd.ndim == 3:
      first_rgbd = np.broadcast_to(first_rgbd, (n_inst,) + first_rgbd.shape)
    if first_rgbd.shape[1:] != (res, res, 4):
      raise errors.UserError(f'view 0 has shape {first_rgbd.shape[1:]}, the networks take '
                             f'{(res, res, 4)}; resize the photo to {res} px')
  mult = sampler.batch_multiple
  batch = max(mult, -(-min(batch_size, n_inst) // mult) * mult)

  bar, tick = None, None
  if progress is True:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=n_inst * num_views, desc='views', unit='view', dynamic_ncols=True)
    tick = bar.update
  elif callable(progress):
    tick = progress

  rgbd = np.zeros((n_inst, num_views, res, res, 4), np.float32)
  cond_rgbd = np.zeros_like(rgbd)
  cond_mask = np.zeros((n_inst, num_views, res, res, 1), np.float32)
  cond_mask_rgb = np.zeros_like(cond_mask)
  fused = None
  timings = {'first_view_s': 0.0, 'further_views_s': 0.0, 'fusion_s': 0.0}
  batch_sharding = sampler._batch  # pylint: disable=protected-access
  for start in range(0, n_inst, batch):
    idx = np.arange(start, min(start + batch, n_inst))
    pad = batch - len(idx)
    # Padding slots repeat the last instance's index; their outputs are dropped.
    b_ids = np.concatenate([ids[idx], np.full(pad, ids[idx[-1]])])
    b_sel = np.concatenate([idx, np.full(pad, idx[-1])])
    keys = jax.device_put(instance_keys(seed, b_ids), batch_sharding)
    b_labels = jax.device_put(labels[b_sel], batch_sharding)
    b_views = jax.device_put(views[b_sel], batch_sharding)

    t0 = time.perf_counter()
    if first_rgbd is not None:
      view0 = jax.device_put(first_rgbd[b_sel], batch_sharding)
    else:
      view0 = sampler.first_view(keys, b_labels)
    buffer = jnp.zeros((batch, slots, res, res, 4), jnp.float32)
    buffer = jax.device_put(buffer.at[:, 0].set(view0), batch_sharding)
    jax.block_until_ready(buffer)
    timings['first_view_s'] += time.perf_counter() - t0
    if tick:
      tick(len(idx))
    t0 = time.perf_counter()
    for n in range(1, num_views):
      valid = np.arange(slots) < n
      buffer, (c_rgbd, c_mask, c_mask_rgb) = sampler.next_view(
          buffer, b_views, valid, b_views[:, n], n, keys, b_labels)
      cond_rgbd[idx, n] = _to_host(c_rgbd)[:len(idx)]
      cond_mask[idx, n] = _to_host(c_mask)[:len(idx)]
      cond_mask_rgb[idx, n] = _to_host(c_mask_rgb)[:len(idx)]
      if tick:
        tick(len(idx))
    rgbd[idx] = _to_host(buffer)[:len(idx), :num_views]
    timings['further_views_s'] += time.perf_counter() - t0
    if frame_views is not None:
      t0 = time.perf_counter()
      frames, _ = sampler.fuse(buffer, b_views, np.arange(slots) < num_views, frame_views)
      if fused is None:
        fused = np.zeros((n_inst,) + frames.shape[1:], np.float32)
      fused[idx] = frames[:len(idx)]
      timings['fusion_s'] += time.perf_counter() - t0
  if bar is not None:
    bar.close()
  if num_views > 1:
    timings['seconds_per_further_view'] = timings['further_views_s'] / (
        -(-n_inst // batch) * (num_views - 1))
  result = ViewSetResult(rgbd=rgbd, cond_rgbd=cond_rgbd, cond_mask=cond_mask,
                         cond_mask_rgb=cond_mask_rgb, views=np.asarray(views[:, :num_views]),
                         labels=labels, instance_ids=ids, timings=timings)
  return result, fused


# ----------------------------------------------------------------------------------------------
# Loading networks and real photos
# ----------------------------------------------------------------------------------------------
def load_network(path: str, *, field: str, ema: bool = True) -> tuple[Network, Any]:
  """Restores a UNet from a training workdir or an exported params checkpoint."""
  if not path:
    raise errors.ConfigError(field, 'is empty', 'give a training workdir or a params checkpoint')
  if not os.path.exists(path):
    raise errors.ConfigError(field, f'{path} does not exist',
                             'give a training workdir or an exported params checkpoint')
  from ivd_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  params, config = checkpoint.load_params(path, ema=ema)
  if not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config)
  return Network(unet_lib.unet_from_config(config.model), params), config


def _schedule_from(config: Any) -> schedule_lib.Schedule:
  diff = config.get('diffusion') if config is not None else None
  if not diff:
    return schedule_lib.linear_schedule()
  kwargs = {k: diff[k] for k in ('num_steps', 'beta_start', 'beta_end') if k in diff}
  return schedule_lib.linear_schedule(**kwargs)


def _resize_crop(image: np.ndarray, resolution: int, resample: int) -> np.ndarray:
  """Short side to `resolution` (METHOD 3: Lanczos for images, nearest for depth), centre crop."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  scale = resolution / min(h, w)
  nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
  pil = Image.fromarray(image)
  arr = np.asarray(pil.resize((nw, nh), resample=resample))
  top, left = (nh - resolution) // 2, (nw - resolution) // 2
  return arr[top:top + resolution, left:left + resolution]


def load_source_view(sample_config: Any, resolution: int) -> np.ndarray:
  """A real photo and its depth as view 0: [H, W, 4] in [0, 1], data z-buffer encoding."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  s = sample_config
  if not os.path.isfile(s.source_image):
    raise errors.ConfigError('sample.source_image', f'{s.source_image} is not a file',
                             'give the path of an RGB image')
  try:
    rgb_full = np.asarray(Image.open(s.source_image).convert('RGB'))
  except OSError as e:
    raise errors.ConfigError('sample.source_image', f'cannot decode {s.source_image}: {e}',
                             'give a PNG or JPEG image') from e
  rgb = _resize_crop(rgb_full, resolution, Image.LANCZOS)
  kind = s.source_depth_kind
  if kind == 'estimator':
    if not s.estimator or ':' not in s.estimator:
      raise errors.ConfigError('sample.estimator', f'{s.estimator!r} is not module:callable',
                               "set e.g. 'ivd_jax.models.dpt:make_estimator'")
    module, fn = s.estimator.split(':')
    estimate = getattr(importlib.import_module(module), fn)(**dict(s.estimator_kwargs))
    disparity = np.asarray(estimate(rgb[None]), np.float32)[0]
    zbuf = np.asarray(depth_lib.zbuf_from_midas(disparity, s.data_near, s.data_far), np.float32)
  else:
    if not os.path.isfile(s.source_depth):
      raise errors.ConfigError('sample.source_depth', f'{s.source_depth!r} is not a file',
                               "give the photo's depth file, or source_depth_kind='estimator'")
    if s.source_depth.endswith('.npz'):
      with np.load(s.source_depth) as f:
        raw = np.asarray(f[f.files[0]], np.float32)
    elif s.source_depth.endswith('.npy'):
      raw = np.load(s.source_depth).astype(np.float32)
    else:
      raw = np.asarray(Image.open(s.source_depth), np.float32)
      raw = raw / (65535.0 if raw.max() > 255 else 255.0)
    raw = np.squeeze(raw)
    if raw.shape != rgb_full.shape[:2]:
      raise errors.ConfigError('sample.source_depth', f'depth is {raw.shape}, the image is '
                               f'{rgb_full.shape[:2]}', 'give a depth map of the same size')
    raw = _resize_crop(raw, resolution, Image.NEAREST)
    raw = np.where(np.isfinite(raw), raw, 0.0)
    if kind == 'midas':
      zbuf = depth_lib.zbuf_from_midas(raw, s.data_near, s.data_far)
    elif kind == 'zbuf':
      zbuf = raw
    elif kind == 'depth':
      zbuf = depth_lib.zbuf_from_depth(np.maximum(raw, 1e-6), s.data_near, s.data_far)
    else:
      raise errors.ConfigError('sample.source_depth_kind', f'unknown kind {kind!r}',
                               "use 'midas', 'zbuf', 'depth' or 'estimator'")
  zbuf = np.clip(np.asarray(zbuf, np.float32), 0.0, 1.0)
  return np.concatenate([rgb.astype(np.float32) / 255.0, zbuf[..., None]], axis=-1)


# ----------------------------------------------------------------------------------------------
# The sample mode
# ----------------------------------------------------------------------------------------------
def build_sampler(sample_config: Any, mesh_config: Any = None, *,
                  need_uncond: bool = True) -> tuple[ViewSampler, dict]:
  """Loads G_u / G_c from config.sample.uncond / cond and compiles nothing yet."""
  s = sample_config
  settings = SampleSettings.from_config(s)
  settings.validate()
  cond, cond_config = load_network(s.cond, field='sample.cond', ema=s.get('ema', True))
  uncond, uncond_config = (None, None)
  if need_uncond:
    uncond, uncond_config = load_network(s.uncond, field='sample.uncond', ema=s.get('ema', True))
  mesh = sharding_lib.make_mesh(mesh_config or ml_collections.ConfigDict({'shape': (-1, 1)}))
  sampler = ViewSampler(uncond, cond, settings, mesh=mesh, schedule=_schedule_from(cond_config))
  info = {'cond_model': cond_config.model.to_dict()}
  if uncond_config is not None:
    info['uncond_model'] = uncond_config.model.to_dict()
  return sampler, info


def sample_and_export(config: Any, workdir: str, *,
                      first_rgbd: Optional[np.ndarray] = None) -> dict:
  """The `sample` mode: generates view sets and writes DIR/samples/<run>/.

  Args:
    config: the config with `sample` (and optionally `mesh`) sections.
    workdir: outputs go to workdir/samples/<run>/.
    first_rgbd: optional [N, H, W, 4] view 0 of every instance in [0, 1] (data encoding), e.g.
      true renders of unseen scenes; used instead of G_u (and of config.sample.source_image).

  Returns:
    The manifest (also written as manifest.json), including `consistency`.
  """
  from ivd_jax.evaluation import consistency  # pylint: disable=g-import-not-at-top
  from ivd_jax.inference import export  # pylint: disable=g-import-not-at-top
  s = config.sample
  if s.num_instances < 1:
    raise errors.ConfigError('sample.num_instances', f'{s.num_instances} < 1',
                             'generate at least one instance')
  if s.viewset not in VIEWSETS:
    raise errors.ConfigError('sample.viewset', f'unknown view set {s.viewset!r}',
                             f'use one of {VIEWSETS}')
  from_photo = bool(s.get('source_image')) or first_rgbd is not None
  sampler, info = build_sampler(s, config.get('mesh'), need_uncond=not from_photo)
  ids = np.arange(s.num_instances)
  poses, views = viewset_views(s.viewset, seed=s.seed, instance_ids=ids, num_frames=s.num_frames,
                               custom_poses=s.custom_poses)
  num_classes = sampler.cond.model.num_classes or 0
  labels = instance_labels(s.label_mode, num_classes, s.seed, ids, tuple(s.labels))
  first = first_rgbd
  if first is None and from_photo:
    first = load_source_view(s, sampler.resolution)
  frame_views = (video_path_views(s.video_path, s.viewset, s.video_frames)
                 if s.video and s.export else None)

  t0 = time.perf_counter()
  result, fused = generate_views(sampler, views, seed=s.seed, instance_ids=ids, labels=labels,
                                 batch_size=s.batch_size, first_rgbd=first,
                                 frame_views=frame_views, buffer_size=s.get('buffer_size', 0),
                                 progress=s.progress and jax.process_index() == 0)
  total_s = time.perf_counter() - t0

  run_name = s.run_name or f'{s.viewset}_seed{s.seed}'
  out_dir = os.path.join(workdir, 'samples', run_name)
  manifest = {
      'run': run_name,
      'viewset': s.viewset,
      'num_instances': int(s.num_instances),
      'seed': int(s.seed),
      'settings': dataclasses.asdict(sampler.settings),
      'sample_config': s.to_dict(),
      'resolution': sampler.resolution,
      'devices': jax.device_count(),
      'from_photo': from_photo,
      'timings': dict(result.timings, total_s=total_s),
      **info,
  }
  if s.consistency and views.shape[1] > 1:
    t0 = time.perf_counter()
    manifest['consistency'] = consistency.pairwise_consistency(
        result.rgbd, result.views, near=s.near, far=s.far, fov_deg=s.fov_deg, ssaa=s.ssaa,
        atol=s.atol, rtol=s.rtol, neighbours=s.consistency_neighbours or None)
    manifest['timings']['consistency_s'] = time.perf_counter() - t0
  else:
    manifest['consistency'] = None
  if jax.process_index() != 0:
    return manifest
  instances = []
  for k, i in enumerate(ids):
    entry = {'index': int(i), 'label': int(result.labels[k]), 'poses': poses[k],
             'views': result.views[k]}
    if s.export:
      video = None
      if fused is not None:
        video = np.concatenate([export.to_uint8(fused[k, ..., :3]),
                                export.colourise_depth(fused[k, ..., 3])], axis=2)
      entry['files'] = export.export_instance(
          os.path.join(out_dir, f'instance_{int(i):04d}'), rgbd=result.rgbd[k],
          views=result.views[k], cond_rgbd=result.cond_rgbd[k], cond_mask=result.cond_mask[k],
          cond_mask_rgb=result.cond_mask_rgb[k], near=s.near, far=s.far, fov_deg=s.fov_deg,
          video=video, fps=s.fps, ply_max_depth=s.ply_max_depth or None)
      entry['dir'] = f'instance_{int(i):04d}'
    instances.append(entry)
  manifest['instances'] = instances
  if s.export:
    np.savez_compressed(os.path.join(out_dir, 'views.npz'), rgbd=result.rgbd,
                        views=result.views, labels=result.labels, instance_ids=result.instance_ids)
    # One row per instance with its first (up to) 9 views.
    cols = min(views.shape[1], 9)
    tiles = result.rgbd[:, :cols, ..., :3].reshape((-1,) + result.rgbd.shape[2:4] + (3,))
    export.save_png(os.path.join(out_dir, 'overview.png'),
                    export.image_grid(export.to_uint8(tiles), cols))
  export.write_manifest(os.path.join(out_dir, 'manifest.json'), manifest)
  logging.info('wrote %s (consistency %s)', out_dir, json.dumps(manifest['consistency']))
  manifest['dir'] = out_dir
  return manifest
