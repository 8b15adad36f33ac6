"""Coloured point clouds as binary PLY."""
import io

import numpy as np
import plyfile

from ivd_jax.io import paths


def save_ply(path: str, points: np.ndarray, colours: np.ndarray) -> str:
  """Writes a binary little-endian PLY with float x, y, z and uchar red, green, blue."""
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
  buffer = io.BytesIO()
  plyfile.PlyData([plyfile.PlyElement.describe(vertex, 'vertex')]).write(buffer)
  paths.write_bytes(path, buffer.getvalue())  # local or gs://
  return path
