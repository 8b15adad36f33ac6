"""TSED (evaluation/tsed.py): the camera convention, the ceiling of true views, the shuffled
control, views corrupted by growing shifts, determinism, and a real stereo pair with its known
calibration."""
import numpy as np
import pytest
from scipy import ndimage
from skimage import color
from skimage import data as skdata
from skimage import transform

from ivd_jax.data import procedural
from ivd_jax.evaluation import tsed as tsed_lib
from ivd_jax.geometry import cameras

# The paper's thresholds (T_error 2 px at 256 px, T_matches 10) and configs/common.py's matching.
SETTINGS = tsed_lib.TsedSettings(error=2.0, matches=10, neighbours=2, resolution=256, ratio=0.8,
                                 edge=30.0, sweep=(1.0, 2.0, 4.0, 8.0))
# The 15 views of the 3x9 set with |yaw| <= 0.3 (18 neighbouring pairs per scene).
VIEWS = np.asarray(cameras.views_from_poses(cameras.viewset_poses('3x9')[:15]))
SCENES = (0, 1)
RESOLUTION = 32  # the quickstart's


@pytest.fixture(scope='module')
def true_views() -> np.ndarray:
  """[2, 15, 32, 32, 3] exact renders of two procedural scenes."""
  return np.stack([np.stack([procedural.render(procedural.sample_scene(s), v, RESOLUTION).rgb
                             for v in VIEWS]) for s in SCENES])


@pytest.fixture(scope='module')
def true_tsed(true_views) -> dict:
  return tsed_lib.tsed(true_views, VIEWS, fov_deg=45.0, settings=SETTINGS)


def _project(points: np.ndarray, view: np.ndarray, n: int) -> np.ndarray:
  """Pixel (x, y) of world points in an n x n view (geometry.cameras: uv of pixel centres)."""
  p = points @ np.asarray(view, np.float64)[:3, :3].T + np.asarray(view, np.float64)[:3, 3]
  f = cameras.focal_length(45.0)
  return n * np.stack([f * p[:, 0] / -p[:, 2] + 0.5, 0.5 - f * p[:, 1] / -p[:, 2]], axis=1)


def test_fundamental_matrix_of_the_project_cameras():
  """Pixel centres lifted with cameras.unproject and seen from another view lie on their
  epipolar lines: the OpenGL views, the pixel-centre convention and K agree."""
  n = 256
  rng = np.random.default_rng(0)
  depth = rng.uniform(0.5, 3.0, size=(n, n)).astype(np.float32)
  world = np.asarray(cameras.unproject(depth, VIEWS[0]), np.float64).reshape(-1, 3)
  rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
  pixels_a = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
  k = tsed_lib.pixel_intrinsics(n, 45.0)
  for b in (1, 3, 14):
    fundamental = tsed_lib.fundamental_matrix(k, k, *tsed_lib.relative_pose(VIEWS[0], VIEWS[b]))
    sed = tsed_lib.symmetric_epipolar_distance(pixels_a, _project(world, VIEWS[b], n),
                                               fundamental)
    assert np.max(sed) < 0.02, b  # float32 unprojection


def test_neighbour_pairs():
  orbit = np.asarray(cameras.views_from_poses(cameras.viewset_poses('orbit360', num_frames=8)))
  assert tsed_lib.neighbour_pairs(orbit, 2) == sorted(
      [(i, i + 1) for i in range(7)] + [(0, 7)])
  assert len(tsed_lib.neighbour_pairs(VIEWS, 2)) == 18


def test_true_views_reach_a_high_tsed_and_shuffled_views_a_low_one(true_tsed):
  views, shuffled = true_tsed['views'], true_tsed['shuffled']
  assert views['num_pairs'] == shuffled['num_pairs'] == 36 and views['num_sets'] == 2
  # Measured 2026-12-01: 0.806 (29 of 36 pairs), median SED 1.33 px; every pair is consistent
  # at 8 px. The shuffled control: 0.0, median SED 46 px, 7.7 matches per pair.
  assert views['tsed'] >= 0.7
  assert views['median_sed'] < 1.8
  assert views['sweep']['8'] == 1.0
  assert shuffled['tsed'] == 0.0
  assert shuffled['median_sed'] > 20.0
  assert views['matches_per_pair'] > 3 * shuffled['matches_per_pair']


