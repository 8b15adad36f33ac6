"""The super-resolution stage: every view of a generated view set through G_sr with DDIM.

Two modes (config.sample.sr_mode):
* 'independent': each view is super-resolved on its own from its low-resolution copy, as the
  reference's SR network would be used. Details the low resolution does not fix (texture,
  edges) then differ between views where they overlap.
* 'consistent': views are super-resolved in order, and view n is conditioned, as G_c is, on the
  high-resolution views already super-resolved: they are warped into view n's camera by their
  depth and aggregated (geometry/aggregate.py, the sampler's lifting settings, at the high
  resolution), and the condition edits of docs/method.md §7 (diffusion.samplers.ConditionEdits,
  weights sample.sr_replace_rgb / sr_replace_depth / sr_constrain_depth) pin the visible pixels
  to them; only the pixels no earlier view shows are free. View 0 is the same in both modes.

The DDIM chain starts from pure noise at t = T like the reference's (sample.sr_start = 1), or
(sr_start < 1) at t0 = sr_start T from the bilinear upsampling, in consistent mode with the warped
SR views where they are pinned, diffused to t0 (Chung et al. 2022, "Come-Closer-Diffuse-Faster"):
the chain then spends its sr_steps below t0, and the network's predictions at the largest t,
the last a network learns, are never needed.

Like the view sampler (sampling/sampler.py): a fixed-size view buffer with a validity mask (one
compilation per batch shape serves every view), instance batches split over every device of the
mesh, and instance i of a run with seed s using only keys derived from fold_in(PRNGKey(s), i),
so its SR views depend neither on the batch nor on the device count.
"""
import dataclasses
import functools
import time
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import auto as tqdm

from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax.diffusion import samplers
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.geometry import aggregate as aggregate_lib
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.roles import sr as sr_lib
from ivd_jax.sampling import networks
from ivd_jax.sampling import sampler as sampler_lib
from ivd_jax.sampling import settings as settings_lib
from ivd_jax.sampling import viewsets

SR_MODES = ('consistent', 'independent')
# fold_in constant of the per-instance SR key stream, apart from the view keys fold_in(key, n).
_SR_STREAM = 0x5352


