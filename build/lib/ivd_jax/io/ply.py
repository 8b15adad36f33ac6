"""Coloured point clouds as binary PLY."""
import os

import numpy as np
import plyfile

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
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  plyfile.PlyData([plyfile.PlyElement.describe(vertex, 'vertex')]).write(path)
  return path
