"""Embedded analytic scenes: seeded layouts ray-cast exactly, with true novel views.

A scene is a textured back wall, a ground plane and a few spheres and y-rotated boxes with
procedural solid textures, laid out around the world origin, which is the orbit centre 1 unit in
front of the source camera (eye (0, 0, 1), docs/method.md §2). A large textured dome encloses
everything so that every ray from any camera near the origin hits something (it only shows for
cameras turned far from the source view, e.g. a full orbit).

Rendering is exact ray casting in float64 at each pixel centre (no anti-aliasing), vectorised over
all rays with numpy; colours are view-independent (Lambertian shading under a fixed light), so a
3D point has the same colour in every view and warps can be scored against true renders.

Object ids: 0 background (wall and dome), 1 ground, 2 + k object k (spheres first, then boxes).
The ray parameter of a camera ray is its planar depth: camera-space directions have z = -1.
"""
import dataclasses
from typing import NamedTuple

import numpy as np

from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib

# Background dome: far enough to sit behind the wall for every forward-looking camera, well
# inside the training far plane (100).
DOME_RADIUS = 30.0
# Fixed light direction (world, towards the light); shading is view-independent.
_LIGHT = np.array([0.35, 0.8, 0.5]) / np.linalg.norm([0.35, 0.8, 0.5])
_AMBIENT = 0.6
# Rays start this far along their direction (relative) so a surface point does not hit itself.
_T_MIN = 1e-9
# Texture kinds, one row of Scene.textures per object: [kind, freq, phase, ax, ay, az].
CHECKER, STRIPES, SMOOTH, PLASMA = 0, 1, 2, 3
# Order of the candidate surfaces in trace(): wall, ground, dome, spheres, boxes.
_DOME_CANDIDATE = 2


@dataclasses.dataclass(frozen=True)
class Scene:
  """One analytic scene; all arrays float64 numpy.

  Attributes:
    wall: [1] z of the back wall plane (z = wall[0], facing +z).
    ground: [1] y of the ground plane (y = ground[0], facing +y).
    spheres: [S, 4] centre xyz and radius.
    boxes: [B, 7] centre xyz, half sizes xyz, rotation about +y in radians.
    textures: [2 + S + B, 6] per object id: kind, frequency, phase, direction xyz (stripes).
    colours: [2 + S + B, 2, 3] the two albedos a texture blends between, in [0, 1].
    seed: the seed that generated the scene.
  """
  wall: np.ndarray
  ground: np.ndarray
  spheres: np.ndarray
  boxes: np.ndarray
  textures: np.ndarray
  colours: np.ndarray
  seed: int = 0

  @property
  def num_objects(self) -> int:
    return 2 + len(self.spheres) + len(self.boxes)


class Render(NamedTuple):
  rgb: np.ndarray  # [H, W, 3] float32 in [0, 1]
  depth: np.ndarray  # [H, W] float32 planar z-depth > 0
  obj_id: np.ndarray  # [H, W] int32


def _random_colour_pair(rng: np.random.Generator) -> np.ndarray:
  """Two distinct saturated-ish albedos: random hue, the second lighter or darker."""
  base = rng.uniform(0.1, 0.95, size=3)
  other = np.clip(base + rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6) +
                  rng.normal(0.0, 0.15, size=3), 0.02, 1.0)
  return np.stack([base, other])


def _random_texture(rng: np.random.Generator, kinds=(CHECKER, STRIPES, SMOOTH)) -> np.ndarray:
  kind = rng.choice(kinds)
  freq = {CHECKER: rng.uniform(8.0, 20.0), STRIPES: rng.uniform(20.0, 60.0),
          SMOOTH: rng.uniform(10.0, 30.0)}[kind]
  direction = rng.normal(size=3)
  direction /= np.linalg.norm(direction)
  return np.array([kind, freq, rng.uniform(0, 2 * np.pi), *direction])


