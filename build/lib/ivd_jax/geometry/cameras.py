"""Cameras of docs/method.md §2: pinhole, square image, OpenGL look-at views, orbit poses and view
sets.

Conventions: a view is a [4, 4] world -> camera matrix in math (row-major) layout,
p_cam = M @ [x, y, z, 1]; the camera looks down -z with x right and y up; depth is planar
(-z_cam). Pixel (r, c) of an N x N image has its centre at uv = ((c + .5) / N, (r + .5) / N) and
row 0 is the top (+y). Everything taking arrays is jittable; constants are numpy so that importing
this module never initialises a JAX backend (multi-host jobs must call jax.distributed first).
"""
import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ivd_jax import errors

Array = Union[np.ndarray, jnp.ndarray]

FOV_DEG = 45.0
UP = (0.0, 1.0, 0.0)

# docs/method.md §5: distribution of the random view pi_1 of a training pair.
TRAIN_YAW_STD = 0.15
TRAIN_PITCH_STD = 0.15
TRAIN_RADIUS_STD = 0.1
TRAIN_TARGET_STD = 0.05

# docs/method.md §8 view sets.
RANDOM_YAW_STD = 0.3
RANDOM_PITCH_STD = 0.15
GRID_YAWS = (0.0, 0.15, -0.15, 0.30, -0.30, 0.45, -0.45, 0.60, -0.60)
GRID_PITCHES = (0.0, 0.15, -0.15)
SWING_YAW = 0.6
SWING_PITCH = 0.15
VIEWSETS = ('random', '3x9', 'swing', 'orbit360')


def focal_length(fov_deg: float = FOV_DEG) -> float:
  """Focal length in image-width units: 0.5 / tan(fov / 2) (1.2071 at 45 degrees)."""
  return 0.5 / math.tan(0.5 * math.radians(fov_deg))


def intrinsics(resolution: int, fov_deg: float = FOV_DEG) -> jnp.ndarray:
  """Pixel intrinsics [3, 3] (x right, y down, principal point at the image centre)."""
  f = focal_length(fov_deg) * resolution
  c = 0.5 * resolution
  return jnp.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], jnp.float32)


def look_at(eye: Array, target: Array = (0.0, 0.0, 0.0), up: Array = UP) -> jnp.ndarray:
  """World -> camera look-at matrix [4, 4] (glm.lookAt, OpenGL: camera looks down -z)."""
  eye = jnp.asarray(eye, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  up = jnp.asarray(up, jnp.float32)
  forward = target - eye
  forward = forward / jnp.linalg.norm(forward)
  side = jnp.cross(forward, up)
  side = side / jnp.linalg.norm(side)
  true_up = jnp.cross(side, forward)
  rot = jnp.stack([side, true_up, -forward])  # [3, 3]
  top = jnp.concatenate([rot, -(rot @ eye)[:, None]], axis=1)
  return jnp.concatenate([top, jnp.array([[0.0, 0.0, 0.0, 1.0]], jnp.float32)], axis=0)


def orbit_eye(yaw: Array, pitch: Array, radius: Array = 1.0) -> jnp.ndarray:
  """eye = r * (sin(yaw) cos(pitch), sin(pitch), cos(yaw) cos(pitch)) (docs/method.md §2)."""
  yaw, pitch, radius = (jnp.asarray(x, jnp.float32) for x in (yaw, pitch, radius))
  return radius * jnp.stack(
      [jnp.sin(yaw) * jnp.cos(pitch), jnp.sin(pitch), jnp.cos(yaw) * jnp.cos(pitch)])


def orbit_view(yaw: Array, pitch: Array, radius: Array = 1.0,
               target: Array = (0.0, 0.0, 0.0)) -> jnp.ndarray:
  """Orbit camera looking at `target`; the eye orbits the origin (the target only aims it)."""
  return look_at(orbit_eye(yaw, pitch, radius), target)


# View 0 of every image: eye (0, 0, 1) looking at the origin, i.e. a translation by (0, 0, -1).
SOURCE_VIEW = np.array(
    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -1], [0, 0, 0, 1]], np.float32)


def camera_center(view: Array) -> jnp.ndarray:
  """World position of the eye of a world -> camera matrix: -R^T t."""
  view = jnp.asarray(view, jnp.float32)
  return -view[:3, :3].T @ view[:3, 3]


def invert_view(view: Array) -> jnp.ndarray:
  """Camera -> world matrix of a rigid world -> camera matrix."""
  view = jnp.asarray(view, jnp.float32)
  rot_t = view[:3, :3].T
  top = jnp.concatenate([rot_t, (-rot_t @ view[:3, 3])[:, None]], axis=1)
  return jnp.concatenate([top, jnp.array([[0.0, 0.0, 0.0, 1.0]], jnp.float32)], axis=0)


