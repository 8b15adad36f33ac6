"""Coloured meshes as binary glTF (.glb) through trimesh, an optional dependency.

`pip install ivd-jax[mesh]` (or any trimesh >= 4) enables it; without trimesh AVAILABLE is False
and the exports write the PLY only.
"""
import numpy as np

from ivd_jax.io import paths

try:  # optional: a small pure-Python package (numpy only)
  import trimesh
except ImportError:  # pragma: no cover - depends on the environment
  trimesh = None

AVAILABLE = trimesh is not None


def save_mesh_glb(path: str, vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray) -> str:
  """Writes a triangle mesh with per-vertex RGB colours as .glb (needs trimesh: AVAILABLE)."""
  if trimesh is None:
    raise RuntimeError('writing .glb needs trimesh: pip install "ivd-jax[mesh]"')
  colours = np.asarray(colours, np.uint8).reshape(-1, 3)
  rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
  mesh = trimesh.Trimesh(vertices=np.asarray(vertices, np.float32),
                         faces=np.asarray(faces, np.int64), vertex_colors=rgba, process=False)
  paths.write_bytes(path, mesh.export(file_type='glb'))  # local or gs://
  return path
