"""Coloured point clouds and meshes as binary little-endian PLY (opens in MeshLab and Blender)."""
import io
from typing import Optional

import numpy as np
import plyfile

from ivd_jax.io import paths


def _vertex_element(points: np.ndarray, colours: np.ndarray) -> plyfile.PlyElement:
  points = np.asarray(points, np.float32).reshape(-1, 3)
  colours = np.asarray(colours, np.uint8).reshape(-1, 3)
  if points.shape[0] != colours.shape[0]:
    raise ValueError(f'{points.shape[0]} points but {colours.shape[0]} colours')
  vertex = np.empty(points.shape[0], dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'),
                                            ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')])
  for i, name in enumerate('xyz'):
    vertex[name] = points[:, i]
  for i, name in enumerate(('red', 'green', 'blue')):
    vertex[name] = colours[:, i]
  return plyfile.PlyElement.describe(vertex, 'vertex')


def _write(path: str, elements: list) -> str:
  buffer = io.BytesIO()
  plyfile.PlyData(elements, byte_order='<').write(buffer)  # binary little-endian
  paths.write_bytes(path, buffer.getvalue())  # local or gs://
  return path


def save_ply(path: str, points: np.ndarray, colours: np.ndarray) -> str:
  """Writes a binary little-endian PLY with float x, y, z and uchar red, green, blue."""
  return _write(path, [_vertex_element(points, colours)])


def save_mesh_ply(path: str, vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray,
                  edges: Optional[np.ndarray] = None) -> str:
  """Writes a coloured triangle mesh: `vertex` (float x, y, z, uchar red, green, blue), `face`
  (uchar-counted int vertex_indices) and, when given, `edge` (int vertex1, vertex2)."""
  faces = np.asarray(faces, np.int32).reshape(-1, 3)
  num_vertices = np.asarray(vertices).reshape(-1, 3).shape[0]
  if faces.size and (faces.min() < 0 or faces.max() >= num_vertices):
    raise ValueError(f'face indices outside the {num_vertices} vertices')
  face = np.empty(faces.shape[0], dtype=[('vertex_indices', 'i4', (3,))])
  face['vertex_indices'] = faces
  elements = [_vertex_element(vertices, colours),
              plyfile.PlyElement.describe(face, 'face', len_types={'vertex_indices': 'u1'})]
  if edges is not None:
    edges = np.asarray(edges, np.int32).reshape(-1, 2)
    edge = np.empty(edges.shape[0], dtype=[('vertex1', 'i4'), ('vertex2', 'i4')])
    edge['vertex1'], edge['vertex2'] = edges[:, 0], edges[:, 1]
    elements.append(plyfile.PlyElement.describe(edge, 'edge'))
  return _write(path, elements)
