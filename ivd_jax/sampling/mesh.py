"""A view set as geometry to open in Blender or MeshLab: its fused mesh and its camera frustums.

fused_mesh: every view's depth fused into a TSDF (geometry.tsdf, jitted on the device), its zero
level set extracted with marching cubes (scikit-image, host), vertex colours from the fused colour
volume. camera_frustums: one pyramid per camera (apex at the eye, base on the image corners).
Host-side numpy in the warp encoding (RGB and z-buffer depth in [0, 1]); files are written by
io.ply (and io.glb).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
from scipy import ndimage
from skimage import measure

from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.geometry import tsdf as tsdf_lib


@dataclasses.dataclass(frozen=True)
class MeshSettings:
  """The fused mesh of config.sample (mesh_* fields; defaults in configs/common.py).

  voxel: voxel edge in world units. truncation: TSDF truncation in voxels.
  bounds: ((x0, y0, z0), (x1, y1, z1)) the fused box, or () for the box of the lifted views
  (auto_bounds). max_voxels: an auto box that needs more voxels gets a coarser voxel.
  frustum_size: planar depth of the drawn camera frustums' base.
  """
  voxel: float
  truncation: float
  bounds: tuple
  max_voxels: int
  frustum_size: float

  @classmethod
  def from_config(cls, sample_config: Any) -> Optional['MeshSettings']:
    """None when config.sample.mesh is off."""
    s = sample_config
    if not s.mesh:
      return None
    bounds = tuple(tuple(float(x) for x in corner) for corner in s.mesh_bounds)
    return cls(voxel=float(s.mesh_voxel), truncation=float(s.mesh_truncation), bounds=bounds,
               max_voxels=int(s.mesh_max_voxels), frustum_size=float(s.mesh_frustum_size))


class Mesh(NamedTuple):
  vertices: np.ndarray  # [P, 3] float32 world positions
  faces: np.ndarray  # [F, 3] int32 vertex indices, counter-clockwise seen from outside
  colours: np.ndarray  # [P, 3] uint8


def empty_mesh() -> Mesh:
  return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32),
              np.zeros((0, 3), np.uint8))


def fuse_views(rgbd: np.ndarray, views: np.ndarray, *, near: float, far: float, fov_deg: float,
               bounds: Sequence[Sequence[float]], voxel: float,
               truncation: float) -> tsdf_lib.Volume:
  """The TSDF volume of one view set.

  Args:
    rgbd: [V, N, N, 4] in [0, 1]; channel 3 is the z-buffer depth with `near` / `far`.
    views: [V, 4, 4] world->camera matrices.
    near, far: the z-buffer encoding (config.sample.near / far).
    fov_deg: field of view.
    bounds: ((x0, y0, z0), (x1, y1, z1)) the fused box in world units.
    voxel: voxel edge length; truncation: TSDF truncation distance (world units).

  Returns:
    The fused volume (numpy arrays).
  """
  rgbd = np.asarray(rgbd, np.float32)
  depth = np.asarray(depth_lib.depth_from_zbuf(rgbd[..., 3], near, far), np.float32)
  lo, hi = np.asarray(bounds[0], np.float32), np.asarray(bounds[1], np.float32)
  shape = tsdf_lib.grid_shape(lo, hi, voxel)
  volume = tsdf_lib.fuse(depth, rgbd[..., :3], np.asarray(views, np.float32), origin=lo,
                         voxel=float(voxel), truncation=float(truncation), shape=shape,
                         fov_deg=float(fov_deg))
  return tsdf_lib.Volume(*(np.asarray(x) for x in volume))


def extract_mesh(volume: tsdf_lib.Volume, *, origin: Sequence[float], voxel: float) -> Mesh:
  """Marching cubes on the zero level set, only in cubes whose 8 corners were observed."""
  tsdf = np.array(volume.tsdf, np.float32)  # a writable copy (skimage needs one)
  observed = np.asarray(volume.weight) > 0
  # A cube is meshed only when all its 8 corners were observed: skimage tests one corner per
  # cube, so the mask is the observed set eroded by one voxel in every direction (whichever corner
  # it tests, the whole cube is then observed). Without it the boundary between the truncation
  # band behind a surface and the unobserved voxels beyond would become a second surface.
  cube = ndimage.binary_erosion(observed, structure=np.ones((3, 3, 3), bool), border_value=0)
  masked = tsdf[cube]
  if min(tsdf.shape) < 2 or not masked.size or masked.min() >= 0 or masked.max() <= 0:
    return empty_mesh()
  verts, faces, _, _ = measure.marching_cubes(tsdf, level=0.0, spacing=(voxel,) * 3, mask=cube,
                                              allow_degenerate=False)
  # marching_cubes puts voxel (i, j, k) at (i, j, k) * voxel; its centre is at + 0.5 voxel.
  world = verts + np.asarray(origin, np.float64) + 0.5 * voxel
  # Colour: the weight-averaged fused colour, trilinear at each vertex (index coordinates).
  coords = (verts / voxel).T
  weight = np.asarray(volume.weight, np.float32)
  total = np.stack([ndimage.map_coordinates(np.asarray(volume.colour)[..., c] * weight, coords,
                                            order=1, mode='nearest') for c in range(3)], axis=1)
  norm = ndimage.map_coordinates(weight, coords, order=1, mode='nearest')[:, None]
  colour = np.clip(total / np.maximum(norm, 1e-6), 0.0, 1.0)
  # skimage's faces (gradient 'descent') wind counter-clockwise seen from the larger values: the
  # free space, so normals face the cameras (tests/test_mesh.py).
  return Mesh(world.astype(np.float32), faces.astype(np.int32),
              np.round(colour * 255.0).astype(np.uint8))


def auto_bounds(rgbd: np.ndarray, views: np.ndarray, *, near: float, far: float, fov_deg: float,
                margin: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The box holding the 2nd-98th percentile of every view's lifted pixels, plus `margin`."""
  depth = np.asarray(depth_lib.depth_from_zbuf(np.asarray(rgbd, np.float32)[..., 3], near, far))
  points = np.concatenate([np.asarray(cameras.unproject(d, v, fov_deg=fov_deg)).reshape(-1, 3)
                           for d, v in zip(depth, np.asarray(views, np.float32))])
  points = points[np.isfinite(points).all(axis=1)]
  lo, hi = np.percentile(points, 2.0, axis=0) - margin, np.percentile(points, 98.0, axis=0) + margin
  return tuple(float(x) for x in lo), tuple(float(x) for x in hi)


