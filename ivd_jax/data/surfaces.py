"""The analytic surfaces of a procedural scene (data/procedural.py) as a reference geometry.

distance: the exact distance of points to the scene's surfaces (wall and ground planes, spheres,
boxes; the dome lies far outside any fused box). surface_points: points exactly on the surfaces
that a set of cameras sees, by exact ray casting (procedural.render) at the pixel centres of a
render at `resolution` px, lifted with their true depth: the part of the scene a view set can
reconstruct. Together they score a mesh fused from views (evaluation/mesh.py).
"""
from typing import Optional, Sequence

import numpy as np

from ivd_jax.data import procedural
from ivd_jax.geometry import cameras


def distance(scene: procedural.Scene, points: np.ndarray) -> np.ndarray:
  """[P] float64 distance of world points [P, 3] to the nearest surface of the scene."""
  p = np.asarray(points, np.float64).reshape(-1, 3)
  candidates = [np.abs(p[:, 2] - scene.wall[0]), np.abs(p[:, 1] - scene.ground[0])]
  for centre_radius in scene.spheres:
    candidates.append(np.abs(np.linalg.norm(p - centre_radius[:3], axis=1) - centre_radius[3]))
  for box in scene.boxes:
    c, s = np.cos(box[6]), np.sin(box[6])
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # local -> world (procedural)
    local = np.abs((p - box[:3]) @ rot) - box[3:6]
    outside = np.linalg.norm(np.maximum(local, 0.0), axis=1)
    inside = np.minimum(local.max(axis=1), 0.0)
    candidates.append(np.abs(outside + inside))
  return np.min(np.stack(candidates), axis=0)


def surface_points(scene: procedural.Scene, views: np.ndarray, resolution: int, *,
                   fov_deg: float, bounds: Optional[Sequence[Sequence[float]]] = None
                   ) -> np.ndarray:
  """[Q, 3] points on the surfaces the views see (every pixel centre of each view's exact
  render at `resolution` px), optionally only those inside bounds ((x0, y0, z0), (x1, y1, z1))."""
  points = []
  for view in np.asarray(views, np.float32):
    depth = procedural.render(scene, view, resolution, fov_deg=fov_deg).depth
    points.append(np.asarray(cameras.unproject(depth, view, fov_deg=fov_deg),
                             np.float64).reshape(-1, 3))
  points = np.concatenate(points)
  if bounds is not None:
    lo, hi = np.asarray(bounds[0]), np.asarray(bounds[1])
    points = points[np.all((points >= lo) & (points <= hi), axis=1)]
  return points