@dataclasses.dataclass(frozen=True)
class SRSettings:
  """config.sample fields of the SR stage (defaults: configs/sampling.py:sample_section).

  mode: 'consistent' | 'independent'; steps: DDIM steps; start: the chain starts at this fraction
  of the T diffusion steps (1 = from pure noise); guidance: classifier-free guidance w of
  a class-conditional G_sr; replace_rgb, replace_depth, constrain_depth: the weights of the
  condition edits by the warped earlier SR views (consistent mode). eta, clip_denoised and the
  lifting settings (near, far, fov_deg, ssaa, atol, rtol, erode) are the view sampler's.
  """
  mode: str
  steps: int
  start: float
  guidance: float
  replace_rgb: float
  replace_depth: float
  constrain_depth: float
  lifting: settings_lib.SampleSettings

  @classmethod
  def from_config(cls, sample_config: Any) -> 'SRSettings':
    s = sample_config
    return cls(mode=str(s.sr_mode), steps=int(s.sr_steps), start=float(s.sr_start),
               guidance=float(s.sr_guidance),
               replace_rgb=float(s.sr_replace_rgb), replace_depth=float(s.sr_replace_depth),
               constrain_depth=float(s.sr_constrain_depth),
               lifting=settings_lib.SampleSettings.from_config(s))

  def validate(self) -> None:
    """Raises ConfigError (field named as config.sample.<field>) before anything compiles."""
    self.lifting.validate()
    if self.mode not in SR_MODES:
      raise errors.ConfigError('sample.sr_mode', f'unknown mode {self.mode!r}',
                               f'use one of {SR_MODES}')
    if not 1 <= self.steps <= 1000 or 1000 % self.steps:
      raise errors.ConfigError('sample.sr_steps', f'{self.steps} does not divide the 1000 steps',
                               'use a divisor of 1000, e.g. 25, 50 or 100')
    if not 0.0 < self.start <= 1.0 or round(self.start * 1000) < self.steps:
      raise errors.ConfigError('sample.sr_start', f'{self.start} is not in (0, 1] or leaves '
                               f'fewer than sr_steps={self.steps} steps',
                               'use 1.0 (from pure noise) or a fraction such as 0.3')
    if self.guidance < 0:
      raise errors.ConfigError('sample.sr_guidance', f'{self.guidance} is negative',
                               'use w >= 0 (0 = no guidance)')
    for name in ('replace_rgb', 'replace_depth', 'constrain_depth'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise errors.ConfigError(f'sample.sr_{name}', f'{getattr(self, name)} is not in [0, 1]',
                                 'use a weight in [0, 1] (0 disables the edit)')


class SRResult(NamedTuple):
  """Super-resolved view sets, host numpy in the warp encoding ([0, 1], z-buffer depth).

  rgbd: [N, V, H, W, 4]; cond_rgbd, cond_mask, cond_mask_rgb: [N, V, H, W, 4 | 1 | 1] the
  aggregated earlier SR views each view was pinned to (None in independent mode); timings.
  """
  rgbd: np.ndarray
  cond_rgbd: Optional[np.ndarray]
  cond_mask: Optional[np.ndarray]
  cond_mask_rgb: Optional[np.ndarray]
  timings: dict


class SuperResSampler:
  """G_sr and (consistent mode) the aggregation, compiled once per batch shape.

  Attributes:
    net: the G_sr network; settings: SRSettings; mesh; schedule: G_sr's noise schedule.
    resolution / low_resolution: the sizes G_sr produces and takes.
  """

  def __init__(self, net: networks.Network, settings: SRSettings, *,
               mesh: jax.sharding.Mesh, schedule: schedule_lib.Schedule, low_resolution: int):
    settings.validate()
    if net.role is not roles.SR:
      raise errors.ConfigError('sample.sr', f'the checkpoint is a {net.role.title} '
                               f'({net.role.name!r})',
                               "point sample.sr at a G_sr ('sr') checkpoint")
    self.net, self.settings, self.mesh, self.schedule = net, settings, mesh, schedule
    self.resolution, self.low_resolution = net.model.image_size, low_resolution
    self.consistent = settings.mode == 'consistent'
    # The chain's schedule: the first t_top steps of G_sr's (t_top a multiple of the DDIM steps,
    # so DDIM's jump is the full chain's); the start is diffused to step t_top.
    t0 = min(schedule.num_steps, round(settings.start * schedule.num_steps))
    self.t_top = t0 // settings.steps * settings.steps
    self.chain_schedule = (schedule if self.t_top == schedule.num_steps else
                           schedule_lib.schedule_from_betas(schedule.betas[:self.t_top]))
    batch, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    self.batch_sharding = batch
    p_shard = parallel.tree_shardings(mesh, net.params)
    # pylint: disable=protected-access (the view sampler's helpers, shared)
    self.params = jax.device_put(sampler_lib._from_host(net.params), p_shard)
    self._view = jax.jit(
        self._view_impl, in_shardings=(p_shard, batch, batch, rep, batch, rep, batch, batch, batch),
        out_shardings=(batch, (batch, batch, batch)), donate_argnums=(1,))
    self._fuse = jax.jit(self._fuse_impl, in_shardings=(batch, batch, rep, rep),
                         out_shardings=batch)

  @property
  def batch_multiple(self) -> int:
    return parallel.data_parallel_size(self.mesh)

  def _aggregate(self, buffer, views, valid, target_view):
    s = self.settings.lifting
    agg = functools.partial(aggregate_lib.aggregate_views, near=s.near, far=s.far,
                            fov_deg=s.fov_deg, ssaa=s.ssaa, atol=s.atol, rtol=s.rtol,
                            erode=s.erode)
    return jax.vmap(agg, in_axes=(0, 0, None, 0))(buffer, views, valid, target_view)

  def _view_impl(self, params, buffer, views, valid, target_view, n, low, keys, labels):
    """Super-resolves view n of every instance into slot n of `buffer` [B, V, H, W, 4].

    low: [B, h, w, 4] view n at the low resolution in [0, 1] (G_sr's data encoding). Returns
    (buffer, (aggregated condition rgbd, mask, mask_rgb)), the condition zero when independent.
    """
    s, res = self.settings, self.resolution
    b = buffer.shape[0]
    if self.consistent:
      agg = self._aggregate(buffer, views, valid, target_view)
    else:
      zeros = jnp.zeros((b, res, res, 1), jnp.float32)
      agg = aggregate_lib.Aggregated(rgbd=jnp.zeros((b, res, res, 4), jnp.float32), mask=zeros,
                                     mask_rgb=zeros, hull=zeros)
    guided = functools.partial(sampler_lib._network_eps_fn, self.net, params)

    def one(key, label, low1, a):
      vkey = jax.random.fold_in(key, n)
      condition = sr_lib.condition_from_low(depth_lib.to_network(low1[None]), res)
      eps_fn = self.net.role.eps_fn(guided(label[None], s.guidance), condition,
                                    jax.random.fold_in(vkey, 2))
      edits = None
      if self.consistent:
        edits = samplers.ConditionEdits(
            rgb=depth_lib.to_network(a.rgbd[None, ..., :3]),
            depth=depth_lib.to_network(a.rgbd[None, ..., 3:]), mask_rgb=a.mask_rgb[None],
            mask=a.mask[None], hull=depth_lib.to_network(a.hull[None]),
            rgb_weight=s.replace_rgb, depth_weight=s.replace_depth, hull_weight=s.constrain_depth)
      x_t = jax.random.normal(jax.random.fold_in(vkey, 0), (1, res, res, 4), jnp.float32)
      if self.t_top < self.schedule.num_steps:
        start = jnp.concatenate([condition['y_rgb'], condition['y_depth']], -1)
        if self.consistent:  # the pinned pixels start from the warped SR views
          start = jnp.concatenate([
              jnp.where(a.mask_rgb > 0, edits.rgb[0], start[0, ..., :3]),
              jnp.where(a.mask > 0, edits.depth[0], start[0, ..., 3:])], -1)[None]
        k = self.t_top - 1
        x_t = (self.chain_schedule.sqrt_alphas_cumprod[k] * start
               + self.chain_schedule.sqrt_one_minus_alphas_cumprod[k] * x_t).astype(jnp.float32)
      x0 = samplers.ddim_sample(eps_fn, x_t, schedule=self.chain_schedule, steps=s.steps,
                                eta=s.lifting.eta, key=jax.random.fold_in(vkey, 1), edits=edits,
                                clip_denoised=s.lifting.clip_denoised)
      return jnp.clip(depth_lib.from_network(x0[0]), 0.0, 1.0)

    new = jax.vmap(one)(keys, labels, low, agg)
    buffer = jax.lax.dynamic_update_index_in_dim(buffer, new.astype(buffer.dtype), n, axis=1)
    return buffer, (agg.rgbd, agg.mask, agg.mask_rgb)

  def _fuse_impl(self, buffer, views, valid, frame_view):
    target = jnp.broadcast_to(frame_view, (buffer.shape[0], 4, 4))
    agg = self._aggregate(buffer, views, valid, target)
    return agg.rgbd * agg.mask

  def view(self, buffer, views, valid, n, low, keys, labels):
    """SR view n of every instance of the batch into slot n of `buffer` (donated)."""
    return self._view(self.params, buffer, views, jnp.asarray(valid, bool), views[:, n],
                      jnp.int32(n), low, keys, jnp.asarray(labels, jnp.int32))

  def fuse(self, buffer, views, valid, frame_views: np.ndarray) -> np.ndarray:
    """Fusion-rendered frames [B, T, H, W, 4] (holes black) along a camera path [T, 4, 4]."""
    valid = jnp.asarray(valid, bool)
    return np.stack([sampler_lib.to_host(self._fuse(buffer, views, valid, jnp.asarray(fv)))
                     for fv in np.asarray(frame_views, np.float32)], 1)


def sr_keys(seed: int, instance_ids: Sequence[int]) -> jax.Array:
  """Per-instance SR keys [N, 2], a stream apart from the view sampler's instance keys."""
  return jax.vmap(lambda k: jax.random.fold_in(k, _SR_STREAM))(
      viewsets.instance_keys(seed, instance_ids))


def super_resolve(sampler: SuperResSampler, low_rgbd: np.ndarray, views: np.ndarray, *,
                  seed: int, instance_ids: Sequence[int], labels: np.ndarray, batch_size: int,
                  frame_views: Optional[np.ndarray] = None, progress: bool = False
                  ) -> tuple[SRResult, Optional[np.ndarray]]:
  """Super-resolves the view sets of many instances, `batch_size` instances at a time.

  Args:
    sampler: the compiled G_sr.
    low_rgbd: [N, V, h, w, 4] views in [0, 1] (G_sr's data encoding), h = sampler.low_resolution.
    views: [N, V, 4, 4] their cameras.
    seed, instance_ids: instance i uses keys derived from (seed, instance_ids[i]) only.
    labels: [N] class labels (-1 = none).
    batch_size: instances per compiled call, rounded up to a multiple of the device count.
    frame_views: optional [T, 4, 4] camera path the SR views are fused into (video frames).
    progress: a tqdm bar over the views.

  Returns:
    (SRResult, fused frames [N, T, H, W, 4] or None).
  """
  low_rgbd = np.asarray(low_rgbd, np.float32)
  n_inst, num_views = low_rgbd.shape[:2]
  if low_rgbd.shape[2:] != (sampler.low_resolution, sampler.low_resolution, 4):
    raise errors.ConfigError(
        'sample.sr', f'G_sr takes {sampler.low_resolution} px views, the view set has '
        f'{low_rgbd.shape[2]} px', f'use a G_sr trained with sr.low_resolution={low_rgbd.shape[2]}')
  views = np.asarray(views, np.float32)
  ids = np.asarray(instance_ids, np.int64)
  labels = np.asarray(labels, np.int32)
  res, mult = sampler.resolution, sampler.batch_multiple
  batch = max(mult, -(-min(batch_size, n_inst) // mult) * mult)
  on_batch = lambda x: jax.device_put(x, sampler.batch_sharding)
  rgbd = np.zeros((n_inst, num_views, res, res, 4), np.float32)
  conds = [np.zeros((n_inst, num_views, res, res, c), np.float32) for c in (4, 1, 1)]
  fused = None
  timings = {'sr_s': 0.0, 'sr_fusion_s': 0.0}
  bar = tqdm.tqdm(total=n_inst * num_views, desc='SR views', unit='view',
                  dynamic_ncols=True) if progress else None
  for start in range(0, n_inst, batch):
    idx = np.arange(start, min(start + batch, n_inst))
    b_sel = np.concatenate([idx, np.full(batch - len(idx), idx[-1])])  # padding: dropped
    keys = on_batch(sr_keys(seed, ids[b_sel]))
    b_views, b_labels = on_batch(views[b_sel]), on_batch(labels[b_sel])
    buffer = on_batch(jnp.zeros((batch, num_views, res, res, 4), jnp.float32))
    t0 = time.perf_counter()
    for n in range(num_views):
      buffer, cond = sampler.view(buffer, b_views, np.arange(num_views) < n, n,
                                  on_batch(low_rgbd[b_sel, n]), keys, b_labels)
      if sampler.consistent:
        for target, c in zip(conds, cond):
          target[idx, n] = sampler_lib.to_host(c)[:len(idx)]
      if bar is not None:
        bar.update(len(idx))
    rgbd[idx] = sampler_lib.to_host(buffer)[:len(idx)]
    timings['sr_s'] += time.perf_counter() - t0
    if frame_views is not None:
      t0 = time.perf_counter()
      frames = sampler.fuse(buffer, b_views, np.ones(num_views, bool), frame_views)
      if fused is None:
        fused = np.zeros((n_inst,) + frames.shape[1:], np.float32)
      fused[idx] = frames[:len(idx)]
      timings['sr_fusion_s'] += time.perf_counter() - t0
  if bar is not None:
    bar.close()
  timings['seconds_per_view'] = timings['sr_s'] / (-(-n_inst // batch) * num_views)
  if not sampler.consistent:
    conds = [None, None, None]
  return SRResult(rgbd, *conds, timings=timings), fused


def reencode_depth(rgbd: np.ndarray, *, source: tuple[float, float],
                   target: tuple[float, float]) -> np.ndarray:
  """Views [..., 4] in [0, 1] with z-buffer depth of (near, far) `source` re-encoded to `target`
  (a view set from G_c trained on another depth encoding than G_sr)."""
  if tuple(source) == tuple(target):
    return rgbd
  depth = depth_lib.depth_from_zbuf(rgbd[..., 3], *source)
  zbuf = np.asarray(depth_lib.zbuf_from_depth(depth, *target), np.float32)
  return np.concatenate([rgbd[..., :3], zbuf[..., None]], -1)


def build(sample_config: Any, mesh_config: Any) -> tuple[SuperResSampler, dict]:
  """G_sr from config.sample.sr and its SR settings; info for the manifest (its model, sizes and
  data encoding `data_near` / `data_far`)."""
  s = sample_config
  settings = SRSettings.from_config(s)
  settings.validate()
  net, config = networks.load_network(s.sr, field='sample.sr', ema=s.ema)
  low = sr_lib.low_resolution_of(config)
  sampler = SuperResSampler(net, settings, mesh=parallel.make_mesh(mesh_config),
                            schedule=networks.diffusion_schedule(config), low_resolution=low)
  data_near, data_far = networks.data_encoding(config)
  info = {'sr_model': config.model.to_dict(), 'resolution': sampler.resolution,
          'low_resolution': low, 'data_near': data_near, 'data_far': data_far}
  return sampler, info
