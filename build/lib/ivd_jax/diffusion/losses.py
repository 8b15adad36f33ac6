"""The forward process (docs/method.md §7); training/step.py builds the epsilon loss on it."""
from __future__ import annotations

import jax

from ivd_jax.diffusion.schedule import Schedule, gather


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for network timesteps t [B]."""
  return (gather(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0 +
          gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)

