"""Which cameras, keys and class labels each instance of a sampling run gets (docs/method.md §8).

Everything here is a function of (seed, instance index) alone, so an instance's cameras, keys and
label do not depend on which other instances are generated with it.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ivd_jax import errors
from ivd_jax.geometry import cameras

VIEWSETS = ('random', '3x9', 'swing', 'orbit360', 'custom')
LABEL_MODES = ('random', 'uniform', 'fixed')
VIDEO_PATHS = ('swing', 'orbit360')
# fold_in constant of the per-instance camera stream of the 'random' view set.
_POSE_STREAM = 0x7FFFFFFF


def instance_keys(seed: int, instance_ids: Sequence[int]) -> jax.Array:
  """Per-instance PRNG keys [N, 2]: fold_in(PRNGKey(seed), i); independent of batching."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(instance_ids, jnp.uint32))


def instance_labels(mode: str, num_classes: int, seed: int, instance_ids: Sequence[int],
                    labels: Sequence[int] = ()) -> np.ndarray:
  """Class label of each instance: -1 without classes; otherwise by `mode`.

  Args:
    mode: 'random' (a uniform draw per instance from (seed, index)), 'uniform' (cycle through
      every class, the FID protocol of docs/method.md §10) or 'fixed' (cycle through `labels`).
    num_classes: the networks' class count (0 = no classes).
    seed: run seed.
    instance_ids: [N] instance indices.
    labels: the table of mode 'fixed'.

  Returns:
    int32 [N].
  """
  ids = np.asarray(instance_ids, np.int64)
  if not num_classes:
    return np.full(ids.shape, -1, np.int32)
  if mode == 'uniform':
    return (ids % num_classes).astype(np.int32)
  if mode == 'fixed':
    if not labels:
      raise errors.ConfigError('sample.labels', "label_mode 'fixed' needs labels",
                               'set --config.sample.labels="(207, 360)" or another label_mode')
    table = np.asarray(labels, np.int32)
    if table.min() < -1 or table.max() >= num_classes:
      raise errors.ConfigError('sample.labels', f'labels {tuple(table)} are outside '
                               f'[-1, {num_classes})', f'use class indices below {num_classes}')
    return table[ids % len(table)]
  if mode == 'random':
    return np.array([np.random.default_rng([seed, int(i)]).integers(num_classes) for i in ids],
                    np.int32)
  raise errors.ConfigError('sample.label_mode', f'unknown label mode {mode!r}',
                           f'use one of {LABEL_MODES}')


def viewset_views(name: str, *, seed: int, instance_ids: Sequence[int], num_frames: int,
                  custom_poses: Sequence[Sequence[float]] = ()) -> tuple[np.ndarray, np.ndarray]:
  """Poses [N, V, 3] (yaw, pitch, radius) and view matrices [N, V, 4, 4] of a view set.

  'random' (the FID protocol) draws each instance's novel view from that instance's own key, so
  it is reproducible per instance; every other set is the same for all instances.

  Args:
    name: one of VIEWSETS.
    seed: run seed.
    instance_ids: [N] instance indices.
    num_frames: views of 'swing' and 'orbit360'.
    custom_poses: (yaw, pitch[, radius]) rows of 'custom'; the first is view 0.

  Returns:
    (poses, views), float32.
  """
  n = len(instance_ids)
  if name == 'custom':
    try:
      poses = cameras.viewset_poses(np.asarray(custom_poses, np.float32).reshape(
          -1, np.shape(custom_poses)[-1] if np.ndim(custom_poses) == 2 else 3))
    except (errors.UserError, ValueError) as e:
      raise errors.ConfigError('sample.custom_poses', str(e),
                               'give (yaw, pitch[, radius]) rows: "((0, 0, 1), (0.3, 0, 1))"')
    poses = np.broadcast_to(poses, (n,) + poses.shape)
  elif name == 'random':
    # A key stream of its own per instance, apart from the sampling keys fold_in(key, view).
    keys = jax.vmap(lambda k: jax.random.fold_in(k, _POSE_STREAM))(
        instance_keys(seed, instance_ids))
    poses = np.stack([cameras.viewset_poses('random', key=k) for k in keys])
  elif name in VIEWSETS:
    poses = cameras.viewset_poses(name, num_frames=num_frames)
    poses = np.broadcast_to(poses, (n,) + poses.shape)
  else:
    raise errors.ConfigError('sample.viewset', f'unknown view set {name!r}',
                             f'use one of {VIEWSETS}')
  poses = np.ascontiguousarray(poses, np.float32)
  views = np.asarray(cameras.views_from_poses(jnp.asarray(poses.reshape(-1, 3))), np.float32)
  return poses, views.reshape(poses.shape[:2] + (4, 4))


def video_path_views(path: str, viewset: str, num_frames: int) -> np.ndarray:
  """The smooth camera path [T, 4, 4] of the fusion video ('auto': orbit360 for that set)."""
  if path == 'auto':
    path = 'orbit360' if viewset == 'orbit360' else 'swing'
  if path not in VIDEO_PATHS:
    raise errors.ConfigError('sample.video_path', f'unknown path {path!r}',
                             "use 'auto', 'swing' or 'orbit360'")
  poses = cameras.viewset_poses(path, num_frames=num_frames)
  return np.asarray(cameras.views_from_poses(jnp.asarray(poses, jnp.float32)), np.float32)
