"""Error of super-resolved views against the true high-resolution views.

Colour PSNR (RGB in [0, 1], pooled over every pixel of every view), and depth as the mean
absolute z-buffer error (the encoding the networks see) and the abs-rel error of linear depth.
The same figures of the low-resolution views upsampled bilinearly are the baseline an SR
network has to beat (benchmarks/sr.py, tests/test_sr.py).
"""
import numpy as np

from ivd_jax.evaluation import metrics
from ivd_jax.geometry import depth as depth_lib


def sr_error(predicted: np.ndarray, truth: np.ndarray, *, near: float,
             far: float) -> dict[str, float]:
  """Error figures of views [..., H, W, 4] in [0, 1] (z-buffer depth of `near` / `far`).

  Returns:
    psnr (dB), zbuf_mae, depth_abs_rel and num_views.
  """
  pred = np.asarray(predicted, np.float64)
  true = np.asarray(truth, np.float64)
  if pred.shape != true.shape:
    raise ValueError(f'predicted views {pred.shape} do not match the truth {true.shape}')
  sq = np.sum((np.clip(pred[..., :3], 0.0, 1.0) - true[..., :3])**2)
  d_pred = np.asarray(depth_lib.depth_from_zbuf(pred[..., 3], near, far), np.float64)
  d_true = np.asarray(depth_lib.depth_from_zbuf(true[..., 3], near, far), np.float64)
  return {
      'psnr': metrics.psnr(sq, true[..., :3].size),
      'zbuf_mae': float(np.mean(np.abs(np.clip(pred[..., 3], 0.0, 1.0) - true[..., 3]))),
      'depth_abs_rel': float(np.mean(np.abs(d_pred - d_true) / d_true)),
      'num_views': int(np.prod(true.shape[:-3])),
  }