def sample_scene(seed: int) -> Scene:
  """A random scene from an integer seed (numpy PCG64; same seed, same scene everywhere)."""
  rng = np.random.default_rng(seed)
  wall_z = rng.uniform(-2.3, -1.6)
  ground_y = rng.uniform(-0.6, -0.4)
  num_spheres = int(rng.integers(1, 4))
  num_boxes = int(rng.integers(1, 4))

  spheres = []
  for _ in range(num_spheres):
    r = rng.uniform(0.1, 0.3)
    # Most rest on the ground; some float, so the ground shows beneath them.
    lift = 0.0 if rng.uniform() < 0.7 else rng.uniform(0.05, 0.4)
    spheres.append([rng.uniform(-0.6, 0.6), ground_y + r + lift, rng.uniform(-0.8, 0.2), r])
  boxes = []
  for _ in range(num_boxes):
    half = rng.uniform(0.07, 0.22, size=3)
    lift = 0.0 if rng.uniform() < 0.8 else rng.uniform(0.05, 0.3)
    boxes.append([rng.uniform(-0.6, 0.6), ground_y + half[1] + lift, rng.uniform(-0.8, 0.2),
                  *half, rng.uniform(0.0, np.pi / 2)])

  wall_texture = np.concatenate([[PLASMA, rng.uniform(1.0, 2.5)], rng.uniform(0, 2 * np.pi, 4)])
  ground_texture = np.array([CHECKER, rng.uniform(4.0, 10.0), 0.0, 0.0, 0.0, 0.0])
  textures = [wall_texture, ground_texture]
  textures += [_random_texture(rng) for _ in range(num_spheres + num_boxes)]
  colours = [_random_colour_pair(rng) for _ in range(2 + num_spheres + num_boxes)]
  return Scene(wall=np.array([wall_z]), ground=np.array([ground_y]),
               spheres=np.array(spheres, np.float64).reshape(-1, 4),
               boxes=np.array(boxes, np.float64).reshape(-1, 7),
               textures=np.array(textures), colours=np.array(colours), seed=int(seed))


def scene_seed(seed: int, stream: int, index: int) -> int:
  """The sample_scene seed of scene `index` of a stream (prepare: 0 = 'train', 1 = 'test').

  Independent 63-bit seeds per (config seed, stream, index).
  """
  return int(np.random.SeedSequence([seed, stream, index]).generate_state(
      2, np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], np.uint64))


# ----------------------------------------------------------------------------------------------
# Ray casting
# ----------------------------------------------------------------------------------------------


def _rot_y(angle: np.ndarray) -> np.ndarray:
  """[..., 3, 3] rotation about +y (local -> world)."""
  c, s = np.cos(angle), np.sin(angle)
  zero, one = np.zeros_like(c), np.ones_like(c)
  return np.stack([np.stack([c, zero, s], -1), np.stack([zero, one, zero], -1),
                   np.stack([-s, zero, c], -1)], -2)


def _positive(t: np.ndarray) -> np.ndarray:
  return np.where(t > _T_MIN, t, np.inf)


def _intersect_spheres(centres, radii, o, d):
  """Nearest positive hit of each ray with each sphere: [S, R] (inf = miss)."""
  oc = o[None] - centres[:, None]  # [S, R, 3]
  a = np.sum(d * d, -1)[None]  # [1, R]
  b = np.sum(oc * d[None], -1)
  c = np.sum(oc * oc, -1) - radii[:, None] ** 2
  disc = b * b - a * c
  sq = np.sqrt(np.maximum(disc, 0.0))
  t0, t1 = _positive((-b - sq) / a), _positive((-b + sq) / a)
  return np.where(disc >= 0, np.minimum(t0, t1), np.inf)


def _box_frames(boxes):
  rot = _rot_y(boxes[:, 6])  # local -> world, [B, 3, 3]
  return boxes[:, :3], boxes[:, 3:6], rot


def _intersect_boxes(boxes, o, d):
  """Slab test in each box's frame: nearest positive hit [B, R] and the hit axis [B, R]."""
  centre, half, rot = _box_frames(boxes)
  # World -> local is rot^T: x_local = (x - c) @ rot.
  ol = np.einsum('rk,bkj->brj', o, rot) - np.einsum('bk,bkj->bj', centre, rot)[:, None]
  dl = np.einsum('rk,bkj->brj', d, rot)
  with np.errstate(divide='ignore', invalid='ignore'):
    inv = 1.0 / dl
    ta = (-half[:, None] - ol) * inv
    tb = (half[:, None] - ol) * inv
  # Rays parallel to a slab: inside the slab -> (-inf, inf), outside -> empty.
  parallel = dl == 0
  inside = np.abs(ol) <= half[:, None]
  lo = np.where(parallel, np.where(inside, -np.inf, np.inf), np.minimum(ta, tb))
  hi = np.where(parallel, np.where(inside, np.inf, -np.inf), np.maximum(ta, tb))
  t_near, t_far = lo.max(-1), hi.min(-1)
  hit = t_near <= t_far
  # Entering hit when the origin is outside, else the exit (camera inside a box).
  entering = t_near > _T_MIN
  t = np.where(hit, np.where(entering, t_near, _positive(t_far)), np.inf)
  axis = np.where(entering, lo.argmax(-1), hi.argmin(-1))
  return t, axis


