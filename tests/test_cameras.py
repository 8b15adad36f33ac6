"""Cameras of docs/method.md §2 against the reference's matrices (warp_subset fixtures) and the
view sets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ivd_jax import errors
from ivd_jax.geometry import cameras


def test_focal_and_intrinsics():
  assert cameras.focal_length() == pytest.approx(1.2071067811865475, abs=1e-12)
  k = np.asarray(cameras.intrinsics(128))
  np.testing.assert_allclose(k, [[154.5097, 0, 64], [0, 154.5097, 64], [0, 0, 1]], atol=1e-3)
  assert cameras.focal_length(90.0) == pytest.approx(0.5)


def test_source_view_is_translation():
  np.testing.assert_allclose(cameras.look_at((0, 0, 1), (0, 0, 0)), cameras.SOURCE_VIEW,
                             atol=1e-7)
  np.testing.assert_allclose(cameras.camera_center(cameras.SOURCE_VIEW), [0, 0, 1], atol=1e-7)


def test_views_match_reference_lookat(fixtures_dir):
  """orbit_view reproduces glm.lookAt for the 9 training cameras and the 3 aggregation views."""
  d = np.load(fixtures_dir / 'warp_subset.npz')
  for g in ('s64', 's128'):
    params = d[f'{g}_cam_params'].reshape(-1, 6)
    want = d[f'{g}_modelview'].reshape(-1, 4, 4)
    got = jax.vmap(cameras.orbit_view)(params[:, 0], params[:, 1], params[:, 2], params[:, 3:])
    np.testing.assert_allclose(got, want, atol=2e-6)
  poses = np.array([[0.0, 0.0, 1.0], [0.3, 0.0, 1.0], [-0.15, 0.1, 1.0]], np.float32)
  np.testing.assert_allclose(cameras.views_from_poses(poses), d['agg_modelview'], atol=2e-6)


def test_unproject_matches_reference_mesh(fixtures_dir):
  """World points of the reference's depth_to_mesh (interior of the padded fbw mesh)."""
  d = np.load(fixtures_dir / 'warp_subset.npz')
  depth = d['s64_input_depth_planar'][0]
  pts = np.asarray(cameras.unproject(depth, cameras.SOURCE_VIEW))
  ref = d['mesh_fbw0_position'].reshape(66, 66, 3)[1:-1, 1:-1]
  np.testing.assert_allclose(pts, ref, atol=1e-5)
  # Projecting back with the view lands on the pixel centres.
  cam = pts @ cameras.SOURCE_VIEW[:3, :3].T + cameras.SOURCE_VIEW[:3, 3]
  u = 0.5 + cameras.focal_length() * cam[..., 0] / -cam[..., 2]
  np.testing.assert_allclose(u[0], (np.arange(64) + 0.5) / 64, atol=1e-6)


def test_random_training_view_distribution():
  """docs/method.md §5: yaw, pitch ~ N(0, .15^2), r ~ 1 + N(0, .1^2); jittable and keyed."""
  keys = jax.random.split(jax.random.key(0), 4000)
  views = jax.jit(jax.vmap(cameras.random_training_view))(keys)
  eyes = np.asarray(jax.vmap(cameras.camera_center)(views))
  r = np.linalg.norm(eyes, axis=-1)
  yaw = np.arctan2(eyes[:, 0], eyes[:, 2])
  pitch = np.arcsin(eyes[:, 1] / r)
  assert np.std(yaw) == pytest.approx(0.15, rel=0.06)
  assert np.std(pitch) == pytest.approx(0.15, rel=0.06)
  assert np.std(r) == pytest.approx(0.1, rel=0.06)
  assert np.mean(r) == pytest.approx(1.0, abs=0.01)
  np.testing.assert_allclose(cameras.random_training_view(keys[3]), views[3], atol=1e-6)


def test_viewsets():
  grid = cameras.viewset_poses('3x9')
  assert grid.shape == (27, 3)
  np.testing.assert_allclose(grid[:4], [[0, 0, 1], [0, .15, 1], [0, -.15, 1], [.15, 0, 1]])
  np.testing.assert_allclose(grid[-1], [-0.6, -0.15, 1.0])
  swing = cameras.viewset_poses('swing')
  assert swing.shape == (60, 3)
  np.testing.assert_allclose(swing[0], [0.6, 0.0, 1.0], atol=1e-7)
  np.testing.assert_allclose(swing[15], [0.0, 0.15, 1.0], atol=1e-7)
  orbit = cameras.viewset_poses('orbit360', num_frames=8)
  np.testing.assert_allclose(orbit[:, 0], np.arange(8) * np.pi / 4, atol=1e-6)
  rnd = cameras.viewset_poses('random', key=jax.random.key(1))
  assert rnd.shape == (2, 3) and np.all(rnd[0] == [0, 0, 1])
  np.testing.assert_array_equal(rnd, cameras.viewset_poses('random', key=jax.random.key(1)))
  custom = cameras.viewset_poses([[0.0, 0.0], [0.2, -0.1]])
  np.testing.assert_allclose(custom, [[0, 0, 1], [0.2, -0.1, 1]], atol=1e-7)
  views = cameras.views_from_poses(orbit)
  eyes = jax.vmap(cameras.camera_center)(views)
  np.testing.assert_allclose(eyes[2], [1.0, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize('bad', ['spiral', [[0.1]], [[0.0, 0.0, -1.0]], [[np.nan, 0.0]]])
def test_viewset_errors(bad):
  with pytest.raises(errors.UserError):
    cameras.viewset_poses(bad)


def test_random_viewset_needs_key():
  with pytest.raises(errors.UserError, match='key'):
    cameras.viewset_poses('random')


def test_jittable():
  f = jax.jit(lambda y, p: cameras.orbit_view(y, p, 1.2, jnp.zeros(3)))
  np.testing.assert_allclose(f(0.3, 0.1), cameras.orbit_view(0.3, 0.1, 1.2), atol=1e-6)
