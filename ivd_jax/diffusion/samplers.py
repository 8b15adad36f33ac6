"""DDPM and DDIM samplers, classifier-free guidance and the DDIM condition edits (docs/method.md
§7).

Samplers take `eps_fn(x [B, H, W, C], t [B] int) -> eps` and loop with lax.scan, so a jitted
sampler compiles once per shape and step count. Wrap them in jax.jit yourself, closing over the
schedule, e.g.

  sample = jax.jit(lambda params, x_T, key: ddim_sample(
      lambda x, t: model.apply({'params': params}, x, t), x_T, schedule=sched, steps=50, key=key))

Per-step coefficients are gathered from the float64 schedule and cast to float32 like the
reference; the arithmetic between them is float32, in the reference's order.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from ivd_jax.diffusion.schedule import Schedule, ddim_timesteps
from ivd_jax.errors import UserError

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
SampleOut = Union[jax.Array, Tuple[jax.Array, Dict[str, jax.Array]]]


def classifier_free_guidance(eps_cond: jax.Array, eps_uncond: jax.Array,
                             w: Union[float, jax.Array]) -> jax.Array:
  """(1 + w) eps(c) - w eps(null); w = 0 is the conditional model alone."""
  return (1.0 + w) * eps_cond - w * eps_uncond


def guided_eps_fn(net_fn: Callable[[jax.Array, jax.Array, Optional[jax.Array]], jax.Array],
                  labels: jax.Array, w: Union[float, jax.Array]) -> EpsFn:
  """eps_fn with classifier-free guidance from `net_fn(x, t, y)` (y = -1 is the null class).

  Both branches run as one batch of 2B with the same x (and so the same image condition).
  """
  def eps_fn(x: jax.Array, t: jax.Array) -> jax.Array:
    b = x.shape[0]
    eps = net_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                 jnp.concatenate([labels.astype(jnp.int32), jnp.full((b,), -1, jnp.int32)]))
    return classifier_free_guidance(eps[:b], eps[b:], w)
  return eps_fn


class ConditionEdits(NamedTuple):
  """Edits of the predicted x_0 inside DDIM for G_c (docs/method.md §7); arrays [B, H, W, c].

  rgb [.., 3] and depth [.., 1] are the warped condition in [-1, 1], mask_rgb / mask their
  validity masks, hull [.., 1] the lower bound on the depth of revealed content. Pass rgb=None
  to skip replace_rgb, depth=None to skip replace_depth and constrain_depth (the latter needs the
  former, as in the reference), hull=None to skip constrain_depth. The weights of replace_rgb,
  replace_depth and constrain_depth are the config's (configs/sampling.py:sample_section).
  """
  rgb: Optional[jax.Array]
  depth: Optional[jax.Array]
  mask_rgb: Optional[jax.Array]
  mask: Optional[jax.Array]
  hull: Optional[jax.Array]
  rgb_weight: float
  depth_weight: float
  hull_weight: float


def apply_edits(x0: jax.Array, edits: ConditionEdits, *, last_step: Any) -> jax.Array:
  """Applies replace_rgb (not on the last step), replace_depth and constrain_depth to x0."""
  rgb, depth = x0[..., :3], x0[..., 3:]
  if edits.rgb is not None:
    w, m = edits.rgb_weight, edits.mask_rgb
    replaced = (w * edits.rgb + (1 - w) * rgb) * m + rgb * (1 - m)
    rgb = jnp.where(last_step, rgb, replaced)
  if edits.depth is not None:
    w, m = edits.depth_weight, edits.mask
    depth = (w * edits.depth + (1 - w) * depth) * m + depth * (1 - m)
    if edits.hull is not None:
      cw = edits.hull_weight
      depth = depth * m + (cw * jnp.maximum(depth, edits.hull) + (1 - cw) * depth) * (1 - m)
  return jnp.concatenate([rgb, depth], axis=-1)


def _step_noise(key: Optional[jax.Array], noise: Optional[jax.Array], steps: int,
                x_T: jax.Array, needed: bool) -> Optional[jax.Array]:
  """Validates `noise` [steps, *x_T.shape]; None means draw it from key inside the loop."""
  if noise is not None:
    if noise.shape != (steps,) + x_T.shape:
      raise UserError(f'noise has shape {noise.shape}; expected {(steps,) + x_T.shape} '
                      '(one draw per step). Fix: pass per-step noise or a key instead.')
    return noise
  if needed and key is None:
    raise UserError('this sampler draws noise but neither key nor noise was given. '
                    'Fix: pass key=jax.random.PRNGKey(...) or noise=[steps, *x_T.shape].')
  return None


def _run(step_fn, x_T: jax.Array, tables: Dict[str, np.ndarray], noise: Optional[jax.Array],
         key: Optional[jax.Array], return_trajectory: bool) -> SampleOut:
  """Scans step_fn(x, coefs, noise_i) -> (x, pred_x0) over the per-step tables."""
  steps = len(next(iter(tables.values())))
  xs = {k: jnp.asarray(v) for k, v in tables.items()}
  xs['i'] = jnp.arange(steps)
  if noise is not None:
    xs['noise'] = noise

  def body(x, s):
    if 'noise' in s:
      z = s['noise']
    elif key is not None:
      z = jax.random.normal(jax.random.fold_in(key, s['i']), x.shape, x.dtype)
    else:
      z = jnp.zeros_like(x)
    x_next, pred_x0 = step_fn(x, s, z)
    return x_next, ((x_next, pred_x0) if return_trajectory else None)

  x, ys = jax.lax.scan(body, x_T, xs)
  if not return_trajectory:
    return x
  xs_traj, pred_x0 = ys
  return x, {'x': jnp.concatenate([x_T[None], xs_traj]), 'pred_x0': pred_x0}


def _batch_t(t: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.full((x.shape[0],), t, jnp.int32)


def ddpm_sample(eps_fn: EpsFn, x_T: jax.Array, *, schedule: Schedule,
                key: Optional[jax.Array] = None, noise: Optional[jax.Array] = None,
                clip_denoised: bool = False, return_trajectory: bool = False) -> SampleOut:
  """Ancestral sampling with the posterior mean and the fixed-small variance, T steps.

  x_{t-1} = coef1_t x0_hat + coef2_t x_t + [t > 0] exp(0.5 log_var_clipped_t) z_t.

  Args:
    eps_fn: (x, t [B] int) -> eps.
    x_T: [B, ...] start noise.
    schedule: The noise schedule (T steps).
    key: Draws z_t (folded with the step index) when `noise` is None.
    noise: Optional [T, *x_T.shape] per-step noise (step i handles network timestep T-1-i).
    clip_denoised: Clip x0_hat to [-1, 1] (the reference's default is False).
    return_trajectory: Also return {'x': [T + 1, ...] from x_T, 'pred_x0': [T, ...]}.

  Returns:
    x_0, or (x_0, trajectory).
  """
  steps = schedule.num_steps
  noise = _step_noise(key, noise, steps, x_T, needed=True)
  t = np.arange(steps - 1, -1, -1)
  f32 = lambda a: np.asarray(a[t], np.float32)
  tables = {'t': t.astype(np.int32), 'recip': f32(schedule.sqrt_recip_alphas_cumprod),
            'recipm1': f32(schedule.sqrt_recipm1_alphas_cumprod),
            'coef1': f32(schedule.posterior_mean_coef1),
            'coef2': f32(schedule.posterior_mean_coef2),
            'log_var': f32(schedule.posterior_log_variance_clipped)}

  def step(x, s, z):
    eps = eps_fn(x, _batch_t(s['t'], x)).astype(jnp.float32)
    pred_x0 = s['recip'] * x - s['recipm1'] * eps
    if clip_denoised:
      pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    mean = s['coef1'] * pred_x0 + s['coef2'] * x
    nonzero = (s['t'] != 0).astype(jnp.float32)
    return mean + nonzero * jnp.exp(0.5 * s['log_var']) * z, pred_x0

  return _run(step, x_T, tables, noise, key, return_trajectory)


def ddim_sample(eps_fn: EpsFn, x_T: jax.Array, *, schedule: Schedule, steps: int,
                eta: float = 0.0, key: Optional[jax.Array] = None,
                noise: Optional[jax.Array] = None, edits: Optional[ConditionEdits] = None,
                clip_denoised: bool = False, return_trajectory: bool = False) -> SampleOut:
  """DDIM with the reference's step spacing and optional condition edits.

  Step i goes from actual step t = jump * (steps - i) to t_prev = t - jump (jump = T // steps);
  the network sees t - 1 (50 steps: 999, 979, ..., 19). x0_hat is edited, turned back into eps,
  and x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + [t_prev > 0]
  sigma z with sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev).

  Args:
    eps_fn: (x, t [B] int) -> eps.
    x_T: [B, H, W, C] start noise.
    schedule: The noise schedule.
    steps: Number of DDIM steps.
    eta: DDIM eta (0 = deterministic).
    key: Draws z (folded with the step index) when eta > 0 and `noise` is None.
    noise: Optional [steps, *x_T.shape] per-step noise.
    edits: Optional ConditionEdits applied to x0_hat (G_c).
    clip_denoised: Clip x0_hat to [-1, 1] before the edits (reference default False).
    return_trajectory: Also return {'x': [steps + 1, ...] from x_T, 'pred_x0': [steps, ...]}
      (pred_x0 after the edits).

  Returns:
    x_0, or (x_0, trajectory).
  """
  t_net = ddim_timesteps(schedule, steps)
  t_prev = t_net + 1 - schedule.num_steps // steps
  noise = _step_noise(key, noise, steps, x_T, needed=eta > 0)
  f32 = lambda a, idx: np.asarray(a[idx], np.float32)
  abar = f32(schedule.alphas_cumprod, t_net)
  abar_prev = f32(schedule.alphas_cumprod_prev, t_prev)
  # float32 arithmetic on the gathered float32 values, as the reference does on device.
  sigma = (np.float32(eta) * np.sqrt((1 - abar_prev) / (1 - abar)) *
           np.sqrt(1 - abar / abar_prev)).astype(np.float32)
  tables = {'t': t_net, 'last': (t_prev == 0),
            'recip': f32(schedule.sqrt_recip_alphas_cumprod, t_net),
            'recipm1': f32(schedule.sqrt_recipm1_alphas_cumprod, t_net),
            'sqrt_abar_prev': np.sqrt(abar_prev),
            'dir_coef': np.sqrt(1 - abar_prev - sigma ** 2).astype(np.float32), 'sigma': sigma}

  def step(x, s, z):
    eps = eps_fn(x, _batch_t(s['t'], x)).astype(jnp.float32)
    pred_x0 = s['recip'] * x - s['recipm1'] * eps
    if clip_denoised:
      pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    if edits is not None:
      pred_x0 = apply_edits(pred_x0, edits, last_step=s['last'])
    eps = (s['recip'] * x - pred_x0) / s['recipm1']
    mean = s['sqrt_abar_prev'] * pred_x0 + s['dir_coef'] * eps
    nonzero = 1.0 - s['last'].astype(jnp.float32)
    return mean + nonzero * s['sigma'] * z, pred_x0

  return _run(step, x_T, tables, noise, key, return_trajectory)
