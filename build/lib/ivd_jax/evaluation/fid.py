"""FID, Inception Score and KID with the Flax FID Inception-v3, extraction sharded over the mesh.

Conventions follow the tools the paper's numbers come from:
- images are quantised to uint8 before the network sees them (as every tool that reads saved
  PNGs does), then resized inside the network (models/inception.py);
- FID: Frechet distance between Gaussians fitted to the 2048-d pool features (float64, unbiased
  covariance as np.cov);
- IS: 10 contiguous splits, exp(E_x KL(p(y|x) || p(y))) per split, mean and std over splits,
  p(y|x) = softmax of the 1008-way logits without bias (Salimans et al. 2016);
- KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
  100 random subsets of 1000 (StyleGAN2-ADA / torch-fidelity defaults), mean and std reported.
Batches are split over the mesh like every input array (ivd_jax.parallel.batch_sharding).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterable, Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np

from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax.models import inception


# ------------------------------------------------------------------------------------------------
# Images.
# ------------------------------------------------------------------------------------------------


def images_to_uint8(images: Any, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Float images in `value_range` (or uint8, returned as is) -> uint8 RGB, rounded like PNGs."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  lo, hi = value_range
  x = (images.astype(np.float32) - lo) * (255.0 / (hi - lo))
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Feature extraction.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Features:
  """Inception outputs of N images: pool [N, 2048] float32, logits [N, 1008] or None."""
  pool: np.ndarray
  logits: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return int(self.pool.shape[0])


def default_mesh() -> jax.sharding.Mesh:
  """All devices data-parallel: parallel.make_mesh with the mesh shape (-1, 1)."""
  return parallel.make_mesh(ml_collections.ConfigDict({'shape': (-1, 1)}))


class FeatureExtractor:
  """Runs the FID Inception over image batches, the batch split over the mesh.

  One compiled function per image size serves every batch: short batches are padded to
  `batch_size` and the padding is dropped from the output. Parameters are replicated; the
  features come back replicated, so in a multi-process run every process passes its own images
  (the same number on each) and receives the features of all processes' images.
  """

  def __init__(self, params: dict, *, with_logits: bool, batch_size: int = 64,
               mesh: Optional[jax.sharding.Mesh] = None, precision: str = 'highest'):
    self.mesh = mesh if mesh is not None else default_mesh()
    shards = parallel.data_parallel_size(self.mesh)
    if batch_size <= 0 or batch_size % shards:
      raise errors.ConfigError('eval.batch_size', f'{batch_size} does not split over the '
                               f'{shards} data-parallel devices',
                               f'use a positive multiple of {shards}')
    if batch_size % jax.process_count():
      raise errors.ConfigError('eval.batch_size', f'{batch_size} does not split over '
                               f'{jax.process_count()} processes', 'use a multiple of it')
    self.batch_size = batch_size
    self.with_logits = with_logits
    self._local_batch = batch_size // jax.process_count()
    self._batch_sharding = parallel.batch_sharding(self.mesh)
    self._params = jax.device_put(params, parallel.replicated(self.mesh))
    self._apply = _compiled_apply(with_logits, precision, self.mesh)

  def _dispatch(self, images: np.ndarray) -> tuple[dict[str, jax.Array], int]:
    """Starts the network on at most the local batch of uint8 images (asynchronously)."""
    images = np.asarray(images)
    n = images.shape[0]
    if n > self._local_batch:
      raise ValueError(f'{n} images > batch size {self._local_batch}')
    if images.ndim != 4 or images.shape[-1] != 3:
      raise errors.UserError(f'expected RGB images [N, H, W, 3], got {images.shape}. Fix: pass '
                             'the colour channels only.')
    if n < self._local_batch:
      pad = np.zeros((self._local_batch - n,) + images.shape[1:], images.dtype)
      images = np.concatenate([images, pad])
    x = jax.make_array_from_process_local_data(self._batch_sharding, images)
    return self._apply(self._params, x), n

  @staticmethod
  def _fetch(out: dict[str, jax.Array], n: int) -> dict[str, np.ndarray]:
    out = {k: np.asarray(v) for k, v in out.items()}
    if jax.process_count() > 1:  # Rows are process-major: drop each process's padding.
      return {k: np.concatenate([b[:n] for b in np.split(v, jax.process_count())])
              for k, v in out.items()}
    return {k: v[:n] for k, v in out.items()}

  def replicated(self, images: np.ndarray,
                 value_range: tuple[float, float] = (-1.0, 1.0)) -> Features:
    """Features of [N, H, W, 3] images that every process holds alike, in their order.

    Each process puts only its own devices' rows of a batch on the mesh (calling the extractor
    itself, meant for per-process images, would score every image once per process).
    """
    if jax.process_count() == 1:
      return self(images, value_range)
    images = np.asarray(images)
    outs = []
    for i in range(0, images.shape[0], self.batch_size):
      chunk = images_to_uint8(images[i:i + self.batch_size], value_range)
      n = chunk.shape[0]
      chunk = np.concatenate([chunk, np.zeros((self.batch_size - n,) + chunk.shape[1:],
                                              np.uint8)])
      x = jax.make_array_from_callback(chunk.shape, self._batch_sharding,
                                       lambda index, c=chunk: c[index])
      outs.append({k: np.asarray(v)[:n] for k, v in self._apply(self._params, x).items()})
    if not outs:
      raise errors.UserError('no images to evaluate. Fix: check the image source.')
    return Features(np.concatenate([o['pool'] for o in outs]),
                    np.concatenate([o['logits'] for o in outs]) if self.with_logits else None)

  def in_order(self, images: Iterable[np.ndarray], counts: Sequence[int],
               image_shape: Sequence[int], value_range: tuple[float, float] = (-1.0, 1.0)
               ) -> Features:
    """Features of a sequence split over the processes in consecutive parts, in its order.

    Process p passes its part (counts[p] images, batches of any size); every process passes the
    same `counts`. Shorter parts are padded with blank [H, W, 3] `image_shape` images.
    """
    procs = jax.process_count()
    if procs == 1:
      return self(images, value_range)
    local = self._local_batch
    rows = -(-max(counts) // local) * local  # per process, whole batches

    def padded():
      for b in images:
        yield images_to_uint8(b, value_range)
      blank = rows - counts[jax.process_index()]
      if blank:
        yield np.zeros((blank,) + tuple(image_shape), np.uint8)

    feats = self(padded())

    def regroup(x):  # each batch is [process 0's rows, process 1's rows, ...]
      x = x.reshape((rows // local, procs, local) + x.shape[1:]).swapaxes(0, 1)
      x = x.reshape((procs, rows) + x.shape[3:])
      return np.concatenate([x[p, :c] for p, c in enumerate(counts)])

    return Features(regroup(feats.pool),
                    None if feats.logits is None else regroup(feats.logits))

  def batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """Features of at most `batch_size` (per process: batch_size / processes) uint8 images."""
    return self._fetch(*self._dispatch(images))

  def __call__(self, images: Iterable[np.ndarray] | np.ndarray,
               value_range: tuple[float, float] = (-1.0, 1.0)) -> Features:
    """Features of an [N, H, W, 3] array or of an iterable of such batches.

    Float images are quantised to uint8 from `value_range` first; uint8 images are used as is.
    One batch stays in flight while the host prepares the next, so reading and quantising
    images overlaps the network on an accelerator.
    """
    if isinstance(images, np.ndarray) or isinstance(images, jax.Array):
      array = np.asarray(images)
      images = (array[i:i + self._local_batch]
                for i in range(0, array.shape[0], self._local_batch))
    outs, pending = [], None
    for chunk in _rebatch(images, self._local_batch):
      started = self._dispatch(images_to_uint8(chunk, value_range))
      if pending is not None:
        outs.append(self._fetch(*pending))
      pending = started
    if pending is None:
      raise errors.UserError('no images to evaluate. Fix: check the image source.')
    outs.append(self._fetch(*pending))
    return Features(np.concatenate([o['pool'] for o in outs]),
                    np.concatenate([o['logits'] for o in outs]) if self.with_logits else None)


@functools.lru_cache(maxsize=8)
def _compiled_apply(with_logits: bool, precision: str, mesh: jax.sharding.Mesh):
  # Cached per (variant, mesh) so every extractor on the same mesh shares one compilation.
  model = inception.InceptionV3(with_logits=with_logits, precision=precision)
  return jax.jit(model.apply,
                 in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


def _rebatch(batches: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
  """Re-chunks an iterable of arrays into arrays of exactly `size` rows (the last may be short)."""
  buf, count = [], 0
  for b in batches:
    b = np.asarray(b)
    buf.append(b)
    count += b.shape[0]
    while count >= size:
      cat = np.concatenate(buf)
      yield cat[:size]
      buf, count = [cat[size:]], count - size
  if count:
    yield np.concatenate(buf)


# ------------------------------------------------------------------------------------------------
# Metrics.
# ------------------------------------------------------------------------------------------------


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [d] and unbiased covariance [d, d] in float64 (np.cov, as pytorch-fid)."""
  f = np.asarray(features, np.float64)
  if f.shape[0] < 2:
    raise errors.UserError(f'FID needs at least 2 images, got {f.shape[0]}')
  return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

  tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
  PSD matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2): two symmetric eigendecompositions,
  stable for singular covariances, and free of the imaginary parts scipy's sqrtm produces.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  a = _sqrt_psd(s1)
  ev = np.linalg.eigvalsh(a @ s2 @ a)
  tr_sqrt = np.sqrt(np.clip(ev, 0.0, None)).sum()
  return float(np.sum((mu1 - mu2)**2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
  """FID between two feature sets; exact, and fast when a set has fewer rows than dimensions.

  With centred features X1 [n1, d], X2 [n2, d] and S_i = X_i^T X_i / (n_i - 1), the non-zero
  eigenvalues of S1 S2 are the squared singular values of X1 X2^T / sqrt((n1-1)(n2-1)), so the
  trace term is that matrix's nuclear norm: O(n^2 d) instead of O(d^3).
  """
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
  if min(n1, n2) < 2:
    raise errors.UserError(f'FID needs at least 2 images per set, got {n1} and {n2}')
  if min(n1, n2) >= d:
    return frechet_distance(*gaussian_statistics(f1), *gaussian_statistics(f2))
  mu1, mu2 = f1.mean(0), f2.mean(0)
  x1, x2 = f1 - mu1, f2 - mu2
  tr1 = np.sum(x1 * x1) / (n1 - 1)
  tr2 = np.sum(x2 * x2) / (n2 - 1)
  nuclear = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
  return float(np.sum((mu1 - mu2)**2) + tr1 + tr2 - 2.0 * nuclear)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """(mean, std) over `splits` contiguous splits of exp(E_x KL(p(y|x) || p(y)))."""
  logits = np.asarray(logits, np.float64)
  n = logits.shape[0]
  if n < splits:
    raise errors.UserError(f'Inception Score with {splits} splits needs >= {splits} images, got '
                           f'{n}. Fix: evaluate more images or set eval.is_splits lower.')
  logp = logits - logits.max(1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(1, keepdims=True))
  scores = []
  for k in range(splits):
    part = logp[k * n // splits:(k + 1) * n // splits]
    # log p(y) by logsumexp: stays finite for classes no image predicts.
    top = part.max(0)
    log_py = top + np.log(np.exp(part - top).mean(0))
    kl = np.sum(np.exp(part) * (part - log_py), axis=1).mean()
    scores.append(math.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """(mean, std) over random subsets of the unbiased MMD^2 with kernel (x.y / d + 1)^3."""
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  d = f1.shape[1]
  m = min(subset_size, f1.shape[0], f2.shape[0])
  if m < 2:
    raise errors.UserError(f'KID needs at least 2 images per set, got {f1.shape[0]} and '
                           f'{f2.shape[0]}')
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = f1[rng.choice(f1.shape[0], m, replace=False)]
    y = f2[rng.choice(f2.shape[0], m, replace=False)]
    kxx = (x @ x.T / d + 1.0)**3
    kyy = (y @ y.T / d + 1.0)**3
    kxy = (x @ y.T / d + 1.0)**3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    values.append(within - 2.0 * kxy.mean())
  return float(np.mean(values)), float(np.std(values))
