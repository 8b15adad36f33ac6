"""Geometry error of a mesh against a reference surface: accuracy, completeness, Chamfer.

accuracy: mean distance from the mesh to the reference surface (how far the mesh strays);
completeness: mean distance from points on the reference surface to the mesh (what it misses);
chamfer: their mean. Distances to the mesh are measured to points sampled uniformly on its
triangles (seeded, so the figures are reproducible); distances to the reference surface are exact
when the caller gives them (e.g. the analytic scene distance of data/surfaces.py).
"""
from typing import Optional

import numpy as np
from scipy import spatial


def sample_surface(vertices: np.ndarray, faces: np.ndarray, num: int, *, seed: int) -> np.ndarray:
  """[num, 3] points uniform on the triangles' area (numpy PCG64 from `seed`)."""
  tri = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]  # [F, 3, 3]
  area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
  if not len(tri) or area.sum() <= 0:
    return np.zeros((0, 3))
  rng = np.random.default_rng(seed)
  which = rng.choice(len(tri), size=num, p=area / area.sum())
  r1, r2 = rng.uniform(size=(2, num))
  s = np.sqrt(r1)  # uniform barycentric coordinates
  a, b, c = 1.0 - s, s * (1.0 - r2), s * r2
  t = tri[which]
  return a[:, None] * t[:, 0] + b[:, None] * t[:, 1] + c[:, None] * t[:, 2]


def nearest_distance(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """[P] Euclidean distance of each point to its nearest reference point (inf without any)."""
  points = np.asarray(points, np.float64).reshape(-1, 3)
  if not len(reference):
    return np.full(len(points), np.inf)
  return spatial.cKDTree(np.asarray(reference, np.float64)).query(points)[0]


def chamfer(mesh_points: np.ndarray, surface_points: np.ndarray, *,
            mesh_to_surface: Optional[np.ndarray] = None,
            within: Optional[float] = None) -> dict[str, float]:
  """Accuracy, completeness and Chamfer distance (mean of the two) in world units.

  Args:
    mesh_points: [P, 3] points on the mesh (sample_surface).
    surface_points: [Q, 3] points on the reference surface.
    mesh_to_surface: optional exact [P] distances of mesh_points to the reference surface
      (else their distance to the nearest surface point).
    within: optional distance: also the fraction of mesh points within it of the surface
      (precision) and of surface points within it of the mesh (recall).

  Returns:
    accuracy, completeness, chamfer, accuracy_median, completeness_median, num_mesh_points,
    num_surface_points (+ precision, recall with `within`).
  """
  acc = (np.asarray(mesh_to_surface, np.float64) if mesh_to_surface is not None
         else nearest_distance(mesh_points, surface_points))
  comp = nearest_distance(surface_points, mesh_points)
  if not len(acc) or not len(comp):
    nan = float('nan')
    out = dict(accuracy=nan, completeness=nan, chamfer=nan, accuracy_median=nan,
               completeness_median=nan)
  else:
    out = dict(accuracy=float(acc.mean()), completeness=float(comp.mean()),
               chamfer=float(0.5 * (acc.mean() + comp.mean())),
               accuracy_median=float(np.median(acc)), completeness_median=float(np.median(comp)))
  out.update(num_mesh_points=int(len(acc)), num_surface_points=int(len(comp)))
  if within is not None:
    out['precision'] = float(np.mean(acc < within)) if len(acc) else float('nan')
    out['recall'] = float(np.mean(comp < within)) if len(comp) else float('nan')
  return out