def test_tsed_falls_as_views_are_shifted(true_views, true_tsed):
  """Every view shifted by s px (its own random direction, fixed seed): TSED falls with s."""
  rng = np.random.default_rng(0)
  angle = rng.uniform(0.0, 2.0 * np.pi, size=true_views.shape[:2])
  direction = np.stack([np.sin(angle), np.cos(angle)], axis=-1)
  values = [true_tsed['views']['tsed']]
  for size in (0.5, 1.0, 2.0):
    shifted = np.stack([np.stack([
        ndimage.shift(true_views[n, v], (*(size * direction[n, v]), 0.0), order=3,
                      mode='nearest') for v in range(len(VIEWS))]) for n in range(len(SCENES))])
    values.append(tsed_lib.tsed(shifted, VIEWS, fov_deg=45.0, settings=SETTINGS,
                                control=False)['views']['tsed'])
  # Measured 2026-12-01: 0.806, 0.333, 0.222, 0.139.
  assert all(a > b for a, b in zip(values, values[1:])), values
  assert values[-1] < 0.25


def test_matching_is_deterministic(true_views):
  gray = tsed_lib.view_gray(true_views[0, 0], SETTINGS.resolution)
  one, two = (tsed_lib.sift_features(gray, edge=SETTINGS.edge) for _ in range(2))
  np.testing.assert_array_equal(one.points, two.points)
  np.testing.assert_array_equal(one.descriptors, two.descriptors)
  first = tsed_lib.tsed(true_views[:, :4], VIEWS[:4], fov_deg=45.0, settings=SETTINGS)
  again = tsed_lib.tsed(true_views[:, :4], VIEWS[:4], fov_deg=45.0, settings=SETTINGS)
  assert first == again


def test_flat_views_have_no_matches():
  flat = np.full((2, 3, 16, 16, 3), 0.5, np.float32)
  out = tsed_lib.tsed(flat, VIEWS[:3], fov_deg=45.0, settings=SETTINGS)
  assert out['views']['tsed'] == 0.0 and out['views']['matches_per_pair'] == 0.0


# Middlebury 2014 "Motorcycle" as shipped by scikit-image: the benchmark's images down-sampled 4x
# (skimage.transform.downscale_local_mean); skimage.data.stereo_motorcycle's docstring gives the
# calibration of that copy: focal 994.978 px, principal point (311.193, 254.877), the right
# camera's principal point 31.086 px further right (doffs), baseline 193.001 mm. Here halved once
# more (2x2 means, 740 of the 741 columns) to keep the test short; the calibration is halved with
# it. Middlebury's pixel centres are at integers, ours (Features.points) at +0.5.
_FOCAL, _CX, _CY, _DOFFS, _BASELINE = 994.978, 311.193, 254.877, 31.086, 193.001


def _rot_z(degrees: float) -> np.ndarray:
  c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope='module')
def motorcycle():
  left, right, _ = skdata.stereo_motorcycle()
  half = [transform.downscale_local_mean(color.rgb2gray(im)[:, :740], 2) for im in (left, right)]
  feats = [tsed_lib.sift_features(g, edge=SETTINGS.edge) for g in half]
  scale = np.diag([0.5, 0.5, 1.0])
  k_left = scale @ np.array([[_FOCAL, 0, _CX + 0.5], [0, _FOCAL, _CY + 0.5], [0, 0, 1.0]])
  k_right = scale @ np.array([[_FOCAL, 0, _CX + _DOFFS + 0.5], [0, _FOCAL, _CY + 0.5],
                              [0, 0, 1.0]])
  return feats, k_left, k_right


def test_middlebury_pair_is_consistent_with_its_true_pose_only(motorcycle):
  (f_left, f_right), k_left, k_right = motorcycle
  # The right camera sits the baseline along +x of the left one, same orientation (rectified):
  # X_right = X_left - (B, 0, 0).
  poses = {
      'true': (np.eye(3), np.array([-_BASELINE, 0.0, 0.0])),
      'baseline tilted 10 deg': (np.eye(3), -_BASELINE * np.array(
          [np.cos(np.radians(10.0)), np.sin(np.radians(10.0)), 0.0])),
      'rolled 3 deg': (_rot_z(3.0), np.array([-_BASELINE, 0.0, 0.0])),
      'vertical baseline': (np.eye(3), np.array([0.0, -_BASELINE, 0.0])),
  }
  results = {}
  for name, (rot, trans) in poses.items():
    fundamental = tsed_lib.fundamental_matrix(k_left, k_right, rot, trans)
    median, count = tsed_lib.pair_sed(f_left, f_right, fundamental, ratio=SETTINGS.ratio)
    results[name] = (median, count, tsed_lib.consistent(median, count, SETTINGS))
  # Measured 2026-12-01: 578 matches; median SED 0.125 px (true), 6.4 px (tilted 10 deg), 4.35 px
  # (rolled 3 deg), 37 px (vertical).
  median, count, ok = results['true']
  assert ok and count > 300 and median < 0.3, results
  for name in ('baseline tilted 10 deg', 'rolled 3 deg', 'vertical baseline'):
    assert not results[name][2] and results[name][0] > 2 * SETTINGS.error, (name, results)
