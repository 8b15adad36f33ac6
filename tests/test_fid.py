"""FID / IS / KID math, the reference-statistics cache, and sharded feature extraction."""
import jax
import ml_collections
import numpy as np
import pytest
from scipy import linalg as scipy_linalg
from scipy import ndimage

from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax.evaluation import fid
from ivd_jax.evaluation import reference
from ivd_jax.models import inception


def _random_features(rng, n, d, rank=None):
  rank = rank or d
  basis = rng.normal(size=(rank, d))
  return rng.normal(size=(n, rank)) @ basis + rng.normal(size=d)


# ------------------------------------------------------------------------------------------------
# Pure math.
# ------------------------------------------------------------------------------------------------


def test_frechet_distance_matches_scipy_sqrtm_formula():
  """Equals pytorch-fid's formula (scipy sqrtm of S1 S2), full-rank and rank-deficient."""
  rng = np.random.default_rng(0)
  for n in (500, 40):  # 40 < d: singular covariances, as with few images
    f1 = _random_features(rng, n, 64)
    f2 = _random_features(rng, n, 64) * 0.8 + 0.3
    mu1, s1 = fid.gaussian_statistics(f1)
    mu2, s2 = fid.gaussian_statistics(f2)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    want = np.sum((mu1 - mu2)**2) + np.trace(s1 + s2 - 2 * covmean)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert abs(got - want) / want < 1e-6, (got, want)
    # The low-rank path (features, n < d) equals the covariance path.
    if n < 64:
      assert abs(fid.fid_from_features(f1, f2) - got) / got < 1e-6


def test_fid_of_a_set_with_itself_is_zero():
  rng = np.random.default_rng(1)
  f = np.abs(_random_features(rng, 30, 256, rank=29))
  scale = fid.fid_from_features(f, f[::-1] * 1.1)
  assert scale > 1.0
  assert abs(fid.fid_from_features(f, f)) < 1e-9 * scale
  # Through the covariances, singular here (rank 9 in 256-d): only eigenvalue round-off is left.
  mu, s = fid.gaussian_statistics(f[:10])
  assert abs(fid.frechet_distance(mu, s, mu, s)) < 1e-6 * np.trace(s)


def test_inception_score_of_a_repeated_image_is_one():
  logits = np.tile(np.random.default_rng(2).normal(size=(1, 1008)) * 5.0, (100, 1))
  mean, std = fid.inception_score(logits, splits=10)
  assert abs(mean - 1.0) < 1e-9 and std < 1e-9


def test_inception_score_of_k_confident_uniform_classes_is_k():
  logits = np.full((1000, 1008), -1e3)
  logits[np.arange(1000), np.arange(1000) % 10] = 0.0  # one-hot, 10 classes in every split
  mean, std = fid.inception_score(logits, splits=10)
  assert abs(mean - 10.0) < 1e-6 and std < 1e-6
  with pytest.raises(errors.UserError, match='splits'):
    fid.inception_score(logits[:5], splits=10)


def test_kid_unbiased_estimator():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(60, 16))
  b = rng.normal(size=(50, 16)) + 0.5
  # One subset holding every row: the plain unbiased MMD^2 over the full sets (m = 50).
  x, y = a[:50], b
  k = lambda u, v: (u @ v.T / 16 + 1.0)**3
  full = ((k(x, x).sum() - np.trace(k(x, x))) / (50 * 49) +
          (k(y, y).sum() - np.trace(k(y, y))) / (50 * 49) - 2 * k(x, y).mean())
  got, _ = fid.kernel_inception_distance(a[:50], b, num_subsets=1, subset_size=50)
  assert abs(got - full) < 1e-9 * abs(full)
  # Same distribution: the unbiased estimate centres on 0; shifted: clearly positive.
  same, _ = fid.kernel_inception_distance(rng.normal(size=(400, 16)),
                                          rng.normal(size=(400, 16)), num_subsets=20,
                                          subset_size=200)
  shifted, _ = fid.kernel_inception_distance(a, b, num_subsets=20, subset_size=50)
  assert abs(same) < 0.02 and shifted > 0.2