def trace(scene: Scene, origins: np.ndarray, dirs: np.ndarray):
  """Nearest surface along each ray o + t d, t > 0.

  Args:
    scene: the scene.
    origins: [R, 3] or [3] ray origins.
    dirs: [R, 3] ray directions (not necessarily unit length; t is in units of |d|).

  Returns:
    (t [R], obj_id [R] int32, normal [R, 3] unit, facing the ray). Every ray hits something
    (the dome encloses the scene for origins inside it).
  """
  d = np.asarray(dirs, np.float64).reshape(-1, 3)
  o = np.broadcast_to(np.asarray(origins, np.float64), d.shape)
  n_rays = d.shape[0]
  candidates_t, candidates_id = [], []

  with np.errstate(divide='ignore', invalid='ignore'):
    candidates_t.append(_positive((scene.wall[0] - o[:, 2]) / d[:, 2]))
    candidates_t.append(_positive((scene.ground[0] - o[:, 1]) / d[:, 1]))
  candidates_id += [0, 1]
  # Dome: the far root of |o + t d| = R (origins are inside it).
  a = np.sum(d * d, -1)
  b = np.sum(o * d, -1)
  c = np.sum(o * o, -1) - DOME_RADIUS ** 2
  candidates_t.append(_positive((-b + np.sqrt(np.maximum(b * b - a * c, 0.0))) / a))
  candidates_id.append(0)
  assert len(candidates_t) == _DOME_CANDIDATE + 1
  num_spheres = len(scene.spheres)
  if num_spheres:
    candidates_t += list(_intersect_spheres(scene.spheres[:, :3], scene.spheres[:, 3], o, d))
    candidates_id += list(range(2, 2 + num_spheres))
  if len(scene.boxes):
    t_box, axis_box = _intersect_boxes(scene.boxes, o, d)
    candidates_t += list(t_box)
    candidates_id += list(range(2 + num_spheres, 2 + num_spheres + len(scene.boxes)))

  all_t = np.stack(candidates_t)  # [K, R]
  best = np.argmin(all_t, 0)
  t = all_t[best, np.arange(n_rays)]
  obj_id = np.asarray(candidates_id, np.int32)[best]
  dome = best == _DOME_CANDIDATE

  p = o + t[:, None] * d
  normal = np.zeros_like(p)
  normal[obj_id == 0, 2] = 1.0
  normal[dome] = -p[dome] / DOME_RADIUS
  normal[obj_id == 1, 1] = 1.0
  for k in range(num_spheres):
    sel = obj_id == 2 + k
    normal[sel] = (p[sel] - scene.spheres[k, :3]) / scene.spheres[k, 3]
  if len(scene.boxes):
    centre, _, rot = _box_frames(scene.boxes)
    for k in range(len(scene.boxes)):
      sel = obj_id == 2 + num_spheres + k
      if not sel.any():
        continue
      axis = axis_box[k, sel]
      local = (p[sel] - centre[k]) @ rot[k]
      n_local = np.zeros_like(local)
      n_local[np.arange(len(axis)), axis] = np.sign(local[np.arange(len(axis)), axis])
      normal[sel] = n_local @ rot[k].T
  # Two-sided surfaces: shade the side that faces the ray.
  flip = np.sum(normal * d, -1) > 0
  normal[flip] *= -1.0
  return t, obj_id, normal


# ----------------------------------------------------------------------------------------------
# Shading
# ----------------------------------------------------------------------------------------------


def _local_point(scene: Scene, p: np.ndarray, obj_id: np.ndarray) -> np.ndarray:
  """Texture coordinates: object-centred (boxes also unrotated) so textures stick to objects."""
  local = p.copy()
  num_spheres = len(scene.spheres)
  for k in range(num_spheres):
    sel = obj_id == 2 + k
    local[sel] -= scene.spheres[k, :3]
  if len(scene.boxes):
    centre, _, rot = _box_frames(scene.boxes)
    for k in range(len(scene.boxes)):
      sel = obj_id == 2 + num_spheres + k
      local[sel] = (p[sel] - centre[k]) @ rot[k]
  return local


def _albedo(scene: Scene, p: np.ndarray, obj_id: np.ndarray) -> np.ndarray:
  """Solid procedural textures: [R, 3] albedo in [0, 1]."""
  local = _local_point(scene, p, obj_id)
  tex = scene.textures[obj_id]  # [R, 6]
  kind, freq, phase, axis = tex[:, 0], tex[:, 1:2], tex[:, 2], tex[:, 3:6]
  q = local * freq
  checker = np.mod(np.floor(q).sum(-1), 2.0)
  stripes = 0.5 + 0.5 * np.sin(np.sum(q * axis, -1) + phase)
  smooth = 0.5 + 0.5 * np.sin(q[:, 0] + phase) * np.sin(q[:, 1] + 1.3 * phase) * np.sin(
      q[:, 2] + 0.7 * phase)
  w = np.select([kind == CHECKER, kind == STRIPES], [checker, stripes], smooth)
  c0, c1 = scene.colours[obj_id, 0], scene.colours[obj_id, 1]
  albedo = c0 + (c1 - c0) * w[:, None]

  plasma = kind == PLASMA
  if plasma.any():
    # Colourful smooth background: each channel a different slanted sinusoid, modulated by a
    # coarse checker so the wall has both smooth gradients and edges (like the reference set).
    qp, ph = q[plasma], tex[plasma, 2:6]
    channels = [0.5 + 0.4 * np.sin(qp[:, 0] * (1.0 + 0.4 * j) + qp[:, 1] * (1.2 - 0.5 * j) +
                                   qp[:, 2] * 0.3 + ph[:, j] + ph[:, 3] * j) for j in range(3)]
    cells = np.mod(np.floor(qp[:, 0] * 1.5) + np.floor(qp[:, 1] * 1.5) + np.floor(qp[:, 2] * 1.5),
                   2.0)
    albedo[plasma] = np.stack(channels, -1) * (0.7 + 0.3 * cells)[:, None]
  return albedo


