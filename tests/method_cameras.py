"""docs/method.md §2 cameras written out in plain numpy: an independent reference for the tests."""
import numpy as np


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
  """OpenGL look-at (world -> camera), p_cam = M @ [x, y, z, 1]."""
  eye, target, up = (np.asarray(x, np.float64) for x in (eye, target, up))
  f = (target - eye) / np.linalg.norm(target - eye)
  s = np.cross(f, up)
  s /= np.linalg.norm(s)
  u = np.cross(s, f)
  m = np.eye(4)
  m[0, :3], m[1, :3], m[2, :3] = s, u, -f
  m[:3, 3] = -m[:3, :3] @ eye
  return m


def orbit(yaw, pitch=0.0, radius=1.0, target=(0.0, 0.0, 0.0)) -> np.ndarray:
  """Eye on the orbit of docs/method.md §2, looking at `target` with up (0, 1, 0)."""
  eye = radius * np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch),
                           np.cos(yaw) * np.cos(pitch)])
  return look_at(eye, target)
