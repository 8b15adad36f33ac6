"""TSED: the thresholded symmetric epipolar distance of a view set with known cameras.

Yu, Forghani, Derpanis, Brubaker, "Long-Term Photometric Consistent Novel View Synthesis with
Diffusion Models", ICCV 2023 (arXiv 2304.10700), §4 and the authors' evaluation scripts
(github.com/YorkUCVIL/Photoconsistent-NVS, src/scripts/compute_sed.py, eval_consistency.py):
  1. SIFT keypoints in every view, matched between the two views of each neighbouring pair (the
     authors: COLMAP's SIFT with edge threshold 30 and its exhaustive matcher, whose defaults are
     Lowe's ratio test at 0.8 with cross-checking; no geometric verification);
  2. for each match (x_a, x_b) the symmetric epipolar distance under the fundamental matrix F of
     the KNOWN cameras, SED = (d(x_b, F x_a) + d(x_a, F^T x_b)) / 2, pixels;
  3. a pair is consistent when it has at least T_matches matches and its median SED is below
     T_error; TSED is the consistent fraction of the pairs.
The authors score 256 x 256 RealEstate10K frames with T_matches = 10 and T_error = 2 px (their
scripts' defaults; the paper also plots TSED over a range of T_error). Here:
  - views are resampled (bicubic) to `resolution` px (256: the paper's) before SIFT and every
    distance is in pixels of that size, so T_error keeps its meaning at any view size: 2 px at
    256 px is 0.25 px of a 32 px view. A 32 px view has too few pixels for SIFT's scale space
    (a handful of keypoints); upsampled it gives 100-200 per view of a procedural scene;
  - SIFT is scikit-image's (skimage.feature.SIFT, c_edge = the authors' edge threshold) and
    matching is skimage.feature.match_descriptors (ratio test, cross-check) instead of COLMAP:
    both deterministic (no random sampling anywhere), so TSED of the same views is reproducible;
  - "neighbouring" pairs: the authors score consecutive frames of a trajectory; a view set here
    is not always a trajectory (3x9 is a grid), so the pairs are each view with its `neighbours`
    nearest cameras (camera centres), each unordered pair once; for a closed orbit with 2 that
    is exactly the consecutive frames;
  - pairs whose cameras share their centre (a pure rotation has no epipolar geometry) are left
    out of the count.
The deliberately inconsistent control (`shuffled`) scores every pair with its second view taken
from the next view set (instance n + 1 mod N) on the same camera: two different scenes.

Host-side numpy and scikit-image (SIFT is not jittable); cameras follow geometry.cameras.
"""
from __future__ import annotations

from concurrent import futures
import dataclasses
import os
from typing import Any, Optional, Sequence

import numpy as np
from skimage import color as skcolor
from skimage import feature as skfeature
from skimage import transform as sktransform

from ivd_jax.geometry import cameras

# OpenGL camera (x right, y up, looking down -z) -> computer-vision camera (y down, +z forward).
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


@dataclasses.dataclass(frozen=True)
class TsedSettings:
  """TSED settings (config.sample.tsed_* fields; defaults in configs/common.py).

  error: T_error, median SED in pixels at `resolution` below which a pair is consistent.
  matches: T_matches, the fewest matches a consistent pair has.
  neighbours: each view is paired with its k nearest cameras.
  resolution: views are resampled to this many pixels before SIFT.
  ratio: Lowe's ratio test of the matcher.
  edge: SIFT edge threshold (c_edge).
  sweep: further T_error values reported beside `error`.
  """
  error: float
  matches: int
  neighbours: int
  resolution: int
  ratio: float
  edge: float
  sweep: tuple[float, ...]

  @classmethod
  def from_config(cls, sample_config: Any) -> 'TsedSettings':
    s = sample_config
    return cls(error=float(s.tsed_error), matches=int(s.tsed_matches),
               neighbours=int(s.tsed_neighbours), resolution=int(s.tsed_resolution),
               ratio=float(s.tsed_ratio), edge=float(s.tsed_edge),
               sweep=tuple(float(x) for x in s.tsed_sweep))

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# Epipolar geometry.
# ------------------------------------------------------------------------------------------------


def pixel_intrinsics(resolution: int, fov_deg: float) -> np.ndarray:
  """[3, 3] float64 K of an N x N view: x right, y down, the image centre at (N/2, N/2).

  A pixel (row r, col c) has its centre at (c + 0.5, r + 0.5) (geometry.cameras).
  """
  f = cameras.focal_length(fov_deg) * resolution
  c = 0.5 * resolution
  return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


