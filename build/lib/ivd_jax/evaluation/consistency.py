"""3D consistency of a view set: how well every view agrees with every other view's warp.

For an ordered pair (i, j) view i is warped into camera j (geometry.warp.warp_rgbd, the same
splat the sampler uses). On the pixels the warp marks visible (the co-visible part of j) we
measure
  - colour error (pooled into a PSNR over all pairs, RGB in [0, 1]),
  - depth agreement: absolute relative error of linear depth |d_ij - d_j| / d_j and the fraction of
    co-visible pixels whose relative error is below `depth_tol`,
  - the co-visible fraction: co-visible pixels / all pixels.
A perfectly 3D-consistent set (true renders of one scene) scores the ceiling that the warp's own
resampling allows: the pipelines measure it by passing true renders of the same cameras to
`pairwise_consistency`.
"""
import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ivd_jax.evaluation import metrics
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.geometry import warp as warp_lib

# Pairs are warped in fixed-size chunks so that one compilation serves every view-set size.
_CHUNK = 8


@functools.partial(jax.jit, static_argnames=('near', 'far', 'fov_deg', 'ssaa', 'atol', 'rtol',
                                             'depth_tol'))
def _pair_sums(src, dst, src_view, dst_view, weight, *, near, far, fov_deg, ssaa, atol, rtol,
               depth_tol):
  """Sums for a chunk of pairs: [P, 5] = (sq colour err, co-visible, abs rel, agree, pixels)."""

  def one(s, d, sv, dv, w):
    warped = warp_lib.warp_rgbd(s, sv, dv, near=near, far=far, fov_deg=fov_deg, ssaa=ssaa,
                                atol=atol, rtol=rtol)
    m = warped.mask[..., 0] * w
    sq = jnp.sum((warped.rgbd[..., :3] - d[..., :3])**2, axis=-1)
    d_warp = depth_lib.depth_from_zbuf(warped.rgbd[..., 3], near, far)
    d_true = depth_lib.depth_from_zbuf(d[..., 3], near, far)
    rel = jnp.abs(d_warp - d_true) / jnp.maximum(d_true, 1e-6)
    rel = jnp.where(m > 0, rel, 0.0)
    return jnp.stack([
        jnp.sum(sq * m),
        jnp.sum(m),
        jnp.sum(rel * m),
        jnp.sum((rel < depth_tol) * m),
        w * m.size,
    ])

  return jax.vmap(one)(src, dst, src_view, dst_view, weight)


def view_pairs(views: np.ndarray, neighbours: Optional[int] = None) -> list[tuple[int, int]]:
  """Ordered pairs (i, j), i != j; with `neighbours`=k only each j's k nearest cameras i."""
  views = np.asarray(views, np.float64)
  n = views.shape[0]
  if neighbours is None or neighbours >= n - 1:
    return [(i, j) for j in range(n) for i in range(n) if i != j]
  # Camera centres: c = -R^T t for a world->camera matrix [R | t].
  centres = -np.einsum('vji,vj->vi', views[:, :3, :3], views[:, :3, 3])
  dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
  pairs = []
  for j in range(n):
    order = [i for i in np.argsort(dist[:, j], kind='stable') if i != j]
    pairs += [(int(i), j) for i in order[:neighbours]]
  return pairs


def pairwise_consistency(rgbds: Union[np.ndarray, jax.Array], views: np.ndarray, *, near: float,
                         far: float, fov_deg: float = 45.0, ssaa: int = 3, atol: float = 0.03,
                         rtol: float = 0.03, depth_tol: float = 0.05,
                         neighbours: Optional[int] = None) -> dict[str, float]:
  """Consistency figures of one or many view sets over the same cameras.

  Args:
    rgbds: [V, H, W, 4] or [N, V, H, W, 4] in [0, 1], z-buffer depth with `near`/`far`.
    views: [V, 4, 4] world->camera matrices, or [N, V, 4, 4] (one camera set per view set).
    near, far: the depth encoding used to lift views (sampling: 0.6 / 5 for MiDaS-trained models;
      the data's own near/far for exact-depth data).
    fov_deg, ssaa, atol, rtol: warp settings (the sampling defaults, docs/method.md §4 and §8).
    depth_tol: relative depth error below which a co-visible pixel counts as agreeing.
    neighbours: compare each view only with its k nearest cameras (all pairs when None).

  Returns:
    dict with psnr (dB, pooled), depth_abs_rel, depth_agreement, covisible (fractions),
    num_pairs and num_sets.
  """
  rgbds = np.asarray(rgbds, np.float32)
  if rgbds.ndim == 4:
    rgbds = rgbds[None]
  views = np.asarray(views, np.float32)
  if views.ndim == 3:
    views = np.broadcast_to(views, (rgbds.shape[0],) + views.shape)
  if views.shape[:2] != rgbds.shape[:2] or views.shape[1] < 2:
    raise ValueError(f'need >= 2 views with one camera each; got rgbds {rgbds.shape}, views '
                     f'{views.shape}')
  pairs = view_pairs(views[0], neighbours)
  src_idx = np.array([p[0] for p in pairs])
  dst_idx = np.array([p[1] for p in pairs])
  totals = np.zeros(5, np.float64)
  kwargs = dict(near=float(near), far=float(far), fov_deg=float(fov_deg), ssaa=int(ssaa),
                atol=float(atol), rtol=float(rtol), depth_tol=float(depth_tol))
  for inst, inst_views in zip(rgbds, views):
    for start in range(0, len(pairs), _CHUNK):
      s = src_idx[start:start + _CHUNK]
      d = dst_idx[start:start + _CHUNK]
      pad = _CHUNK - len(s)
      weight = np.concatenate([np.ones(len(s), np.float32), np.zeros(pad, np.float32)])
      s = np.concatenate([s, np.zeros(pad, s.dtype)])
      d = np.concatenate([d, np.ones(pad, d.dtype)])
      sums = _pair_sums(inst[s], inst[d], inst_views[s], inst_views[d], weight, **kwargs)
      totals += np.asarray(sums, np.float64).sum(0)
  sq, covis, absrel, agree, pixels = totals
  return {
      'psnr': metrics.psnr(sq, 3.0 * covis),
      'depth_abs_rel': float(absrel / covis) if covis > 0 else float('nan'),
      'depth_agreement': float(agree / covis) if covis > 0 else float('nan'),
      'covisible': float(covis / pixels),
      'num_pairs': len(pairs),
      'num_sets': int(rgbds.shape[0]),
  }
