"""The diffusion noise schedule (docs/method.md §7), float64 numpy like the reference.

Coefficients are computed once in float64. On device they are gathered as float32 (the reference
gathers from float64 arrays and casts to float32; casting first and gathering is identical).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ivd_jax.errors import UserError


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """Per-timestep coefficients, each a float64 numpy array [num_steps].

  Index t is the network timestep (0..num_steps-1); t = 0 is one noising step from the data.
  eq=False makes a Schedule hashable by identity, so it can be a static jit argument.
  """
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  posterior_variance: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray
  posterior_mean_coef2: np.ndarray

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])


def schedule_from_betas(betas: np.ndarray) -> Schedule:
  """All derived coefficients of a beta schedule, in float64."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or not np.all((betas > 0) & (betas <= 1)):
    raise UserError('betas must be a 1-D array in (0, 1]. Fix: check the schedule parameters.')
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  # The variance at t = 0 is 0; its log is clipped to the value at t = 1.
  posterior_log_variance_clipped = np.log(
      np.append(posterior_variance[1], posterior_variance[1:]))
  return Schedule(
      betas=betas,
      alphas_cumprod=alphas_cumprod,
      alphas_cumprod_prev=alphas_cumprod_prev,
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=posterior_log_variance_clipped,
      posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
      posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
  )


def linear_schedule(num_steps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> Schedule:
  """Linear betas from beta_start to beta_end (inclusive) over num_steps, in float64."""
  if num_steps < 2:
    raise UserError(f'num_steps={num_steps} is too small. Fix: use e.g. 1000.')
  if not 0 < beta_start <= beta_end < 1:
    raise UserError(f'need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}. '
                    'Fix: use 1e-4 and 0.02.')
  return schedule_from_betas(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def schedule_from_config(diffusion: Any) -> Schedule:
  """The schedule of a config's `diffusion` section (num_steps, beta_start, beta_end)."""
  return linear_schedule(int(diffusion['num_steps']), float(diffusion['beta_start']),
                         float(diffusion['beta_end']))


def gather(table: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
  """table[t] as float32, shaped [B, 1, ..., 1] to broadcast against an ndim-D batch."""
  values = jnp.asarray(np.asarray(table, np.float32))[t]
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def ddim_timesteps(schedule: Schedule, steps: int) -> np.ndarray:
  """The network timesteps the DDIM sampler visits, in order (int32 [steps]).

  Like the reference: jump = T // steps; the sampler steps t = jump * steps, ..., jump (actual
  steps, t = 1 is one step from the data) to t - jump, and the network sees t - 1. For T = 1000
  and 50 steps: 999, 979, ..., 19.
  """
  if not 1 <= steps <= schedule.num_steps:
    raise UserError(f'DDIM steps={steps} must be in [1, {schedule.num_steps}]. Fix: use e.g. 50.')
  jump = schedule.num_steps // steps
  return (jump * np.arange(steps, 0, -1) - 1).astype(np.int32)
