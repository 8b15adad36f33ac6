"""Per-pixel error figures shared by the evaluation, the quickstart and the warp demo."""
import math


def psnr(sq_err_sum: float, count: float) -> float:
  """PSNR in dB of values in [0, 1] from a pooled squared error: 10 log10(1 / MSE).

  Pooling the squared error over many images (or pixel subsets) first and converting once gives
  the PSNR of the whole set, not a mean of per-image PSNRs.

  Args:
    sq_err_sum: sum of squared differences over the compared values (every channel counted).
    count: the number of values summed (pixels x channels).

  Returns:
    NaN when nothing was compared (count <= 0), inf for identical values, else the PSNR.
  """
  if count <= 0:
    return float('nan')
  mse = float(sq_err_sum) / float(count)
  return float('inf') if mse == 0 else float(10.0 * math.log10(1.0 / mse))
