"""Diffusion math and samplers against hand-computed values (docs/method.md §7)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ivd_jax import roles
from ivd_jax.diffusion import conditioning, losses, samplers, schedule as schedule_lib
from ivd_jax.errors import UserError


@pytest.fixture(scope='module')
def sched():
  return schedule_lib.linear_schedule()


def _affine_eps(x, t):
  del t
  return 0.3 * x + 0.1


def test_linear_schedule_values(sched):
  betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
  abar = []
  prod = 1.0
  for b in betas:
    prod *= 1.0 - b
    abar.append(prod)
  for name in ('betas', 'alphas_cumprod', 'posterior_variance', 'posterior_mean_coef2'):
    assert getattr(sched, name).dtype == np.float64
  np.testing.assert_allclose(sched.betas, betas, rtol=1e-14)
  np.testing.assert_allclose(sched.alphas_cumprod, abar, rtol=1e-12)
  assert sched.alphas_cumprod[-1] == pytest.approx(4.0358e-5, rel=1e-4)
  assert sched.alphas_cumprod_prev[0] == 1.0
  assert sched.alphas_cumprod_prev[500] == sched.alphas_cumprod[499]
  t = 500
  assert sched.sqrt_recip_alphas_cumprod[t] == pytest.approx(1 / math.sqrt(abar[t]), rel=1e-12)
  assert sched.sqrt_recipm1_alphas_cumprod[t] == pytest.approx(
      math.sqrt(1 / abar[t] - 1), rel=1e-12)
  var1 = betas[1] * (1 - abar[0]) / (1 - abar[1])
  assert sched.posterior_variance[0] == 0.0
  assert sched.posterior_variance[1] == pytest.approx(var1, rel=1e-12)
  # Clipped log variance: index 0 takes the value of index 1.
  assert sched.posterior_log_variance_clipped[0] == pytest.approx(math.log(var1), rel=1e-12)
  assert sched.posterior_mean_coef1[t] == pytest.approx(
      betas[t] * math.sqrt(abar[t - 1]) / (1 - abar[t]), rel=1e-12)
  assert sched.posterior_mean_coef2[t] == pytest.approx(
      (1 - abar[t - 1]) * math.sqrt(1 - betas[t]) / (1 - abar[t]), rel=1e-12)


def test_ddim_timesteps(sched):
  np.testing.assert_array_equal(schedule_lib.ddim_timesteps(sched, 50), np.arange(999, 0, -20))
  np.testing.assert_array_equal(schedule_lib.ddim_timesteps(sched, 4), [999, 749, 499, 249])
  seen = []
  x = jnp.zeros((1, 2, 2, 4))

  def eps_fn(x, t):
    jax.debug.callback(lambda v: seen.append(int(v[0])), t, ordered=True)
    return jnp.zeros_like(x)

  jax.block_until_ready(samplers.ddim_sample(eps_fn, x, schedule=sched, steps=50))
  jax.effects_barrier()
  assert seen == list(range(999, 0, -20))
  with pytest.raises(UserError, match='steps'):
    schedule_lib.ddim_timesteps(sched, 0)


def test_q_sample(sched):
  x0 = jnp.full((2, 2, 2, 4), 0.5)
  noise = jnp.ones_like(x0)
  t = jnp.array([0, 999])
  xt = losses.q_sample(sched, x0, t, noise)
  np.testing.assert_allclose(xt[0], 0.5 * math.sqrt(1 - 1e-4) + math.sqrt(1e-4), rtol=1e-6)
  np.testing.assert_allclose(
      xt[1], 0.5 * math.sqrt(sched.alphas_cumprod[999]) + math.sqrt(1 - sched.alphas_cumprod[999]),
      rtol=1e-6)


def test_ddpm_fixed_small_variance_by_hand():
  sched = schedule_lib.linear_schedule(num_steps=4, beta_start=0.1, beta_end=0.4)
  x_T = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 4))
  noise = jax.random.normal(jax.random.PRNGKey(2), (4, 2, 3, 3, 4))
  out, traj = samplers.ddpm_sample(_affine_eps, x_T, schedule=sched, noise=noise,
                                   return_trajectory=True)
  betas = np.linspace(0.1, 0.4, 4)
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  x = np.asarray(x_T, np.float64)
  for i, t in enumerate(range(3, -1, -1)):
    eps = 0.3 * x + 0.1
    x0 = x / math.sqrt(abar[t]) - math.sqrt(1 / abar[t] - 1) * eps
    mean = (betas[t] * math.sqrt(abar_prev[t]) / (1 - abar[t]) * x0 +
            (1 - abar_prev[t]) * math.sqrt(1 - betas[t]) / (1 - abar[t]) * x)
    var = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])
    if t == 0:
      var = betas[1] * (1 - abar_prev[1]) / (1 - abar[1])  # Clipped, but unused at t = 0.
    np.testing.assert_allclose(traj['pred_x0'][i], x0, rtol=1e-5, atol=1e-5)
    x = mean + (t > 0) * math.sqrt(var) * np.asarray(noise[i], np.float64)
    np.testing.assert_allclose(traj['x'][i + 1], x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-5)
  assert traj['x'].shape == (5, 2, 3, 3, 4)
  # Without given noise the key decides it, reproducibly.
  a = samplers.ddpm_sample(_affine_eps, x_T, schedule=sched, key=jax.random.PRNGKey(3))
  b = samplers.ddpm_sample(_affine_eps, x_T, schedule=sched, key=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(a, b)
  with pytest.raises(UserError, match='noise'):
    samplers.ddpm_sample(_affine_eps, x_T, schedule=sched)


def test_ddim_eta_by_hand(sched):
  x_T = jax.random.normal(jax.random.PRNGKey(4), (2, 3, 3, 4))
  noise = jax.random.normal(jax.random.PRNGKey(5), (2, 2, 3, 3, 4))
  out = samplers.ddim_sample(_affine_eps, x_T, schedule=sched, steps=2, eta=0.5, noise=noise)
  abar = sched.alphas_cumprod
  x = np.asarray(x_T, np.float64)
  for i, (t, t_prev) in enumerate([(1000, 500), (500, 0)]):
    a = abar[t - 1]
    a_prev = abar[t_prev - 1] if t_prev else 1.0
    eps = 0.3 * x + 0.1
    x0 = x / math.sqrt(a) - math.sqrt(1 / a - 1) * eps
    sigma = 0.5 * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
    x = (math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma ** 2) * eps +
         (t_prev > 0) * sigma * np.asarray(noise[i], np.float64))
  np.testing.assert_allclose(out, x, rtol=2e-5, atol=2e-5)


def test_classifier_free_guidance():
  c, u = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
  np.testing.assert_allclose(samplers.classifier_free_guidance(c, u, 3.0), [2.5, 11.0])
  np.testing.assert_allclose(samplers.classifier_free_guidance(c, u, 0.0), c)

  def net_fn(x, t, y):  # eps(c) = x + y + 1, eps(null) = x.
    del t
    return x + jnp.where(y >= 0, y + 1.0, 0.0)[:, None]

  eps_fn = samplers.guided_eps_fn(net_fn, jnp.array([2, 5]), 0.5)
  x = jnp.array([[1.0], [1.0]])
  np.testing.assert_allclose(eps_fn(x, jnp.array([7, 7])), [[1 + 1.5 * 3], [1 + 1.5 * 6]])


def _edits(b=1, hull=True):
  shape = (b, 1, 2, 1)
  mask = jnp.array([1.0, 0.0]).reshape(shape)
  return samplers.ConditionEdits(
      rgb=jnp.full((b, 1, 2, 3), 0.8), depth=jnp.full(shape, -0.5), mask_rgb=mask, mask=mask,
      hull=jnp.full(shape, 0.6) if hull else None, rgb_weight=0.1, depth_weight=0.2,
      hull_weight=0.5)


def test_condition_edits_by_hand():
  x0 = jnp.concatenate([jnp.full((1, 1, 2, 3), 0.2), jnp.array([0.4, 0.3]).reshape(1, 1, 2, 1)],
                       axis=-1)
  out = samplers.apply_edits(x0, _edits(), last_step=False)
  # Inside the masks: 0.1 * 0.8 + 0.9 * 0.2 = 0.26; depth 0.2 * -0.5 + 0.8 * 0.4 = 0.22.
  np.testing.assert_allclose(out[0, 0, 0], [0.26, 0.26, 0.26, 0.22], rtol=1e-6)
  # Outside: colour kept; depth pulled half-way to the hull: 0.5 * 0.6 + 0.5 * 0.3 = 0.45.
  np.testing.assert_allclose(out[0, 0, 1], [0.2, 0.2, 0.2, 0.45], rtol=1e-6)
  last = samplers.apply_edits(x0, _edits(), last_step=True)
  np.testing.assert_allclose(last[0, 0, 0], [0.2, 0.2, 0.2, 0.22], rtol=1e-6)
  np.testing.assert_allclose(last[0, 0, 1], [0.2, 0.2, 0.2, 0.45], rtol=1e-6)
  no_hull = samplers.apply_edits(x0, _edits(hull=False), last_step=False)
  np.testing.assert_allclose(no_hull[0, 0, 1, 3], 0.3, rtol=1e-6)


def test_ddim_edits_skip_rgb_on_last_step(sched):
  x_T = jax.random.normal(jax.random.PRNGKey(6), (1, 1, 2, 4))
  edits = _edits()
  _, plain = samplers.ddim_sample(_affine_eps, x_T, schedule=sched, steps=2,
                                  return_trajectory=True)
  _, traj = samplers.ddim_sample(_affine_eps, x_T, schedule=sched, steps=2, edits=edits,
                                 return_trajectory=True)
  # Step 0 starts from the same x_T: its edited x0 is apply_edits of the plain one.
  np.testing.assert_allclose(traj['pred_x0'][0],
                             samplers.apply_edits(plain['pred_x0'][0], edits, last_step=False),
                             rtol=1e-6)
  # The last step: recompute the raw x0 from the x it started from.
  x = np.asarray(traj['x'][1], np.float64)
  a = sched.alphas_cumprod[499]
  raw = x / math.sqrt(a) - math.sqrt(1 / a - 1) * (0.3 * x + 0.1)
  np.testing.assert_allclose(traj['pred_x0'][1, ..., :3], raw[..., :3], rtol=1e-4, atol=1e-5)
  edited = samplers.apply_edits(jnp.asarray(raw, jnp.float32), edits, last_step=True)
  np.testing.assert_allclose(traj['pred_x0'][1], edited, rtol=1e-4, atol=1e-5)
  # eta = 0 and t_prev = 0: the sample is the edited x0.
  np.testing.assert_allclose(traj['x'][2], traj['pred_x0'][1], rtol=1e-5, atol=1e-6)


def test_conditional_input_order_and_fresh_noise():
  b, h, w = 2, 4, 4
  rng = np.random.default_rng(7)
  x_t = rng.standard_normal((b, h, w, 4)).astype(np.float32)
  y_rgb = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
  y_depth = rng.uniform(-1, 1, (b, h, w, 1)).astype(np.float32)
  mask = (rng.uniform(size=(b, h, w, 1)) > 0.3).astype(np.float32)
  mask_rgb = mask * (rng.uniform(size=(b, h, w, 1)) > 0.3)
  key = jax.random.PRNGKey(8)
  inp = np.asarray(
      jax.jit(conditioning.conditional_input)(x_t, y_rgb, y_depth, mask_rgb, mask, key=key))
  assert inp.shape == (b, h, w, 10)
  np.testing.assert_array_equal(inp[..., :4], x_t)
  np.testing.assert_array_equal(inp[..., 4:5], mask_rgb)
  np.testing.assert_array_equal(inp[..., 9:10], mask)
  k_rgb, k_depth = jax.random.split(key)
  n_rgb = np.asarray(jax.random.normal(k_rgb, (b, h, w, 3)))
  n_depth = np.asarray(jax.random.normal(k_depth, (b, h, w, 1)))
  np.testing.assert_allclose(inp[..., 5:8], np.where(mask_rgb > 0, y_rgb, n_rgb), atol=1e-7)
  np.testing.assert_allclose(inp[..., 8:9], np.where(mask > 0, y_depth, n_depth), atol=1e-7)
  # The eps_fn wrapper draws new hole noise at every step, the same known pixels.
  condition = dict(y_rgb=y_rgb, y_depth=y_depth, mask_rgb=mask_rgb, mask=mask)
  eps_fn = roles.COND.eps_fn(lambda v, t: v, condition, key)
  eps_fn = jax.jit(eps_fn)
  first = np.asarray(eps_fn(x_t, np.array([999, 999])))
  second = np.asarray(eps_fn(x_t, np.array([979, 979])))
  holes = mask_rgb[..., 0] == 0
  assert np.all(first[..., 5][holes] != second[..., 5][holes])
  np.testing.assert_array_equal(first[..., 5][~holes], second[..., 5][~holes])
  with pytest.raises(UserError, match='y_rgb'):
    conditioning.conditional_input(x_t, y_rgb[..., :2], y_depth, mask_rgb, mask, key=key)


def _conv_eps_model(key):
  """A small convolutional eps model with a timestep embedding (cheap to compile)."""
  k1, k2 = jax.random.split(key)
  params = {'w': 0.3 * jax.random.normal(k1, (3, 3, 4, 4)), 'e': 0.1 * jax.random.normal(k2, (4,))}

  def apply(p, x, t):
    h = jax.lax.conv_general_dilated(x, p['w'], (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.tanh(h + jnp.cos(t.astype(jnp.float32) / 100)[:, None, None, None] * p['e'])
  return params, apply


def test_sharded_sampling_matches_single_device(sched):
  params, apply = _conv_eps_model(jax.random.PRNGKey(10))
  x_T = jax.random.normal(jax.random.PRNGKey(9), (8, 8, 8, 4))
  y_rgb = jnp.tanh(x_T[..., :3])
  y_depth = jnp.tanh(x_T[..., 3:])
  mask = (x_T[..., :1] > 0).astype(jnp.float32)
  edits = samplers.ConditionEdits(y_rgb, y_depth, mask, mask, hull=y_depth + 0.1, rgb_weight=0.1,
                                  depth_weight=0.2, hull_weight=0.5)

  def sample(params, x_T, key):
    # G_c-style: fresh hole noise per step (the 10-channel input is reduced to 4 channels by a
    # fixed projection so the same small model applies), edits, stochastic DDIM.
    condition = dict(y_rgb=y_rgb, y_depth=y_depth, mask_rgb=mask, mask=mask)
    cond_eps = roles.COND.eps_fn(lambda v, t: apply(params, v[..., :4] + v[..., 4:8], t),
                                 condition, key)
    return samplers.ddim_sample(cond_eps, x_T, schedule=sched, steps=3, eta=1.0, key=key,
                                edits=edits)

  key = jax.random.PRNGKey(11)
  single = jax.jit(sample)(params, x_T, key)
  mesh = jax.make_mesh((8, 1), ('data', 'fsdp'), axis_types=(AxisType.Auto,) * 2)
  batch = NamedSharding(mesh, P(('data', 'fsdp')))
  replicated = NamedSharding(mesh, P())
  sharded_fn = jax.jit(sample, in_shardings=(replicated, batch, replicated), out_shardings=batch)
  sharded = sharded_fn(params, jax.device_put(x_T, batch), key)
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(single) - np.asarray(x_T)).max() > 0.1