def test_images_to_uint8_rounds_like_png():
  x = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5], np.float32)
  np.testing.assert_array_equal(fid.images_to_uint8(x), [0, 0, 128, 191, 255, 255])
  np.testing.assert_array_equal(fid.images_to_uint8(np.array([0.0, 1.0]), (0.0, 1.0)), [0, 255])


def test_reference_cache(tmp_path):
  rng = np.random.default_rng(4)
  feats = rng.normal(size=(20, 8)).astype(np.float32)
  calls = []

  def compute():
    calls.append(1)
    return reference.ReferenceStats.from_features(feats, {}, kid_max=12)

  path = str(tmp_path / 'ref.npz')
  meta = {'source': 'procedural', 'resolution': 64, 'num_images': 20}
  stats, cached = reference.cached_reference(path, meta, compute)
  assert not cached and stats.features.shape == (12, 8) and stats.num_images == 20
  again, cached = reference.cached_reference(path, dict(meta), compute)
  assert cached and len(calls) == 1
  np.testing.assert_array_equal(again.sigma, stats.sigma)
  np.testing.assert_allclose(again.mu, feats.astype(np.float64).mean(0))
  _, cached = reference.cached_reference(path, {**meta, 'resolution': 128}, compute)
  assert not cached and len(calls) == 2  # a changed dataset never reuses stale statistics


# ------------------------------------------------------------------------------------------------
# With the real network.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def params(inception_weights):
  return inception.load_params(inception_weights)[0]


@pytest.fixture(scope='module')
def photos():
  from test_inception import load_photos  # pylint: disable=g-import-not-at-top
  return load_photos(128)[:8]


@pytest.fixture(scope='module')
def extractor(params):
  return fid.FeatureExtractor(params, with_logits=False, batch_size=8)


def test_fid_rises_monotonically_with_corruption(extractor, photos):
  x = photos[:4].astype(np.float32)  # 4 photos x 7 versions = 28 images, 4 batches
  blurred = [ndimage.gaussian_filter(x, (0, s, s, 0)) for s in (1.0, 2.0, 4.0)]
  shifted = [np.roll(x, (s, s), axis=(1, 2)) for s in (4, 12, 32)]
  feats = extractor(np.concatenate([x] + blurred + shifted).round().astype(np.uint8)).pool
  clean, rest = feats[:4], np.split(feats[4:], 6)
  assert abs(fid.fid_from_features(clean, clean)) < 1e-6
  for corrupted in (rest[:3], rest[3:]):
    scores = [fid.fid_from_features(clean, f) for f in corrupted]
    # Measured: blur sigma 1/2/4 -> 72/161/339; shift 4/12/32 px -> 40/81/134.
    assert scores[0] > 1.0, scores
    assert all(b > a * 1.1 for a, b in zip(scores, scores[1:])), scores


def test_sharded_extraction_equals_single_device(params, extractor, photos):
  assert extractor.mesh.devices.size == 8 == jax.device_count()
  one = parallel.make_mesh(ml_collections.ConfigDict({'shape': (1, 1)}),
                          devices=jax.devices()[:1])
  single = fid.FeatureExtractor(params, with_logits=False, batch_size=8, mesh=one)
  # 11 images: a full batch and a padded one, fed as uneven chunks.
  images = np.concatenate([photos, photos[:3, ::-1]])
  chunks = [images[:5], images[5:11]]
  a = extractor(iter(chunks)).pool
  b = single(images).pool
  assert a.shape == (11, 2048)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The padded batch carries its own images' features (mirrored photos differ from originals).
  assert np.abs(a[8:] - a[:3]).max() > 0.1


def test_extractor_rejects_indivisible_batch():
  # Checked before any parameter reaches a device or anything compiles.
  with pytest.raises(errors.ConfigError, match='eval.batch_size'):
    fid.FeatureExtractor({}, with_logits=False, batch_size=12)