def relative_pose(view_a: np.ndarray, view_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(R, t) with X_b = R X_a + t in computer-vision camera coordinates of two world->camera
  matrices of geometry.cameras (OpenGL)."""
  view_a, view_b = np.asarray(view_a, np.float64), np.asarray(view_b, np.float64)
  rot_a, trans_a = _GL_TO_CV @ view_a[:3, :3], _GL_TO_CV @ view_a[:3, 3]
  rot_b, trans_b = _GL_TO_CV @ view_b[:3, :3], _GL_TO_CV @ view_b[:3, 3]
  rot = rot_b @ rot_a.T
  return rot, trans_b - rot @ trans_a


def fundamental_matrix(k_a: np.ndarray, k_b: np.ndarray, rot: np.ndarray,
                       trans: np.ndarray) -> np.ndarray:
  """F with x_b^T F x_a = 0 for pixels x_a, x_b of one point: K_b^-T [t]x R K_a^-1."""
  t = np.asarray(trans, np.float64)
  skew = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
  return np.linalg.inv(k_b).T @ skew @ np.asarray(rot, np.float64) @ np.linalg.inv(k_a)


def symmetric_epipolar_distance(pts_a: np.ndarray, pts_b: np.ndarray,
                                fundamental: np.ndarray) -> np.ndarray:
  """[M] (d(x_b, F x_a) + d(x_a, F^T x_b)) / 2 of pixel points [M, 2] (x, y), in pixels."""
  ha = np.concatenate([np.asarray(pts_a, np.float64), np.ones((len(pts_a), 1))], axis=1)
  hb = np.concatenate([np.asarray(pts_b, np.float64), np.ones((len(pts_b), 1))], axis=1)
  line_b = ha @ fundamental.T  # epipolar lines of x_a in view b
  line_a = hb @ fundamental  # epipolar lines of x_b in view a
  algebraic = np.abs(np.sum(hb * line_b, axis=1))
  with np.errstate(divide='ignore', invalid='ignore'):
    return 0.5 * (algebraic / np.hypot(line_b[:, 0], line_b[:, 1]) +
                  algebraic / np.hypot(line_a[:, 0], line_a[:, 1]))


# ------------------------------------------------------------------------------------------------
# Features and matches.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Features:
  points: np.ndarray  # [K, 2] float64 pixel (x, y), pixel centres at +0.5
  descriptors: np.ndarray  # [K, 128] uint8


def sift_features(gray: np.ndarray, *, edge: float) -> Features:
  """SIFT keypoints and descriptors of a grayscale image (float in [0, 1])."""
  sift = skfeature.SIFT(c_edge=edge)
  try:
    sift.detect_and_extract(np.asarray(gray, np.float64))
  except RuntimeError:  # skimage raises when an image has no extremum at all (flat views)
    return Features(np.zeros((0, 2)), np.zeros((0, 128), np.uint8))
  # skimage positions: sub-pixel (row, col) with the pixel centre at integers.
  return Features(sift.positions[:, ::-1].astype(np.float64) + 0.5, sift.descriptors)


def match_features(fa: Features, fb: Features, *, ratio: float) -> tuple[np.ndarray, np.ndarray]:
  """Matched points ([M, 2], [M, 2]): nearest descriptor, Lowe's ratio test, cross-check."""
  if len(fa.descriptors) < 2 or len(fb.descriptors) < 2:
    return np.zeros((0, 2)), np.zeros((0, 2))
  pairs = skfeature.match_descriptors(fa.descriptors, fb.descriptors, metric='euclidean',
                                      cross_check=True, max_ratio=ratio)
  return fa.points[pairs[:, 0]], fb.points[pairs[:, 1]]


def view_gray(rgb: np.ndarray, resolution: int) -> np.ndarray:
  """RGB [H, W, 3] in [0, 1] -> luminance resampled (bicubic) to resolution x resolution."""
  gray = skcolor.rgb2gray(np.clip(np.asarray(rgb, np.float64), 0.0, 1.0))
  if gray.shape != (resolution, resolution):
    gray = sktransform.resize(gray, (resolution, resolution), order=3,
                              anti_aliasing=gray.shape[0] > resolution)
  return np.clip(gray, 0.0, 1.0)


def pair_sed(fa: Features, fb: Features, fundamental: np.ndarray, *,
             ratio: float) -> tuple[float, int]:
  """(median SED in pixels, number of matches) of one pair of views; inf without matches."""
  pa, pb = match_features(fa, fb, ratio=ratio)
  seds = symmetric_epipolar_distance(pa, pb, fundamental)
  return (float(np.median(seds)) if len(seds) else float('inf')), int(len(seds))


def consistent(median_sed: float, num_matches: int, settings: TsedSettings) -> bool:
  """The paper's test of one pair: >= T_matches matches and median SED < T_error."""
  return num_matches >= settings.matches and median_sed < settings.error


# ------------------------------------------------------------------------------------------------
# View sets.
# ------------------------------------------------------------------------------------------------


def neighbour_pairs(views: np.ndarray, neighbours: int) -> list[tuple[int, int]]:
  """Unordered pairs (i, j), i < j: every view with its `neighbours` nearest camera centres."""
  views = np.asarray(views, np.float64)
  centres = -np.einsum('vji,vj->vi', views[:, :3, :3], views[:, :3, 3])
  dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
  pairs = set()
  for i in range(len(views)):
    order = [j for j in np.argsort(dist[i], kind='stable') if j != i]
    pairs.update((min(i, int(j)), max(i, int(j))) for j in order[:neighbours])
  return sorted(pairs)


def _figures(medians: Sequence[float], counts: Sequence[int], settings: TsedSettings,
             num_sets: int) -> dict[str, Any]:
  medians = np.asarray(medians, np.float64)
  counts = np.asarray(counts, np.int64)

  def fraction(t_error):
    if not len(medians):
      return float('nan')
    return float(np.mean([consistent(m, c, dataclasses.replace(settings, error=t_error))
                          for m, c in zip(medians, counts)]))

  scored = medians[np.isfinite(medians)]
  return {
      'tsed': fraction(settings.error),
      'num_pairs': int(len(medians)),
      'num_consistent': int(sum(consistent(m, c, settings) for m, c in zip(medians, counts))),
      'num_sets': int(num_sets),
      'median_sed': float(np.median(scored)) if len(scored) else float('nan'),
      'matches_per_pair': float(np.mean(counts)) if len(counts) else float('nan'),
      'sweep': {f'{t:g}': fraction(t) for t in settings.sweep},
  }


def tsed(rgbs: np.ndarray, views: np.ndarray, *, fov_deg: float, settings: TsedSettings,
         control: bool = True) -> dict[str, Optional[dict[str, Any]]]:
  """TSED of one or many view sets, and of the shuffled control.

  Args:
    rgbs: [V, H, W, 3(+)] or [N, V, H, W, 3(+)] views in [0, 1] (channels past 3, e.g. depth,
      are ignored); H == W.
    views: [V, 4, 4] world->camera matrices shared by every set, or [N, V, 4, 4].
    fov_deg: field of view of the views.
    settings: thresholds and matching settings.
    control: also score the shuffled control (needs N >= 2; None otherwise).

  Returns:
    {'views': figures, 'shuffled': figures or None}; figures: tsed (consistent fraction of the
    neighbouring pairs, pooled over the sets), num_pairs, num_consistent, num_sets, median_sed
    (median over the pairs of their median SED, px at settings.resolution), matches_per_pair,
    sweep (TSED at each T_error of settings.sweep).
  """
  rgbs = np.asarray(rgbs)
  if rgbs.ndim == 4:
    rgbs = rgbs[None]
  views = np.asarray(views, np.float64)
  if views.ndim == 3:
    views = np.broadcast_to(views, (rgbs.shape[0],) + views.shape)
  if views.shape[:2] != rgbs.shape[:2] or rgbs.shape[2] != rgbs.shape[3]:
    raise ValueError(f'need square views with one camera each; got {rgbs.shape}, views '
                     f'{views.shape}')
  num_sets, num_views = rgbs.shape[:2]
  if num_views < 2:
    return {'views': None, 'shuffled': None}
  k = pixel_intrinsics(settings.resolution, fov_deg)

  def features(index):
    n, v = divmod(index, num_views)
    return sift_features(view_gray(rgbs[n, v, ..., :3], settings.resolution), edge=settings.edge)

  # SIFT is numpy / scipy work that releases the GIL: one thread per core (order kept).
  with futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    flat = list(pool.map(features, range(num_sets * num_views)))
  feats = [flat[n * num_views:(n + 1) * num_views] for n in range(num_sets)]
  out = {'views': [[], []], 'shuffled': [[], []]}
  for n in range(num_sets):
    for i, j in neighbour_pairs(views[n], settings.neighbours):
      rot, trans = relative_pose(views[n, i], views[n, j])
      if np.linalg.norm(trans) < 1e-9:  # a pure rotation: no epipolar geometry to test
        continue
      fundamental = fundamental_matrix(k, k, rot, trans)
      for key, other in (('views', n), ('shuffled', (n + 1) % num_sets)):
        if key == 'shuffled' and (not control or num_sets < 2):
          continue
        median, count = pair_sed(feats[n][i], feats[other][j], fundamental,
                                 ratio=settings.ratio)
        out[key][0].append(median)
        out[key][1].append(count)
  result = {'views': _figures(*out['views'], settings, num_sets), 'shuffled': None}
  if control and num_sets >= 2:
    result['shuffled'] = _figures(*out['shuffled'], settings, num_sets)
  return result
