"""Training G_u (config.model.in_channels = 4) and G_c (10): train_and_evaluate(config, workdir).

  python -m ivd_jax.main --config=configs/uncond.py[:preset] --workdir=DIR

Reads top to bottom: setup, mesh, input, model and optimizer, sharding, step, checkpoint, loop.
Workdir layout:
  DIR/config.json      the resolved configuration of the run
  DIR/checkpoints/     orbax checkpoints (state, input iterator state, config)
  DIR/tensorboard/     TensorBoard event files (tensorboardX, no TensorFlow)
  DIR/metrics.jsonl    one JSON object per log step: step, loss, grad_norm, lr, steps_per_sec,
                       examples_per_sec (+ loss_visible / loss_holes for G_c)
  DIR/samples/         preview grids (PNG), RGB and colourised depth; G_c beside its condition
"""
import logging as std_logging
import os
import signal
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from etils import epath

from ivd_jax import errors
from ivd_jax.data import pairs as pairs_lib
from ivd_jax.diffusion import conditioning
from ivd_jax.diffusion import losses
from ivd_jax.diffusion import samplers
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.models import unet as unet_lib
from ivd_jax.training import checkpoint as ckpt_lib
from ivd_jax.training import sharding as shard_lib
from ivd_jax.training import state as state_lib
from ivd_jax.training import train_logging

UNCOND_CHANNELS, COND_CHANNELS = 4, 10


class NonFiniteError(errors.UserError):
  """The loss or gradient became NaN/inf; the run stopped before saving that state."""


