"""Training state {step, params, ema_params, opt_state, rng}, the optimizer and the EMA update."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes; a plain pytree that orbax saves as a dict.

  Attributes:
    step: int32 scalar, number of updates applied so far.
    params: float32 master parameters.
    ema_params: exponential moving average of params, same structure and sharding.
    opt_state: optax state of the AdamW chain.
    rng: base PRNG key (uint32[2]); each step folds its step number in, so the randomness of
      step s never depends on how the run was interrupted and resumed.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array

  def to_dict(self) -> dict[str, Any]:
    return dict(step=self.step, params=self.params, ema_params=self.ema_params,
                opt_state=self.opt_state, rng=self.rng)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'TrainState':
    return cls(**{k: d[k] for k in ('step', 'params', 'ema_params', 'opt_state', 'rng')})


def learning_rate_schedule(optim_config: Any) -> optax.Schedule:
  """Linear warm-up from 0 to optim.lr over optim.warmup_steps, then constant or cosine decay."""
  lr = float(optim_config.lr)
  warmup = int(optim_config.warmup_steps)
  kind = optim_config.get('schedule', 'constant')
  if kind == 'constant':
    after = optax.constant_schedule(lr)
  elif kind == 'cosine':
    after = optax.cosine_decay_schedule(lr, max(1, int(optim_config.decay_steps) - warmup))
  else:
    raise ValueError(f'unknown optim.schedule {kind!r}')
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(optim_config: Any) -> optax.GradientTransformation:
  """AdamW (PyTorch semantics: decoupled weight decay on every parameter), optional clipping."""
  adamw = optax.adamw(learning_rate_schedule(optim_config), b1=float(optim_config.b1),
                      b2=float(optim_config.b2), eps=float(optim_config.eps),
                      weight_decay=float(optim_config.weight_decay))
  clip = float(optim_config.get('grad_clip', 0.0) or 0.0)
  if clip > 0:
    return optax.chain(optax.clip_by_global_norm(clip), adamw)
  return adamw


def ema_decay_at(step: jax.Array, optim_config: Any) -> jax.Array:
  """EMA decay for the update that produces step `step` + 1.

  The reference uses a fixed 0.9999. optim.ema_warmup switches on the usual
  min(decay, (1 + step) / (10 + step)) ramp so that short runs (the tiny preset) get a useful
  average instead of one dominated by the random initialisation.
  """
  decay = jnp.float32(optim_config.ema_decay)
  if optim_config.get('ema_warmup', False):
    s = step.astype(jnp.float32)
    decay = jnp.minimum(decay, (1.0 + s) / (10.0 + s))
  return decay


def ema_update(ema_params: Any, params: Any, decay: jax.Array) -> Any:
  return jax.tree.map(lambda e, p: e * decay + p * (1.0 - decay), ema_params, params)


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """A fresh state at step 0; EMA starts equal to the parameters."""
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    rng=jnp.asarray(rng, jnp.uint32))


def param_count(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