def _shade(scene: Scene, p, obj_id, normal) -> np.ndarray:
  lambert = np.maximum(normal @ _LIGHT, 0.0)
  return np.clip(_albedo(scene, p, obj_id) * (_AMBIENT + (1 - _AMBIENT) * lambert)[:, None],
                 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------


def _camera_rays(view: np.ndarray, resolution: int, fov_deg: float):
  """World-space eye [3] and directions [N*N, 3] whose ray parameter is planar depth.

  The conventions are those of geometry.cameras (pixel centres, row 0 on top, OpenGL), computed
  here in float64 numpy because the renders are the exact ground truth of the warp tests.
  """
  view = np.asarray(view, np.float64)
  rot, trans = view[:3, :3], view[:3, 3]
  eye = -rot.T @ trans
  f = cameras.focal_length(fov_deg)
  centres = (np.arange(resolution) + 0.5) / resolution
  v, u = np.meshgrid(centres, centres, indexing='ij')
  d_cam = np.stack([(u - 0.5) / f, (0.5 - v) / f, -np.ones_like(u)], -1).reshape(-1, 3)
  return eye, d_cam @ rot


def render(scene: Scene, view, resolution: int, *, fov_deg: float = 45.0) -> Render:
  """Exact render from a world->camera view matrix [4, 4] (OpenGL look-at)."""
  eye, dirs = _camera_rays(view, resolution, fov_deg)
  t, obj_id, normal = trace(scene, eye, dirs)
  p = eye + t[:, None] * dirs
  rgb = _shade(scene, p, obj_id, normal)
  shape = (resolution, resolution)
  return Render(rgb=rgb.reshape(*shape, 3).astype(np.float32),
                depth=t.reshape(shape).astype(np.float32),
                obj_id=obj_id.reshape(shape))


def render_rgbd(scene: Scene, view, resolution: int, *, near: float = 0.5, far: float = 100.0,
                fov_deg: float = 45.0) -> np.ndarray:
  """[H, W, 4] float32 in [0, 1]: colour and the z-buffer depth encoding (warp encoding)."""
  out = render(scene, view, resolution, fov_deg=fov_deg)
  zbuf = np.asarray(depth_lib.zbuf_from_depth(out.depth, near, far), np.float32)
  return np.concatenate([out.rgb, zbuf[..., None]], -1)


def covisibility(scene: Scene, view_src, depth_src, view_dst, *, fov_deg: float = 45.0,
                 rtol: float = 1e-5) -> np.ndarray:
  """[H, W] bool: src pixels whose 3D point is inside dst's image, in front and unoccluded.

  Continuous test (not pixel-discretised): the point of each src pixel (planar depth depth_src)
  is projected into dst (inside when uv in [0, 1]^2 and z_cam < 0), and the segment from dst's
  eye to the point must not hit any surface before it (relative tolerance rtol, which absorbs
  float32 depth rounding).
  """
  depth_src = np.asarray(depth_src, np.float64)
  resolution = depth_src.shape[0]
  eye_src, dirs_src = _camera_rays(view_src, resolution, fov_deg)
  points = eye_src + depth_src.reshape(-1, 1) * dirs_src  # [R, 3]

  view_dst = np.asarray(view_dst, np.float64)
  p_cam = points @ view_dst[:3, :3].T + view_dst[:3, 3]
  f = cameras.focal_length(fov_deg)
  in_front = p_cam[:, 2] < 0
  with np.errstate(divide='ignore', invalid='ignore'):
    u = p_cam[:, 0] / -p_cam[:, 2] * f + 0.5
    v = 0.5 - p_cam[:, 1] / -p_cam[:, 2] * f
  inside = in_front & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1) & np.isfinite(points).all(-1)

  eye_dst = -view_dst[:3, :3].T @ view_dst[:3, 3]
  visible = np.zeros_like(inside)
  if inside.any():
    t, _, _ = trace(scene, eye_dst, points[inside] - eye_dst)
    visible[inside] = t >= 1.0 - rtol
  return visible.reshape(depth_src.shape)
