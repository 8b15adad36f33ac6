"""TSDF fusion: every view's depth into one truncated signed distance volume (jittable).

Curless & Levoy 1996, with the projective distance of KinectFusion (Newcombe et al. 2011): a voxel
centre p seen by a view at planar depth z lands on pixel (r, c) whose depth is d; its signed
distance is d - z (positive in front of the surface, i.e. free space), truncated to
[-truncation, truncation] and stored divided by the truncation, in [-1, 1]. Voxels more than the
truncation behind the surface (occluded) and outside the view are left alone. Every view updates
the weighted running averages
    T <- (W T + w t) / (W + w),   C <- (W C + w c) / (W + w),   W <- W + w
with w = 1 per observing view. The zero level set of T is the fused surface (marching cubes on the
host: sampling/mesh.py). Cameras follow geometry.cameras (OpenGL views, pixel centres at
(c + .5) / N, planar depth); the depth is sampled at the nearest pixel.

Grid: voxel (i, j, k) has its centre at origin + (i + .5, j + .5, k + .5) * voxel; the shape is
static (one compilation per shape), origin / voxel / truncation are traced.
"""
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from ivd_jax.geometry import cameras


class Volume(NamedTuple):
  tsdf: jnp.ndarray  # [X, Y, Z] distance / truncation in [-1, 1]; 1 where nothing observed
  weight: jnp.ndarray  # [X, Y, Z] number of views that observed the voxel
  colour: jnp.ndarray  # [X, Y, Z, 3] weighted mean colour of the observations


def grid_shape(bounds_min: Sequence[float], bounds_max: Sequence[float],
               voxel: float) -> tuple[int, int, int]:
  """Voxels along x, y, z covering [bounds_min, bounds_max] (rounded up)."""
  return tuple(max(1, int(math.ceil((hi - lo) / voxel - 1e-6)))
               for lo, hi in zip(bounds_min, bounds_max))


def voxel_centres(origin: jnp.ndarray, voxel: jnp.ndarray, shape: tuple[int, int, int]):
  """[X, Y, Z, 3] world positions of the voxel centres."""
  axes = [origin[a] + (jnp.arange(n, dtype=jnp.float32) + 0.5) * voxel
          for a, n in enumerate(shape)]
  return jnp.stack(jnp.meshgrid(*axes, indexing='ij'), axis=-1)


def integrate(volume: Volume, depth: jnp.ndarray, rgb: jnp.ndarray, view: jnp.ndarray, *,
              origin: jnp.ndarray, voxel: jnp.ndarray, truncation: jnp.ndarray,
              fov_deg: float) -> Volume:
  """Adds one view: planar depth [N, N] (<= 0 or non-finite: no depth) and colour [N, N, 3]."""
  shape = volume.tsdf.shape
  n = depth.shape[0]
  p = voxel_centres(origin, voxel, shape).reshape(-1, 3)
  p_cam = p @ view[:3, :3].T + view[:3, 3]
  z = -p_cam[:, 2]
  f = cameras.focal_length(fov_deg)
  safe_z = jnp.where(z > 0, z, 1.0)
  col = jnp.floor((f * p_cam[:, 0] / safe_z + 0.5) * n).astype(jnp.int32)
  row = jnp.floor((0.5 - f * p_cam[:, 1] / safe_z) * n).astype(jnp.int32)
  inside = (z > 0) & (col >= 0) & (col < n) & (row >= 0) & (row < n)
  col, row = jnp.clip(col, 0, n - 1), jnp.clip(row, 0, n - 1)
  d = depth[row, col]
  sdf = d - z
  seen = inside & jnp.isfinite(d) & (d > 0) & (sdf > -truncation)
  w = seen.astype(jnp.float32)
  t = jnp.clip(jnp.where(seen, sdf, 0.0) / truncation, -1.0, 1.0)
  c = rgb[row, col]
  old_w = volume.weight.reshape(-1)
  new_w = old_w + w
  denom = jnp.maximum(new_w, 1.0)
  tsdf = jnp.where(w > 0, (old_w * volume.tsdf.reshape(-1) + w * t) / denom,
                   volume.tsdf.reshape(-1))
  colour = jnp.where(w[:, None] > 0,
                     (old_w[:, None] * volume.colour.reshape(-1, 3) + w[:, None] * c) /
                     denom[:, None], volume.colour.reshape(-1, 3))
  return Volume(tsdf.reshape(shape), new_w.reshape(shape), colour.reshape(shape + (3,)))


@functools.partial(jax.jit, static_argnames=('shape', 'fov_deg'))
def fuse(depth: jnp.ndarray, rgb: jnp.ndarray, views: jnp.ndarray, *, origin: jnp.ndarray,
         voxel: jnp.ndarray, truncation: jnp.ndarray, shape: tuple[int, int, int],
         fov_deg: float) -> Volume:
  """TSDF of all views of one scene.

  Args:
    depth: [V, N, N] planar depth (<= 0 or non-finite pixels carry no depth).
    rgb: [V, N, N, 3] colours.
    views: [V, 4, 4] world->camera matrices.
    origin: [3] corner of the grid (bounds minimum); voxel: edge length; truncation: distance
      beyond which the signed distance is clipped (a few voxels).
    shape: (X, Y, Z) voxels (static; grid_shape of the bounds).
    fov_deg: field of view (static).

  Returns:
    The fused Volume.
  """
  origin = jnp.asarray(origin, jnp.float32)
  voxel = jnp.asarray(voxel, jnp.float32)
  truncation = jnp.asarray(truncation, jnp.float32)
  empty = Volume(jnp.ones(shape, jnp.float32), jnp.zeros(shape, jnp.float32),
                 jnp.zeros(shape + (3,), jnp.float32))

  def step(volume, inputs):
    d, c, v = inputs
    return integrate(volume, d, c, v, origin=origin, voxel=voxel, truncation=truncation,
                     fov_deg=fov_deg), None

  volume, _ = jax.lax.scan(step, empty, (jnp.asarray(depth, jnp.float32),
                                         jnp.asarray(rgb, jnp.float32),
                                         jnp.asarray(views, jnp.float32)))
  return volume
