"""Embedded analytic scenes: exact geometry, view-independent colour, co-visibility."""
import numpy as np
import pytest

from ivd_jax.data import procedural
from method_cameras import look_at, orbit  # pylint: disable=g-bad-import-order

FOCAL = 0.5 / np.tan(np.deg2rad(22.5))
SOURCE = look_at((0.0, 0.0, 1.0))


def unproject(depth, view):
  n = depth.shape[0]
  c = (np.arange(n) + 0.5) / n
  v, u = np.meshgrid(c, c, indexing='ij')
  p_cam = depth[..., None].astype(np.float64) * np.stack(
      [(u - 0.5) / FOCAL, (0.5 - v) / FOCAL, -np.ones_like(u)], -1)
  inv = np.linalg.inv(view)
  return p_cam @ inv[:3, :3].T + inv[:3, 3]


def test_seeded_and_varied():
  a, b = procedural.sample_scene(7), procedural.sample_scene(7)
  for field in ('wall', 'ground', 'spheres', 'boxes', 'textures', 'colours'):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  counts = set()
  for seed in range(40):
    s = procedural.sample_scene(seed)
    counts.add((len(s.spheres), len(s.boxes)))
    assert s.textures.shape == (s.num_objects, 6) and s.colours.shape == (s.num_objects, 2, 3)
    assert ((s.colours >= 0) & (s.colours <= 1)).all()
  assert len(counts) >= 6  # 1-3 spheres x 1-3 boxes


def test_source_render_is_exact():
  """Wall depth = 1 - wall_z exactly; ground points lie on y = ground; sphere points on spheres."""
  scene = procedural.sample_scene(3)
  out = procedural.render(scene, SOURCE, 96)
  assert out.rgb.shape == (96, 96, 3) and out.rgb.dtype == np.float32
  assert out.depth.dtype == np.float32 and out.obj_id.dtype == np.int32
  assert 0.0 <= out.rgb.min() and out.rgb.max() <= 1.0
  assert np.isfinite(out.depth).all() and out.depth.min() > 0.3
  ids = set(np.unique(out.obj_id))
  assert {0, 1} <= ids and len(ids) >= 3
  wall = out.obj_id == 0
  np.testing.assert_allclose(out.depth[wall], 1.0 - scene.wall[0], rtol=1e-6)
  points = unproject(out.depth, SOURCE)
  np.testing.assert_allclose(points[out.obj_id == 1][:, 1], scene.ground[0], atol=1e-5)
  for k, sphere in enumerate(scene.spheres):
    sel = out.obj_id == 2 + k
    dist = np.linalg.norm(points[sel] - sphere[:3], axis=-1)
    np.testing.assert_allclose(dist, sphere[3], rtol=1e-5)
  for k, box in enumerate(scene.boxes):
    sel = out.obj_id == 2 + len(scene.spheres) + k
    c, s = np.cos(box[6]), np.sin(box[6])
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    local = np.abs((points[sel] - box[:3]) @ rot)
    # On the surface: inside the box and on at least one face.
    assert (local <= box[3:6] * (1 + 1e-5)).all()
    np.testing.assert_allclose(np.max(local / box[3:6], -1), 1.0, atol=1e-5)


def test_rgbd_encoding():
  scene = procedural.sample_scene(1)
  rgbd = procedural.render_rgbd(scene, SOURCE, 32, near=0.5, far=100.0)
  out = procedural.render(scene, SOURCE, 32)
  assert rgbd.shape == (32, 32, 4) and rgbd.dtype == np.float32
  np.testing.assert_array_equal(rgbd[..., :3], out.rgb)
  zbuf = (1 / 0.5 - 1 / out.depth.astype(np.float64)) / (1 / 0.5 - 1 / 100)
  np.testing.assert_allclose(rgbd[..., 3], zbuf, atol=1e-6)
  assert 0.0 < rgbd[..., 3].min() and rgbd[..., 3].max() < 1.0


