"""Error of generated novel views against the true views of held-out procedural scenes.

The pipeline starts generation from each scene's true view 0 and passes the true novel views in
(it reads or renders them; nothing here knows about scenes). A novel-view pixel whose surface
point view 0 sees is determined by the condition; the other pixels are revealed content with many
valid answers, so the two are reported apart: colour PSNR (RGB in [0, 1]) on each, and the
linear-depth abs-rel error on the co-visible pixels.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ivd_jax.evaluation import metrics
from ivd_jax.geometry import depth as depth_lib


@dataclasses.dataclass
class TrueViews:
  """True views of S held-out scenes: where generation starts and what it should produce."""
  first: np.ndarray  # [S, H, W, 4] view 0 in [0, 1], z-buffer depth in the data's near/far
  views: np.ndarray  # [S, V, 4, 4] world->camera matrices; view 0 first
  rgb: np.ndarray  # [S, V - 1, H, W, 3] the true novel views in [0, 1]
  depth: np.ndarray  # [S, V - 1, H, W] their planar linear depth
  covisible: np.ndarray  # [S, V - 1, H, W] bool: pixels whose surface point view 0 sees

  def __len__(self) -> int:
    return int(self.first.shape[0])


def novel_view_error(truth: TrueViews, generated: np.ndarray, *, near: float,
                     far: float) -> dict[str, float]:
  """Colour and depth error of generated view sets against the truth.

  Args:
    truth: the true views; generation started from truth.first on the cameras truth.views.
    generated: [S, V, H, W, 4] generated view sets in [0, 1] (view 0 is not scored), z-buffer
      depth in the data's encoding `near` / `far`.
    near, far: the z-buffer encoding of the generated depth.

  Returns:
    num_scenes, psnr_covisible, psnr_revealed, psnr_all (dB, pooled over all views),
    depth_abs_rel_covisible and covisible_fraction.
  """
  gen = np.asarray(generated)[:, 1:]
  if gen.shape[:4] != truth.rgb.shape[:4]:
    raise ValueError(f'generated novel views {gen.shape} do not match the truth '
                     f'{truth.rgb.shape}')
  covis = np.asarray(truth.covisible, bool)
  sq = np.sum((gen[..., :3].astype(np.float64) - truth.rgb)**2, axis=-1)
  d_gen = np.asarray(depth_lib.depth_from_zbuf(gen[..., 3], near, far), np.float64)
  true_depth = np.asarray(truth.depth, np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    rel = np.abs(d_gen - true_depth) / true_depth
  sq_covis, n_covis = sq[covis].sum(), 3.0 * covis.sum()
  sq_revealed, n_revealed = sq[~covis].sum(), 3.0 * (~covis).sum()
  return {
      'num_scenes': len(truth),
      'psnr_covisible': metrics.psnr(sq_covis, n_covis),
      'psnr_revealed': metrics.psnr(sq_revealed, n_revealed),
      'psnr_all': metrics.psnr(sq_covis + sq_revealed, n_covis + n_revealed),
      'depth_abs_rel_covisible': (float(rel[covis].sum() / covis.sum()) if covis.any()
                                  else float('nan')),
      'covisible_fraction': float(n_covis / (n_covis + n_revealed)),
  }