def random_training_view(key: jax.Array) -> jnp.ndarray:
  """The random view pi_1 of a G_c training pair (docs/method.md §5), from an explicit key."""
  k_yaw, k_pitch, k_radius, k_target = jax.random.split(key, 4)
  yaw = TRAIN_YAW_STD * jax.random.normal(k_yaw, ())
  pitch = TRAIN_PITCH_STD * jax.random.normal(k_pitch, ())
  radius = 1.0 + TRAIN_RADIUS_STD * jax.random.normal(k_radius, ())
  target = TRAIN_TARGET_STD * jax.random.normal(k_target, (3,))
  return orbit_view(yaw, pitch, radius, target)


def viewset_poses(name: Union[str, Sequence[Sequence[float]], np.ndarray], *,
                  key: Optional[jax.Array] = None, num_frames: int = 60) -> np.ndarray:
  """Poses [V, 3] of (yaw, pitch, radius) of a view set; view 0 is the source view.

  Args:
    name: 'random' (FID protocol: view 0 and one view with yaw 0.3 N(0,1), pitch 0.15 N(0,1);
      needs `key`), '3x9' (27 views: yaws outer loop, pitches inner loop), 'swing' (yaw 0.6 cos t,
      pitch 0.15 sin t), 'orbit360' (a full turn of yaw at pitch 0), or a custom list of
      (yaw, pitch) or (yaw, pitch, radius) rows in radians.
    key: PRNG key for 'random'.
    num_frames: number of frames of 'swing' and 'orbit360'.

  Returns:
    float32 numpy array [V, 3].
  """
  if not isinstance(name, str):
    poses = np.asarray(name, np.float32)
    if poses.ndim != 2 or poses.shape[1] not in (2, 3) or not len(poses):
      raise errors.UserError(
          f'custom view set has shape {poses.shape}; give a non-empty list of (yaw, pitch) or '
          '(yaw, pitch, radius) rows in radians')
    if not np.all(np.isfinite(poses)):
      raise errors.UserError('custom view set contains NaN/inf; give finite angles in radians')
    if poses.shape[1] == 2:
      poses = np.concatenate([poses, np.ones_like(poses[:, :1])], axis=1)
    if np.any(poses[:, 2] <= 0):
      raise errors.UserError('custom view set has a radius <= 0; radii must be positive')
    return poses
  if name == 'random':
    if key is None:
      raise errors.UserError("view set 'random' draws its novel view; pass key=jax.random.key(..)")
    yaw, pitch = np.asarray(jax.random.normal(key, (2,)), np.float64)
    return np.array([[0.0, 0.0, 1.0], [RANDOM_YAW_STD * yaw, RANDOM_PITCH_STD * pitch, 1.0]],
                    np.float32)
  if name == '3x9':
    return np.array([[y, p, 1.0] for y in GRID_YAWS for p in GRID_PITCHES], np.float32)
  if name in ('swing', 'orbit360'):
    if num_frames < 1:
      raise errors.UserError(f'num_frames={num_frames}; use a positive number of frames')
    t = 2.0 * np.pi * np.arange(num_frames) / num_frames
    if name == 'swing':
      yaw, pitch = SWING_YAW * np.cos(t), SWING_PITCH * np.sin(t)
    else:
      yaw, pitch = t, np.zeros_like(t)
    return np.stack([yaw, pitch, np.ones_like(t)], axis=1).astype(np.float32)
  raise errors.UserError(
      f'unknown view set {name!r}; use one of {VIEWSETS} or a list of (yaw, pitch[, radius])')


def views_from_poses(poses: Array) -> jnp.ndarray:
  """Orbit views [V, 4, 4] looking at the origin from poses [V, 3] of (yaw, pitch, radius)."""
  poses = jnp.asarray(poses, jnp.float32)
  return jax.vmap(orbit_view)(poses[:, 0], poses[:, 1], poses[:, 2])


def pixel_rays(resolution: int, fov_deg: float = FOV_DEG) -> jnp.ndarray:
  """Camera-space points at planar depth 1 of the pixel centres, [N, N, 3] (row 0 = top)."""
  f = focal_length(fov_deg)
  uv = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution
  x = (uv[None, :] - 0.5) / f
  y = (0.5 - uv[:, None]) / f
  x, y = jnp.broadcast_arrays(x, y)
  return jnp.stack([x, y, -jnp.ones_like(x)], axis=-1)


def unproject(depth_planar: Array, view: Array, *, fov_deg: float = FOV_DEG) -> jnp.ndarray:
  """Lifts planar depth [H, W] (H == W) seen from `view` to world points [H, W, 3]."""
  depth_planar = jnp.asarray(depth_planar, jnp.float32)
  cam = pixel_rays(depth_planar.shape[0], fov_deg) * depth_planar[..., None]
  cam_to_world = invert_view(view)
  return cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]
