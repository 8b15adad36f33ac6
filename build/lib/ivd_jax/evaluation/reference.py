"""Statistics of the real images that FID and KID compare against, cached on disk by a key.

The cache file holds the mean and covariance of the pool features and up to `kid_max` features
for KID. Its key (`meta`: data source, split, image count, Inception weights) is stored inside
and in the file name, so a changed dataset or network never reuses stale statistics.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable

import jax
import numpy as np

from ivd_jax.evaluation import fid
from ivd_jax.io import npz
from ivd_jax.io import paths


@dataclasses.dataclass
class ReferenceStats:
  """What the real set contributes to FID and KID: mean, covariance, a feature sample."""
  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray  # [min(N, kid_max), 2048] float32, for KID
  num_images: int
  meta: dict

  @classmethod
  def from_features(cls, features: np.ndarray, meta: dict, *, kid_max: int = 10000,
                    seed: int = 0) -> ReferenceStats:
    mu, sigma = fid.gaussian_statistics(features)
    sample = features
    if features.shape[0] > kid_max:
      idx = np.sort(np.random.default_rng(seed).choice(features.shape[0], kid_max,
                                                       replace=False))
      sample = features[idx]
    return cls(mu, sigma, np.asarray(sample, np.float32), int(features.shape[0]), dict(meta))

  def save(self, path: str) -> None:
    """Writes the cache file (local, written whole through a rename, or gs://)."""
    npz.save_npz(path, mu=self.mu, sigma=self.sigma, features=self.features,
                 num_images=np.int64(self.num_images),
                 meta=np.array(json.dumps(self.meta, sort_keys=True)))

  @classmethod
  def load(cls, path: str) -> ReferenceStats:
    with npz.load_npz(path) as f:
      return cls(f['mu'], f['sigma'], f['features'], int(f['num_images']),
                 json.loads(str(f['meta'])))

  def fid(self, pool: np.ndarray) -> float:
    """FID of generated pool features [N, 2048] against this real set."""
    if len(self.features) == self.num_images:
      # Every real feature is at hand: the exact low-rank form, immune to the round-off of
      # singular covariances when either set has fewer images than 2048.
      return fid.fid_from_features(self.features, pool)
    return fid.frechet_distance(self.mu, self.sigma, *fid.gaussian_statistics(pool))


def weights_identity(path: str) -> dict:
  """The part of the cache key naming the Inception weights file (name, size, its source)."""
  with npz.load_npz(path) as f:
    source = str(f['source']) if 'source' in f.files else ''
  return {'file': paths.basename(path), 'bytes': paths.size(path),
          'source': paths.basename(source)}


def cache_path(directory: str, meta: dict) -> str:
  """DIRECTORY/reference_<key>.npz, the key a short hash of `meta`."""
  key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
  return paths.join(directory, f'reference_{key}.npz')


def cached_reference(path: str, meta: dict,
                     compute: Callable[[], ReferenceStats]) -> tuple[ReferenceStats, bool]:
  """Loads the statistics at `path` if their `meta` matches, else runs compute() and saves.

  Returns (stats, loaded_from_cache). Only process 0 writes the file.
  """
  want = json.loads(json.dumps(meta, sort_keys=True))
  if paths.is_file(path):  # local or gs://
    stats = ReferenceStats.load(path)
    if stats.meta == want:
      return stats, True
  stats = compute()
  stats.meta = want
  if jax.process_index() == 0:
    stats.save(path)
  return stats, False
