"""The train step of any network role, its initial state and its initial parameters.

The step is pure and unjitted; jit_train_step jits it with the state's shardings and donates
the state. The role (ivd_jax.roles) decides what the network sees; the loss is the eps MSE of
docs/method.md §7 for every role.
"""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ivd_jax import checkpoint as ckpt_lib
from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax.diffusion import losses
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.models import unet as unet_lib
from ivd_jax.training import state as state_lib


def drop_labels(key: jax.Array, labels: jax.Array, p_uncond: float) -> jax.Array:
  """Each class label replaced by the null label -1 with probability p_uncond (docs/method.md §7).

  Training on both makes one network the conditional and the unconditional model that
  classifier-free guidance combines at sampling time.
  """
  drop = jax.random.uniform(key, labels.shape) < p_uncond
  return jnp.where(drop, -1, labels.astype(jnp.int32))


def make_train_step(model: unet_lib.UNet, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict
                    ) -> Callable[[state_lib.TrainState, dict[str, jax.Array]],
                                  tuple[state_lib.TrainState, dict[str, jax.Array]]]:
  """The (unjitted) step: eps loss (docs/method.md §7), AdamW, EMA; the role's condition inside.

  All randomness comes from fold_in(state.rng, state.step), so step s draws the same timesteps,
  noise, label drops and training pairs however the run was interrupted, resumed or sharded.
  """
  schedule = schedule_lib.schedule_from_config(config.diffusion)
  lr_fn = state_lib.learning_rate_schedule(config.optim)
  role = roles.role_of(config)
  num_classes = int(config.model.num_classes or 0)
  p_uncond = float(config.diffusion.p_uncond)

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    k_t, k_noise, k_drop, k_pair, k_hole, k_dropout = jax.random.split(rng, 6)
    x0 = batch['rgbd'].astype(jnp.float32)  # [B, H, W, 4] in [-1, 1]
    b = x0.shape[0]
    t = jax.random.randint(k_t, (b,), 0, schedule.num_steps)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    x_t = losses.q_sample(schedule, x0, t, noise)
    labels = drop_labels(k_drop, batch['label'], p_uncond) if num_classes else None
    condition = role.make_condition(x0, k_pair, config) if role.make_condition else None
    net_in = role.network_input(x_t, condition, k_hole)

    def loss_fn(params):
      eps = model.apply({'params': params}, net_in, t, labels, train=True,
                        rngs={'dropout': k_dropout})
      sq_err = jnp.square(eps.astype(jnp.float32) - noise)  # [B, H, W, 4]
      return jnp.mean(sq_err), sq_err

    (loss, sq_err), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state_lib.ema_update(state.ema_params, params,
                               state_lib.ema_decay_at(state.step, config.optim))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step leaves the weights untouched: the loop stops at its next check, and no
    # checkpoint can ever hold NaNs.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              ema_params=keep(ema, state.ema_params),
                              opt_state=keep(opt_state, state.opt_state))
    metrics = dict(loss=loss, grad_norm=grad_norm, lr=jnp.asarray(lr_fn(state.step), jnp.float32),
                   nonfinite=1.0 - finite.astype(jnp.float32))
    if role.metrics is not None:
      metrics.update(role.metrics(sq_err, condition))
    return new_state, metrics

  return train_step


def jit_train_step(model: unet_lib.UNet, tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                   state_shardings: Any) -> Callable[..., Any]:
  """make_train_step jitted as training runs it: the state sharded by the rule table, the batch
  over both mesh axes, and the state donated, so the new state reuses the old one's buffers and
  a step never holds two copies of parameters, EMA and optimizer moments."""
  batch = parallel.batch_sharding(mesh)
  step, rules = make_train_step(model, tx, config), parallel.activation_rules(mesh)

  @functools.wraps(step)
  def train_step(state, batch):
    with nn.logical_axis_rules(rules):  # read while the step is traced
      return step(state, batch)

  return jax.jit(train_step,
                 in_shardings=(state_shardings, {'rgbd': batch, 'label': batch}),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=(0,))


def _state_fn(model: unet_lib.UNet, tx: optax.GradientTransformation,
              config: ml_collections.ConfigDict) -> Callable[[Any], state_lib.TrainState]:
  res = config.model.image_size
  key = jax.random.PRNGKey(config.train.seed)
  init_key, state_key = jax.random.split(key)

  def create(p):
    if p is None:
      x = jnp.zeros((1, res, res, roles.role_of(config).in_channels), jnp.float32)
      labels = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
      p = model.init(init_key, x, jnp.zeros((1,), jnp.int32), labels)['params']
    return state_lib.create_train_state(p, tx, state_key)

  return create


def state_shapes(model: unet_lib.UNet, tx: optax.GradientTransformation,
                 config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                 ) -> tuple[state_lib.TrainState, Any]:
  """The fresh state's shapes (ShapeDtypeStructs) and shardings, computing nothing: what an
  ahead-of-time compile for another machine (benchmarks/fit.py) lowers the step with."""
  abstract = jax.eval_shape(_state_fn(model, tx, config), None)
  shardings = parallel.tree_shardings(
      mesh, abstract, config.mesh.get('fsdp_min_size', parallel.MIN_SHARDED_SIZE))
  return abstract, shardings


def init_state(model: unet_lib.UNet, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               params: Optional[Any] = None) -> tuple[state_lib.TrainState, Any]:
  """A sharded fresh state (random or given params) and the state's shardings."""
  create = _state_fn(model, tx, config)
  _, shardings = state_shapes(model, tx, config, mesh)
  if params is not None:
    params = jax.device_put(params, shardings.params)
  return jax.jit(create, out_shardings=shardings)(params), shardings


def params_from_init_from(config: ml_collections.ConfigDict, abstract_params: Any) -> Any:
  """Loads config.init_from (the role's `init_from` role, e.g. G_u for G_c) onto this network.

  A narrower first conv is widened with zero weights for the new input channels, so the new
  network starts out computing exactly the old one (docs/method.md §6).
  """
  params, source_config = ckpt_lib.load_params(config.init_from, ema=True)
  params = jax.device_get(params)  # host numpy: widened here, then placed on the mesh
  kernel = params['input_blocks_0_0']['kernel']
  want = abstract_params['input_blocks_0_0']['kernel'].shape[2]
  if kernel.shape[2] < want:
    params = unet_lib.widen_input(params, want)
  got = jax.tree.map(lambda x: tuple(x.shape), params)
  expected = jax.tree.map(lambda x: tuple(x.shape), abstract_params)
  if got != expected:
    src = source_config.get('model', {})
    role = roles.role_of(config)
    source = roles.get(role.init_from or role.name).title
    raise errors.ConfigError(
        'init_from', f'{config.init_from} holds a network of another shape (its model config: '
        f'{dict(src) if src else "unknown"})',
        f'initialise from a {source} trained with the same model section (channels, levels, '
        'classes)')
  return params
