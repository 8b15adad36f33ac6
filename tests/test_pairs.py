"""G_c training pairs (docs/method.md §5): masks, erosion, blur, and what survives the warps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ivd_jax.roles import augment
from ivd_jax.roles import pairs
from ivd_jax.data import procedural
from ivd_jax.geometry import cameras
from ivd_jax.geometry import warp

RES = 32
NUM = 40  # 10 scenes x 4 keys


def test_gaussian_blur_is_torchvision_3x3():
  np.testing.assert_allclose(augment.gaussian_kernel1d(1.0), [0.27406862, 0.45186276, 0.27406862],
                             rtol=1e-6)
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(7, 9, 3)).astype(np.float32)
  sigma = 0.7
  k = np.asarray(augment.gaussian_kernel1d(sigma))
  kernel = np.outer(k, k)
  padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode='reflect')
  expected = sum(kernel[i, j] * padded[i:i + 7, j:j + 9] for i in range(3) for j in range(3))
  np.testing.assert_allclose(augment.gaussian_blur(jnp.asarray(image), sigma), expected,
                             rtol=1e-5, atol=1e-6)
  # sigma -> 0 (the 1e-3 floor of docs/method.md §5) leaves the image unchanged.
  np.testing.assert_allclose(augment.gaussian_blur(jnp.asarray(image), 1e-3), image, atol=1e-6)


@pytest.fixture(scope='module')
def batch():
  view = np.asarray(cameras.SOURCE_VIEW)
  rgbd = np.stack([procedural.render_rgbd(procedural.sample_scene(i), view, RES)
                   for i in range(NUM // 4)])
  rgbd = np.repeat(rgbd, 4, axis=0)  # the same image with 4 different keys
  key = jax.random.PRNGKey(7)
  out = jax.jit(lambda x: pairs.make_training_pairs(x, key, near=0.5, far=100.0))(
      jnp.asarray(rgbd) * 2 - 1)
  return rgbd, key, jax.tree.map(np.asarray, out)


def test_pair_masks_and_values(batch):
  rgbd01, _, out = batch
  mask, mask_rgb = out['mask'], out['mask_rgb']
  assert set(np.unique(mask)) <= {0.0, 1.0} and set(np.unique(mask_rgb)) <= {0.0, 1.0}
  assert np.all(mask_rgb <= mask)  # texture erosion only removes
  y_rgb01, y_depth01 = (out['y_rgb'] + 1) / 2, (out['y_depth'] + 1) / 2
  np.testing.assert_array_equal(y_rgb01 * (1 - mask_rgb), 0.0)
  np.testing.assert_array_equal(y_depth01 * (1 - mask), 0.0)
  # Small random cameras keep a good part of view 0 visible (mean visible fraction).
  visible = mask.mean(axis=(1, 2, 3))
  assert 0.3 < visible.mean() < 1.0, visible
  # What survives is view 0's own depth, up to prewarp noise (sigma <= 0.005) and resampling.
  err = np.abs(y_depth01 - rgbd01[..., 3:])[mask[..., 0] > 0]
  assert np.median(err) < 0.01, np.median(err)
  # Different keys of the same image give different cameras and so different masks.
  assert not np.array_equal(mask[0], mask[1])


def test_pair_random_choices_follow_method5(batch):
  rgbd01, key, out = batch
  sizes = []
  blurred = 0
  for i in range(NUM):
    k_view, k_noise, k_blur, k_sigma, k_erode = jax.random.split(jax.random.fold_in(key, i), 5)
    del k_view, k_noise
    mask, mask_rgb = out['mask'][i], out['mask_rgb'][i]
    k = pairs.EROSION_SIZES[int(jax.random.randint(k_erode, (), 0, 5))]
    np.testing.assert_array_equal(mask_rgb, np.asarray(warp.erode(jnp.asarray(mask), k)))
    sizes.append(k)
    if float(jax.random.uniform(k_blur, ())) < pairs.BLUR_PROB:
      blurred += 1
      # The condition's colour is the ORIGINAL colour blurred, masked by mask_rgb.
      sigma = float(jax.random.uniform(k_sigma, ())) * pairs.BLUR_SIGMA_MAX + 1e-3
      expected = np.asarray(augment.gaussian_blur(jnp.asarray(rgbd01[i, ..., :3]), sigma))
      np.testing.assert_allclose((out['y_rgb'][i] + 1) / 2 * mask_rgb, expected * mask_rgb,
                                 atol=2e-6)
  assert 0.6 <= blurred / NUM <= 0.95, blurred
  assert len(set(sizes)) >= 4


def test_pairs_identical_under_batch_sharding(batch):
  """Example i's pair depends only on (image, key, i): sharding the batch changes nothing."""
  rgbd01, key, out = batch
  mesh = jax.make_mesh((4, 2), ('data', 'fsdp'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(('data', 'fsdp')))
  x = jax.device_put(jnp.asarray(rgbd01) * 2 - 1, sharding)
  with jax.set_mesh(mesh):
    sharded = jax.jit(lambda x: pairs.make_training_pairs(x, key, near=0.5, far=100.0),
                      in_shardings=sharding, out_shardings=sharding)(x)
  # Masks (every warp and erosion decision) are identical; colour and depth agree to float
  # rounding (XLA may fuse the blur differently per shard shape: <= 5e-6 seen with jax 0.12).
  for name in out:
    np.testing.assert_allclose(np.asarray(sharded[name]), out[name], err_msg=name,
                               atol=0 if name.startswith('mask') else 1e-5)