def fused_mesh(rgbd: np.ndarray, views: np.ndarray, *, near: float, far: float, fov_deg: float,
               settings: MeshSettings) -> tuple[Mesh, dict[str, Any]]:
  """The coloured mesh of one view set (fuse_views + extract_mesh).

  Returns:
    (the mesh, the grid it came from: bounds, voxel, truncation (world units), shape).
  """
  voxel = settings.voxel
  bounds = settings.bounds
  if not bounds:
    bounds = auto_bounds(rgbd, views, near=near, far=far, fov_deg=fov_deg,
                         margin=settings.truncation * voxel)
    count = np.prod(tsdf_lib.grid_shape(bounds[0], bounds[1], voxel))
    if count > settings.max_voxels:  # a coarser voxel for a large box
      voxel *= float((count / settings.max_voxels) ** (1.0 / 3.0)) * 1.001
  truncation = settings.truncation * voxel
  volume = fuse_views(rgbd, views, near=near, far=far, fov_deg=fov_deg, bounds=bounds,
                      voxel=voxel, truncation=truncation)
  grid = {'bounds': [list(bounds[0]), list(bounds[1])], 'voxel': voxel, 'truncation': truncation,
          'shape': list(volume.tsdf.shape)}
  return extract_mesh(volume, origin=bounds[0], voxel=voxel), grid


def camera_frustums(views: np.ndarray, *, fov_deg: float,
                    size: float) -> tuple[Mesh, np.ndarray]:
  """Pyramids of the cameras: apex at the eye, base the image rectangle at planar depth `size`.

  Returns:
    (mesh: 5 vertices and 6 faces per camera (4 sides, the base as 2 triangles), view 0 red and
    the others from blue to green in view order; edges [8 V, 2] int32: the pyramid's wire frame).
  """
  views = np.asarray(views, np.float32)
  half = size * 0.5 / cameras.focal_length(fov_deg)
  corners = np.array([[0.0, 0.0, 0.0], [-half, half, -size], [half, half, -size],
                      [half, -half, -size], [-half, -half, -size]], np.float32)
  vertices, faces, edges, colours = [], [], [], []
  num = len(views)
  for v, view in enumerate(views):
    to_world = np.asarray(cameras.invert_view(view))
    vertices.append(corners @ to_world[:3, :3].T + to_world[:3, 3])
    b = 5 * v
    faces += [[b, b + 2, b + 1], [b, b + 3, b + 2], [b, b + 4, b + 3], [b, b + 1, b + 4],
              [b + 1, b + 2, b + 3], [b + 1, b + 3, b + 4]]
    edges += [[b, b + k] for k in range(1, 5)] + [[b + k, b + k % 4 + 1] for k in range(1, 5)]
    t = v / max(num - 1, 1)
    colour = (230, 40, 40) if v == 0 else (0, int(200 * t), int(220 * (1 - t)) + 30)
    colours.append(np.tile(np.array(colour, np.uint8), (5, 1)))
  mesh = Mesh(np.concatenate(vertices).astype(np.float32), np.array(faces, np.int32),
              np.concatenate(colours))
  return mesh, np.array(edges, np.int32)
