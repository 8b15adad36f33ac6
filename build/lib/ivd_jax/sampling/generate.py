"""Many instances through the view sampler, a fixed-size batch at a time (docs/method.md §8)."""
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import auto as tqdm

from ivd_jax import errors
from ivd_jax.sampling import sampler as sampler_lib
from ivd_jax.sampling import viewsets


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


def _progress_tick(progress: bool | Callable[[int], None], total: int):
  """(tqdm bar or None, callback receiving views completed or None)."""
  if progress is True:
    bar = tqdm.tqdm(total=total, desc='views', unit='view', dynamic_ncols=True)
    return bar, bar.update
  return None, (progress if callable(progress) else None)


def generate_views(sampler: sampler_lib.ViewSampler, views: np.ndarray, *, seed: int,
                   instance_ids: Sequence[int], batch_size: int,
                   labels: Optional[np.ndarray] = None, first_rgbd: Optional[np.ndarray] = None,
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
    batch_size: instances per compiled call; rounded up to a multiple of the device count (the
      padding instances are computed and dropped).
    labels: [N] class labels (-1 = null / none); default all -1.
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
  bar, tick = _progress_tick(progress, n_inst * num_views)

  rgbd = np.zeros((n_inst, num_views, res, res, 4), np.float32)
  cond_rgbd = np.zeros_like(rgbd)
  cond_mask = np.zeros((n_inst, num_views, res, res, 1), np.float32)
  cond_mask_rgb = np.zeros_like(cond_mask)
  fused = None
  timings = {'first_view_s': 0.0, 'further_views_s': 0.0, 'fusion_s': 0.0}
  on_batch = lambda x: jax.device_put(x, sampler.batch_sharding)
  for start in range(0, n_inst, batch):
    idx = np.arange(start, min(start + batch, n_inst))
    pad = batch - len(idx)
    # Padding slots repeat the last instance's index; their outputs are dropped.
    b_ids = np.concatenate([ids[idx], np.full(pad, ids[idx[-1]])])
    b_sel = np.concatenate([idx, np.full(pad, idx[-1])])
    keys = on_batch(viewsets.instance_keys(seed, b_ids))
    b_labels = on_batch(labels[b_sel])
    b_views = on_batch(views[b_sel])

    t0 = time.perf_counter()
    if first_rgbd is not None:
      view0 = on_batch(first_rgbd[b_sel])
    else:
      view0 = sampler.first_view(keys, b_labels)
    buffer = jnp.zeros((batch, slots, res, res, 4), jnp.float32)
    buffer = on_batch(buffer.at[:, 0].set(view0))
    jax.block_until_ready(buffer)
    timings['first_view_s'] += time.perf_counter() - t0
    if tick:
      tick(len(idx))
    t0 = time.perf_counter()
    for n in range(1, num_views):
      valid = np.arange(slots) < n
      buffer, (c_rgbd, c_mask, c_mask_rgb) = sampler.next_view(
          buffer, b_views, valid, b_views[:, n], n, keys, b_labels)
      cond_rgbd[idx, n] = sampler_lib.to_host(c_rgbd)[:len(idx)]
      cond_mask[idx, n] = sampler_lib.to_host(c_mask)[:len(idx)]
      cond_mask_rgb[idx, n] = sampler_lib.to_host(c_mask_rgb)[:len(idx)]
      if tick:
        tick(len(idx))
    rgbd[idx] = sampler_lib.to_host(buffer)[:len(idx), :num_views]
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