# =============================================================================================
# Setup: configuration checks (before anything compiles) and the workdir.
# =============================================================================================
class _QuietLibraries(std_logging.Filter):
  """Drops INFO records of orbax (a dozen lines per save) so the run's own log stays readable."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def _quiet_library_logs() -> None:
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the prepared dataset is: config.data.dir, default WORKDIR/data."""
  return config.data.dir or os.path.join(workdir, 'data')


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int,
                    process_count: int = 1) -> None:
  """Raises ConfigError naming the field and the fix for every invalid setting.

  Checks what ml_collections cannot: the resolution the UNet takes, the batch against the mesh
  and the processes, channel counts, schedule and interval ranges, init_from.
  """
  m, d, t = config.model, config.data, config.train
  if m.image_size != d.resolution:
    raise errors.ConfigError(
        'model.image_size', f'{m.image_size} differs from data.resolution {d.resolution}',
        f'set both to the same size, e.g. --config.model.image_size={d.resolution}')
  factor = 2**(len(m.channel_mult) - 1)
  if m.image_size % factor:
    raise errors.ConfigError(
        'data.resolution', f'{m.image_size} px cannot pass the UNet\'s {len(m.channel_mult) - 1}'
        f' down-sampling levels (channel_mult={tuple(m.channel_mult)})',
        f'use a resolution divisible by {factor}, e.g. {max(factor, m.image_size // factor * factor)}')
  sizes = [m.image_size // 2**i for i in range(len(m.channel_mult))]
  bad = [r for r in m.attention_resolutions if r not in sizes]
  if bad:
    raise errors.ConfigError(
        'model.attention_resolutions', f'{bad} are not feature-map sizes of this UNet ({sizes})',
        'list feature-map sizes (image_size / 2^level) where attention should run')
  if m.in_channels not in (UNCOND_CHANNELS, COND_CHANNELS):
    raise errors.ConfigError('model.in_channels', f'{m.in_channels} is neither G_u nor G_c',
                             'use 4 (G_u, configs/uncond.py) or 10 (G_c, configs/cond.py)')
  if m.out_channels != 4:
    raise errors.ConfigError('model.out_channels', f'{m.out_channels} != 4',
                             'the networks predict RGBD epsilon: use 4')
  unet_lib.unet_from_config(m)  # the UNet's own checks (groups, heads, dtype)
  if t.num_steps <= 0:
    raise errors.ConfigError('train.num_steps', f'{t.num_steps} is not positive',
                             'give the number of optimizer steps, e.g. 1000')
  mesh_shape = shard_lib.resolve_mesh_shape(config.mesh.shape, num_devices)
  dp = mesh_shape[0] * mesh_shape[1]
  if t.batch_size <= 0 or t.batch_size % dp:
    raise errors.ConfigError(
        'train.batch_size', f'global batch {t.batch_size} is not divisible by the {dp} '
        f'data-parallel devices of mesh {mesh_shape}',
        f'use a multiple of {dp}, e.g. --config.train.batch_size={max(dp, t.batch_size // dp * dp)}')
  if t.batch_size % process_count:
    raise errors.ConfigError(
        'train.batch_size', f'{t.batch_size} does not split over {process_count} processes',
        f'use a multiple of {process_count}')
  if not 0.0 <= config.diffusion.p_uncond <= 1.0:
    raise errors.ConfigError('diffusion.p_uncond', f'{config.diffusion.p_uncond} not in [0, 1]',
                             'use 0.1 (the reference) or 0 to never drop labels')
  for field in ('checkpoint.every_steps', 'log.every_steps'):
    section, name = field.split('.')
    if config[section][name] <= 0:
      raise errors.ConfigError(field, f'{config[section][name]} is not positive',
                               'give an interval in steps')
  if config.optim.lr <= 0:
    raise errors.ConfigError('optim.lr', f'{config.optim.lr} is not positive', 'e.g. 1e-4')
  if not 0.0 <= config.optim.ema_decay < 1.0:
    raise errors.ConfigError('optim.ema_decay', f'{config.optim.ema_decay} not in [0, 1)',
                             'e.g. 0.9999 (the reference)')
  if config.optim.schedule not in ('constant', 'cosine'):
    raise errors.ConfigError('optim.schedule', f'unknown schedule {config.optim.schedule!r}',
                             "use 'constant' or 'cosine'")
  if config.init_from and not epath.Path(config.init_from).exists():
    raise errors.ConfigError('init_from', f'{config.init_from} does not exist',
                             'give a G_u training workdir or exported params, or leave it empty')


def resolve_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """An unlocked copy with derived values filled in (data.dir, cosine decay_steps)."""
  config = ml_collections.ConfigDict(config.copy_and_resolve_references().to_dict())
  config.data.dir = data_dir(config, workdir)
  if config.optim.schedule == 'cosine' and not config.optim.decay_steps:
    config.optim.decay_steps = config.train.num_steps
  return config


def ensure_dataset(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Prepares the embedded procedural dataset when it is missing; other sources must exist."""
  path = config.data.dir
  if epath.Path(path).is_dir() and any(epath.Path(path).iterdir()):
    return
  if config.data.source != 'procedural':
    preset = config.get('preset', 'PRESET')
    raise errors.ConfigError(
        'data.dir', f'no prepared dataset at {path}',
        f'prepare it first: python -m ivd_jax.main --config=configs/prepare.py:{preset} '
        f'--workdir={workdir} --config.data.folder=IMAGES (or point --config.data.dir at an '
        'existing one)')
  if jax.process_index() == 0:
    logging.info('no dataset at %s: preparing the procedural dataset (%d scenes at %d px) first',
                 path, config.data.num_examples, config.data.resolution)
    print(f'train: no dataset at {path}; generating the procedural dataset '
          f'({config.data.num_examples} scenes at {config.data.resolution} px) with prepare',
          file=sys.stderr)
    from ivd_jax.data import builders  # pylint: disable=g-import-not-at-top
    prepare_config = ml_collections.ConfigDict(config.to_dict())
    prepare_config.mode = 'prepare'
    builders.prepare(prepare_config, workdir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('ivd_jax:prepare')


# =============================================================================================
# Model, diffusion and the train step.
# =============================================================================================
def is_conditional(config: ml_collections.ConfigDict) -> bool:
  return config.model.in_channels == COND_CHANNELS


def make_schedule(config: ml_collections.ConfigDict) -> schedule_lib.Schedule:
  d = config.diffusion
  return schedule_lib.linear_schedule(d.num_steps, d.beta_start, d.beta_end)


def pair_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  p = config.pairs
  return dict(near=config.data.near, far=config.data.far, fov_deg=p.fov_deg, ssaa=p.ssaa,
              atol=p.atol, rtol=p.rtol, prewarp_noise=p.prewarp_noise, blur_prob=p.blur_prob,
              blur_sigma_max=p.blur_sigma_max, erosion_sizes=tuple(p.erosion_sizes))


def drop_labels(key: jax.Array, labels: jax.Array, p_uncond: float) -> jax.Array:
  """Each class label replaced by the null label -1 with probability p_uncond (METHOD 7).

  Training on both makes one network the conditional and the unconditional model that
  classifier-free guidance combines at sampling time.
  """
  drop = jax.random.uniform(key, labels.shape) < p_uncond
  return jnp.where(drop, -1, labels.astype(jnp.int32))


def make_train_step(model: unet_lib.UNet, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict
                    ) -> Callable[[state_lib.TrainState, dict[str, jax.Array]],
                                  tuple[state_lib.TrainState, dict[str, jax.Array]]]:
  """The (unjitted) step: eps loss of METHOD 7, AdamW, EMA; G_c pairs built inside (METHOD 5).

  All randomness comes from fold_in(state.rng, state.step), so step s draws the same timesteps,
  noise, label drops and training pairs however the run was interrupted, resumed or sharded.
  """
  schedule = make_schedule(config)
  lr_fn = state_lib.learning_rate_schedule(config.optim)
  conditional = is_conditional(config)
  num_classes = int(config.model.num_classes or 0)
  p_uncond = float(config.diffusion.p_uncond)
  kwargs = pair_kwargs(config)

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    k_t, k_noise, k_drop, k_pair, k_hole, k_dropout = jax.random.split(rng, 6)
    x0 = batch['rgbd'].astype(jnp.float32)  # [B, H, W, 4] in [-1, 1]
    b = x0.shape[0]
    t = jax.random.randint(k_t, (b,), 0, schedule.num_steps)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    x_t = losses.q_sample(schedule, x0, t, noise)
    labels = drop_labels(k_drop, batch['label'], p_uncond) if num_classes else None
    if conditional:
      pair = pairs_lib.make_training_pairs(x0, k_pair, **kwargs)
      net_in = conditioning.conditional_input(x_t, pair['y_rgb'], pair['y_depth'],
                                              pair['mask_rgb'], pair['mask'], key=k_hole)
    else:
      net_in = x_t

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
    if conditional:
      visible = jnp.broadcast_to(pair['mask'], sq_err.shape)
      metrics['loss_visible'] = jnp.sum(sq_err * visible) / jnp.maximum(jnp.sum(visible), 1.0)
      metrics['loss_holes'] = (jnp.sum(sq_err * (1 - visible)) /
                               jnp.maximum(jnp.sum(1 - visible), 1.0))
      metrics['visible_fraction'] = jnp.mean(pair['mask'])
    return new_state, metrics

  return train_step


def init_state(model: unet_lib.UNet, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               params: Optional[Any] = None) -> tuple[state_lib.TrainState, Any]:
  """A sharded fresh state (random or given params) and the state's shardings."""
  res = config.model.image_size
  key = jax.random.PRNGKey(config.train.seed)
  init_key, state_key = jax.random.split(key)

  def create(p):
    if p is None:
      x = jnp.zeros((1, res, res, config.model.in_channels), jnp.float32)
      labels = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
      p = model.init(init_key, x, jnp.zeros((1,), jnp.int32), labels)['params']
    return state_lib.create_train_state(p, tx, state_key)

  abstract = jax.eval_shape(create, params)
  shardings = shard_lib.tree_shardings(
      mesh, abstract, config.mesh.get('fsdp_min_size', shard_lib.MIN_SHARDED_SIZE))
  if params is not None:
    params = jax.device_put(params, shardings.params)
  return jax.jit(create, out_shardings=shardings)(params), shardings


def params_from_init_from(config: ml_collections.ConfigDict, abstract_params: Any) -> Any:
  """Loads config.init_from (G_u) and widens its first conv for G_c (new inputs zero)."""
  params, source_config = ckpt_lib.load_params(config.init_from, ema=True)
  params = jax.device_get(params)  # host numpy: widened here, then placed on the mesh
  kernel = params['input_blocks_0_0']['kernel']
  want = abstract_params['input_blocks_0_0']['kernel'].shape[2]
  if kernel.shape[2] < want:
    from ivd_jax.tools import convert_reference  # pylint: disable=g-import-not-at-top
    params = convert_reference.widen_to_conditional(params, in_channels=want)
  got = jax.tree.map(lambda x: tuple(x.shape), params)
  expected = jax.tree.map(lambda x: tuple(x.shape), abstract_params)
  if got != expected:
    src = source_config.get('model', {})
    raise errors.ConfigError(
        'init_from', f'{config.init_from} holds a network of another shape (its model config: '
        f'{dict(src) if src else "unknown"})',
        'initialise from a G_u trained with the same model section (channels, levels, classes)')
  return params


# =============================================================================================
# Preview samples (process 0 writes them).
# =============================================================================================
def make_preview_fn(model: unet_lib.UNet, config: ml_collections.ConfigDict
                    ) -> Callable[..., jax.Array]:
  """DDIM samples from EMA params: G_u from noise, G_c from the given conditions with edits.

  Predicted x_0 is clipped to [-1, 1] at every step: a young network's few-step DDIM otherwise
  amplifies its eps error at large t (x_0 = x_t / sqrt(abar_t) - ..., 1 / sqrt(abar_999) ~ 156)
  into saturated noise, and the previews would hide how far training has come.
  """
  schedule = make_schedule(config)
  steps = int(config.log.sample_steps)
  num_classes = int(config.model.num_classes or 0)

  def preview(ema_params, key, cond):
    n = config.log.num_samples
    res = config.model.image_size
    k_x, k_hole = jax.random.split(key)
    x_T = jax.random.normal(k_x, (n, res, res, 4), jnp.float32)
    labels = (jnp.arange(n) % num_classes).astype(jnp.int32) if num_classes else None
    net = lambda x, t: model.apply({'params': ema_params}, x, t, labels)
    if cond is None:
      return samplers.ddim_sample(net, x_T, schedule=schedule, steps=steps, clip_denoised=True)
    eps_fn = conditioning.conditional_eps_fn(net, cond['y_rgb'], cond['y_depth'],
                                             cond['mask_rgb'], cond['mask'], key=k_hole)
    edits = samplers.ConditionEdits(cond['y_rgb'], cond['y_depth'], cond['mask_rgb'],
                                    cond['mask'])
    return samplers.ddim_sample(eps_fn, x_T, schedule=schedule, steps=steps, edits=edits,
                                clip_denoised=True)

  return jax.jit(preview)


# =============================================================================================
# The loop.
# =============================================================================================
class _StopSignal:
  """SIGTERM/SIGINT (preemption, Ctrl-C) set a flag; the loop saves and exits at the next step."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _fetch(tree: Any) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(tree).items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains G_u or G_c as configured; resumes from WORKDIR/checkpoints when present.

  Returns:
    The last logged metrics plus 'step' and 'stopped' ('finished' | signal name).
  """
  # ----------------------------------------------------------------------- setup
  _quiet_library_logs()
  config = resolve_config(config, workdir)
  validate_config(config, num_devices=jax.device_count(), process_count=jax.process_count())
  is_main = jax.process_index() == 0
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # local or a bucket (gs://...)
  ensure_dataset(config, workdir)
  conditional = is_conditional(config)
  name = 'G_c' if conditional else 'G_u'

  # ----------------------------------------------------------------------- mesh
  mesh = shard_lib.make_mesh(config.mesh)
  batch_sharding = shard_lib.batch_sharding(mesh)
  logging.info('%s: mesh %s over %d devices, %d processes', name, dict(mesh.shape),
               jax.device_count(), jax.process_count())

  with jax.set_mesh(mesh):
    # --------------------------------------------------------------------- model and optimizer
    model = unet_lib.unet_from_config(config.model)
    tx = state_lib.make_optimizer(config.optim)
    checkpointer = ckpt_lib.Checkpointer(
        ckpt_lib.workdir_checkpoint_dir(workdir), every_steps=config.checkpoint.every_steps,
        keep=config.checkpoint.keep, keep_every=config.checkpoint.keep_every,
        async_save=config.checkpoint.async_save)

    # --------------------------------------------------------------------- sharding and state
    state, state_shardings = init_state(model, tx, config, mesh)
    data_state = None
    if checkpointer.latest_step() is not None:
      abstract = ckpt_lib.abstract_state_like(state)
      del state  # free the fresh state before restoring onto the same shardings
      state, data_state, _, restored_step = checkpointer.restore(abstract)
      logging.info('%s: resumed from step %d', name, restored_step)
      if data_state is None:
        logging.warning('the checkpoint has no input state for %d processes: the input order '
                        'restarts from the beginning of the dataset', jax.process_count())
    elif config.init_from:
      params = params_from_init_from(config, state.params)
      state, _ = init_state(model, tx, config, mesh, params=params)
      logging.info('%s: initialised from %s', name, config.init_from)
    start_step = int(jax.device_get(state.step))
    num_params = state_lib.param_count(state.params)
    logging.info('%s: %s parameters (%.2f M)', name, f'{num_params:,}', num_params / 1e6)

    writer = train_logging.MetricWriter(workdir, enabled=is_main,
                                        tensorboard=config.log.tensorboard, resume_step=start_step)
    if is_main:
      (epath.Path(workdir) / 'config.json').write_text(config.to_json_best_effort(indent=2))
      writer.write_text('config', config.to_json_best_effort(indent=2), start_step)
      writer.write_text('params', f'{name}: {num_params:,} parameters', start_step)

    # --------------------------------------------------------------------- input
    from ivd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    input_iter = pipeline.create_input_iterator(
        config.data, global_batch_size=config.train.batch_size, mesh=mesh, seed=config.train.seed)
    if data_state is not None:
      input_iter.set_state(data_state)

    # --------------------------------------------------------------------- step
    step_fn = jax.jit(
        make_train_step(model, tx, config),
        in_shardings=(state_shardings, {'rgbd': batch_sharding, 'label': batch_sharding}),
        out_shardings=(state_shardings, shard_lib.replicated(mesh)),
        donate_argnums=(0,))
    preview_fn = make_preview_fn(model, config) if config.log.sample_every_steps else None
    preview_cond = None

    # --------------------------------------------------------------------- checkpoint
    last_saved = start_step if checkpointer.latest_step() is not None else None

    def save(step):
      nonlocal last_saved
      checkpointer.save(step, state, data_state=input_iter.get_state(), config=config)
      last_saved = step

    # --------------------------------------------------------------------- loop
    num_steps = config.train.num_steps
    batch_size = config.train.batch_size
    progress = train_logging.Progress(start_step, num_steps,
                                      enabled=is_main and config.log.progress, desc=name)
    accum, accum_steps = None, 0
    last = {'step': start_step}
    stopped = 'finished'
    t_log = time.perf_counter()
    step = start_step
    with _StopSignal() as stop:
      try:
        while step < num_steps:
          batch = next(input_iter)
          batch = {'rgbd': batch['rgbd'], 'label': batch['label']}
          if conditional and preview_fn is not None and preview_cond is None:
            preview_cond = train_logging.preview_conditions(batch, config, pair_kwargs(config))
          state, metrics = step_fn(state, batch)
          step += 1
          # Metrics stay on device (summed asynchronously) until a log or save step.
          accum = metrics if accum is None else jax.tree.map(jnp.add, accum, metrics)
          accum_steps += 1
          progress.update(step)

          log_now = step % config.log.every_steps == 0 or step == num_steps
          save_now = checkpointer.should_save(step) or step == num_steps
          if log_now or save_now:
            summed = _fetch(accum)
            if summed['nonfinite'] > 0:
              raise NonFiniteError(
                  f'non-finite loss or gradient between steps {step - accum_steps + 1} and '
                  f'{step} (mean loss {summed["loss"] / accum_steps}, grad norm '
                  f'{summed["grad_norm"] / accum_steps}); nothing after step {last_saved} was '
                  'saved. Fix: lower optim.lr, set optim.grad_clip (e.g. 1.0) or use '
                  'model.dtype=float32, then rerun the same command to resume from the last '
                  'checkpoint')
          if log_now:
            now = time.perf_counter()
            steps_per_sec = accum_steps / max(now - t_log, 1e-9)
            last = {'step': step}
            last.update({k: v / accum_steps for k, v in summed.items() if k != 'nonfinite'})
            last.update(steps_per_sec=steps_per_sec, examples_per_sec=steps_per_sec * batch_size)
            writer.write_metrics(last)
            progress.set_postfix(loss=last['loss'])
            accum, accum_steps, t_log = None, 0, now
          elif save_now:
            accum, accum_steps = None, 0
          if save_now:
            t_save = time.perf_counter()
            save(step)
            t_log += time.perf_counter() - t_save  # only the blocking part of the async save
          if (preview_fn is not None and
              (step % config.log.sample_every_steps == 0 or step == num_steps)):
            t_preview = time.perf_counter()
            train_logging.write_preview(writer, workdir, step, preview_fn, state.ema_params,
                                        preview_cond, config)
            t_log += time.perf_counter() - t_preview  # previews do not count against steps/s
          preempted = stop.received is not None
          if jax.process_count() > 1:
            preempted = preempted or checkpointer.reached_preemption(step)
          if preempted and step < num_steps:
            stopped = stop.received or 'preemption'
            logging.warning('%s received: saving step %d and exiting', stopped, step)
            save(step)
            break
      finally:
        progress.close()
        checkpointer.close()
        writer.close()
  last['stopped'] = stopped
  if is_main:
    logging.info('%s: %s at step %d (loss %s)', name, stopped, last['step'], last.get('loss'))
  return last
