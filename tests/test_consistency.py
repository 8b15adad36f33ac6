"""The 3D-consistency metric: true renders score high, inconsistent view sets score low."""
import numpy as np
import pytest

from ivd_jax.data import procedural
from ivd_jax.evaluation import consistency
from ivd_jax.evaluation import metrics
from ivd_jax.geometry import cameras

# 32 px and the quickstart's settings: the compiled metric is shared with test_quickstart.
RES = 32
POSES = np.array([[0.0, 0.0, 1.0], [0.15, 0.0, 1.0], [-0.15, 0.1, 1.0]], np.float32)
# Exact-depth data: lift with the data's own encoding (what the quickstart does).
NEAR, FAR = 0.5, 100.0


@pytest.fixture(scope='module')
def views():
  return np.asarray(cameras.views_from_poses(POSES), np.float32)


@pytest.fixture(scope='module')
def true_sets(views):
  sets = []
  for seed in (3, 4):
    scene = procedural.sample_scene(seed)
    sets.append(np.stack([procedural.render_rgbd(scene, v, RES, near=NEAR, far=FAR)
                          for v in views]))
  return np.stack(sets).astype(np.float32)  # [2, V, H, W, 4]


def test_view_pairs():
  views = np.asarray(cameras.views_from_poses(cameras.viewset_poses('3x9')), np.float32)
  pairs = consistency.view_pairs(views)
  assert len(pairs) == 27 * 26 and len(set(pairs)) == 27 * 26
  near = consistency.view_pairs(views, neighbours=4)
  assert len(near) == 27 * 4
  # View 0 (yaw 0, pitch 0): its 4 nearest cameras are pitch +-0.15 at yaw 0 (views 1, 2) and
  # yaw +-0.15 at pitch 0 (views 3, 6), all at chord 2 sin(0.075) = 0.1499.
  assert sorted(i for i, j in near if j == 0) == [1, 2, 3, 6]


def test_true_views_are_consistent_and_corrupted_views_are_not(true_sets, views):
  truth = consistency.pairwise_consistency(true_sets, views, near=NEAR, far=FAR)
  assert truth['num_pairs'] == 6 and truth['num_sets'] == 2
  # Measured (32 px, scenes 3 and 4): PSNR 24.0 dB, depth agreement 0.9995, abs rel 0.0005,
  # co-visible 0.47. With view 1 from another scene: 10.1 dB, agreement 0.38 (vs 29.8 / 0.999).
  assert truth['psnr'] > 22.0
  assert truth['depth_agreement'] > 0.98 and truth['depth_abs_rel'] < 0.01
  assert 0.35 < truth['covisible'] < 0.9
  # Swap view 1 of set 0 for view 1 of set 1 (another scene): colour and depth disagree.
  mixed = true_sets.copy()
  mixed[0, 1] = true_sets[1, 1]
  bad = consistency.pairwise_consistency(mixed[:1], views, near=NEAR, far=FAR)
  good = consistency.pairwise_consistency(true_sets[:1], views, near=NEAR, far=FAR)
  assert bad['psnr'] < good['psnr'] - 10.0
  assert bad['depth_agreement'] < good['depth_agreement'] - 0.4


def test_psnr_pools_squared_error():
  # Two images with MSE 0.01 and 0.0001 pooled: MSE 0.00505 -> 22.97 dB, not the mean of 20 and
  # 40 dB.
  np.testing.assert_allclose(metrics.psnr(0.01 * 12 + 0.0001 * 12, 24), 22.967, atol=1e-3)
  assert metrics.psnr(0.0, 5) == float('inf')
  assert np.isnan(metrics.psnr(0.0, 0))
