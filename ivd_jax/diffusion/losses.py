"""Forward process and the epsilon-prediction loss (METHOD 7)."""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ivd_jax.diffusion.schedule import Schedule, gather

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for network timesteps t [B]."""
  return (gather(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0 +
          gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def eps_loss(eps_fn: EpsFn, x0: jax.Array, *, schedule: Schedule, key: jax.Array,
             t: Optional[jax.Array] = None, noise: Optional[jax.Array] = None) -> jax.Array:
  """Mean squared error between the true and predicted noise, over all elements.

  Args:
    eps_fn: (x_t [B, ...], t [B] int) -> predicted noise; closes over params, labels and (for
      G_c) the image condition.
    x0: [B, ...] clean data in [-1, 1].
    schedule: The noise schedule.
    key: Draws t ~ U{0, ..., T-1} and the noise where they are not given.
    t: Optional [B] int network timesteps.
    noise: Optional [B, ...] standard normal noise.

  Returns:
    The scalar float32 loss.
  """
  t_key, n_key = jax.random.split(key)
  if t is None:
    t = jax.random.randint(t_key, x0.shape[:1], 0, schedule.num_steps)
  if noise is None:
    noise = jax.random.normal(n_key, x0.shape, jnp.float32)
  pred = eps_fn(q_sample(schedule, x0, t, noise), t)
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - noise))