def test_self_covisibility_and_turned_away():
  scene = procedural.sample_scene(5)
  out = procedural.render(scene, SOURCE, 48)
  assert procedural.covisibility(scene, SOURCE, out.depth, SOURCE).all()
  # A camera at the source eye looking the opposite way sees none of it.
  behind = look_at((0.0, 0.0, 1.0), (0.0, 0.0, 2.0))
  assert not procedural.covisibility(scene, SOURCE, out.depth, behind).any()


@pytest.mark.parametrize('seed', [0, 11])
def test_covisible_points_agree_with_target_render(seed):
  """A co-visible source point seen from the target: same object, same depth, same colour.

  The target is rendered at 4x resolution and read at the pixel containing the projection, so
  agreement is up to a quarter source pixel of texture/edge shift.
  """
  scene = procedural.sample_scene(seed)
  n = 48
  src = procedural.render(scene, SOURCE, n)
  dst_view = orbit(0.35, 0.12, 1.1, target=(0.03, -0.02, 0.0))
  covis = procedural.covisibility(scene, SOURCE, src.depth, dst_view)
  frac = covis.mean()
  assert 0.5 < frac < 0.999

  big = 4 * n
  dst = procedural.render(scene, dst_view, big)
  points = unproject(src.depth, SOURCE)[covis]
  p_cam = points @ dst_view[:3, :3].T + dst_view[:3, 3]
  u = p_cam[:, 0] / -p_cam[:, 2] * FOCAL + 0.5
  v = 0.5 - p_cam[:, 1] / -p_cam[:, 2] * FOCAL
  col = np.clip((u * big).astype(int), 0, big - 1)
  row = np.clip((v * big).astype(int), 0, big - 1)
  same_obj = dst.obj_id[row, col] == src.obj_id[covis]
  assert same_obj.mean() > 0.97
  depth_err = np.abs(dst.depth[row, col] - (-p_cam[:, 2])) / -p_cam[:, 2]
  assert np.median(depth_err[same_obj]) < 5e-3
  colour_err = np.abs(dst.rgb[row, col] - src.rgb[covis]).max(-1)
  assert np.median(colour_err[same_obj]) < 0.02

  # Points that are not co-visible but inside the target image are hidden behind something
  # nearer: the target's depth there is smaller than the point's.
  hidden = ~covis
  points_h = unproject(src.depth, SOURCE)[hidden]
  p_cam_h = points_h @ dst_view[:3, :3].T + dst_view[:3, 3]
  u_h = p_cam_h[:, 0] / -p_cam_h[:, 2] * FOCAL + 0.5
  v_h = 0.5 - p_cam_h[:, 1] / -p_cam_h[:, 2] * FOCAL
  inside = (p_cam_h[:, 2] < 0) & (u_h > 0) & (u_h < 1) & (v_h > 0) & (v_h < 1)
  r_h = np.clip((v_h[inside] * big).astype(int), 0, big - 1)
  c_h = np.clip((u_h[inside] * big).astype(int), 0, big - 1)
  occluded = dst.depth[r_h, c_h] < -p_cam_h[inside, 2] * (1 - 1e-3)
  assert occluded.mean() > 0.9


def test_every_ray_hits_from_any_direction():
  """Full orbit and steep pitches: finite depth everywhere (wall, ground or the dome)."""
  scene = procedural.sample_scene(2)
  for yaw in np.linspace(0, 2 * np.pi, 6, endpoint=False):
    for pitch in (-1.2, 0.0, 1.2):
      out = procedural.render(scene, orbit(yaw, pitch, 1.2), 16)
      assert np.isfinite(out.depth).all() and out.depth.min() > 0
      assert out.depth.max() <= 2 * procedural.DOME_RADIUS
      assert np.isfinite(out.rgb).all()


def test_camera_inside_geometry_is_finite():
  scene = procedural.sample_scene(4)
  centre = scene.spheres[0, :3]
  out = procedural.render(scene, look_at(centre, centre + np.array([0.0, 0.0, -1.0])), 16)
  assert np.isfinite(out.depth).all() and np.isfinite(out.rgb).all()
  # Inside the sphere every ray hits its inner surface at distance <= its radius (planar depth).
  assert (out.obj_id == 2).all()
  assert out.depth.max() <= scene.spheres[0, 3] * (1 + 1e-5)
