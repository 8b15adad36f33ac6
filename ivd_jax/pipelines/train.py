"""The train mode: train_and_evaluate(config, workdir) for any network role (G_u, G_c).

  python -m ivd_jax.main --config=configs/uncond.py[:preset] --workdir=DIR

Reads top to bottom: setup, mesh, input, model and optimizer, sharding, step, checkpoint, loop.
Workdir layout:
  DIR/config.json      the resolved configuration of the run
  DIR/checkpoints/     orbax checkpoints (state, input iterator state, config, checksums);
                       damaged steps are moved aside to <step>.damaged-<UTC time>
  DIR/ivd_jax.lock     the workdir lock while a run writes here (ivd_jax/io/lock.py)
  DIR/tensorboard/     TensorBoard event files (tensorboardX, no TensorFlow)
  DIR/metrics.jsonl    one JSON object per log step: step, loss, grad_norm, lr, steps_per_sec,
                       examples_per_sec (+ the role's metrics, e.g. loss_visible / loss_holes)
  DIR/samples/         preview grids (PNG), RGB and colourised depth; G_c beside its condition
"""
import logging as std_logging
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from ivd_jax import checkpoint as ckpt_lib
from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax.data import pipeline
from ivd_jax.data import records
from ivd_jax.io import lock as lock_lib
from ivd_jax.pipelines import prepare as prepare_pipeline
from ivd_jax.training import checks
from ivd_jax.training import state as state_lib
from ivd_jax.training import step as step_lib
from ivd_jax.training import train_logging


class NonFiniteError(errors.UserError):
  """The loss or gradient became NaN/inf; the run stopped before saving that state."""


# =============================================================================================
# Setup: quiet library logs, the resolved config, the dataset.
# =============================================================================================
class _QuietLibraries(std_logging.Filter):
  """Drops INFO records of orbax (a dozen lines per save) so the run's own log stays readable,
  and the tracebacks that orbax's background threads and their asyncio tasks log (a failed save,
  e.g. on a full disk, reaches the caller as the exception itself; main makes that one line)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if '/orbax/' not in record.pathname and record.name != 'asyncio':
      return True
    record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING


class _QuietClosedLoops:
  """sys.unraisablehook without one echo: after a failed write (e.g. a full disk) orbax closes
  the asyncio loop of that save while TensorStore still completes its other writes into it
  ("Event loop is closed"). The failure itself reaches the caller; everything else passes on."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError) and
            str(unraisable.exc_value) == 'Event loop is closed'):
      self.previous(unraisable)


def _quiet_library_logs() -> None:
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
  if not isinstance(sys.unraisablehook, _QuietClosedLoops):
    sys.unraisablehook = _QuietClosedLoops(sys.unraisablehook)


def resolve_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """An unlocked copy with derived values filled in (data.dir, cosine decay_steps)."""
  config = ml_collections.ConfigDict(config.copy_and_resolve_references().to_dict())
  config.data.dir = records.data_dir(config, workdir)
  if config.optim.schedule == 'cosine' and not config.optim.decay_steps:
    config.optim.decay_steps = config.train.num_steps
  return config


def ensure_dataset(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Prepares the embedded procedural dataset when it is missing; other sources must exist."""
  path = config.data.dir
  exists = epath.Path(path).is_dir() and any(epath.Path(path).iterdir())
  if jax.process_count() > 1:  # process 0's answer for all: it may already be writing the data
    exists = bool(multihost_utils.broadcast_one_to_all(np.int32(exists)))
  if exists:
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
  prepare_config = ml_collections.ConfigDict(config.to_dict())
  prepare_config.mode = 'prepare'
  prepare_pipeline.run(prepare_config, workdir)  # every process writes its share of the shards
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('ivd_jax:prepare')


# =============================================================================================
# The loop.
# =============================================================================================
class _StopSignal:
  """When a run stops early: SIGTERM / SIGINT (preemption, Ctrl-C), agreed by every process.

  One process: the handlers set a flag; the loop saves and exits after the current step.
  Several processes must save the same step and stop together, whichever host got the signal
  (a host that leaves alone hangs the others in their next collective):
  - SIGTERM with JAX's preemption service (on by default once jax.distributed is initialised):
    JAX's notifier owns SIGTERM and stays installed (a Python handler would silently replace
    it); the service agrees on a step over the coordination service, and
    checkpointer.reached_preemption(step), called at every step, is True at that step on every
    process. A local check (well under a microsecond per step).
  - SIGINT, and SIGTERM where the service is off: the handler sets a local flag, and every
    `every` steps (distributed.stop_check_every_steps) the processes all-gather their flags: one
    tiny collective and one host sync per `every` steps (ms on CPU).
  Handlers chain to a previously installed Python handler (other than Python's defaults).
  """

  def __init__(self, *, reached_preemption=None, service: bool = False, every: int = 0):
    self.received = None
    self._previous = {}
    self._multiprocess = jax.process_count() > 1
    self._reached_preemption = reached_preemption if service else None
    self._every = int(every)

  def __enter__(self):
    signals = [signal.SIGINT] + ([] if self._reached_preemption else [signal.SIGTERM])
    for sig in signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    self.received = self.received or signal.Signals(signum).name
    previous = self._previous.get(signum)
    if callable(previous) and previous is not signal.default_int_handler:
      previous(signum, frame)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

  def stop_reason(self, step: int):
    """None, or why the run stops after `step`: the same answer on every process."""
    reason = None
    if self._reached_preemption is not None and self._reached_preemption(step):
      reason = 'preemption'
    if not self._multiprocess:
      return reason or self.received
    if self._every and step % self._every == 0:
      local = signal.Signals[self.received].value if self.received else 0
      flags = np.asarray(multihost_utils.process_allgather(np.int32(local)))
      if reason is None and flags.max():
        reason = signal.Signals(int(flags.max())).name
    return reason


def _fetch(tree: Any) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(tree).items()}


def check_input_state(config: ml_collections.ConfigDict, checkpointer: ckpt_lib.Checkpointer,
                      step: int, missing: bool) -> None:
  """A resume without this process's input-iterator state is a ConfigError unless
  config.checkpoint.allow_fresh_data_order (then the input order restarts, with a warning).

  Every process gives the same answer (each reads its own file).
  """
  flags = [missing]
  if jax.process_count() > 1:
    flags = list(np.asarray(multihost_utils.process_allgather(np.int32(missing))))
  missing_on = [i for i, f in enumerate(flags) if f]
  if not missing_on:
    return
  saved, count = checkpointer.data_state_files(step), jax.process_count()
  where = f'{checkpointer.directory}/{step}/data'
  if saved and not any(name.endswith(f'-of-{count}.json') for name in saved):
    why = (f'{where} was saved by another process count ({", ".join(saved)}) and this run has '
           f'{count}; per-process iterator states cannot be remapped')
  else:
    why = (f'{where} lacks the input-iterator state of process {missing_on} (it holds '
           f'{", ".join(saved) or "no file"})')
  if not config.checkpoint.allow_fresh_data_order:
    raise errors.ConfigError(
        'checkpoint.allow_fresh_data_order', f'step {step} cannot resume its input order: {why}',
        'put the missing files back (or resume with the process count that saved them), or set '
        '--config.checkpoint.allow_fresh_data_order=True to resume with the input order '
        'restarted from the beginning of the dataset')
  logging.warning('%s: resuming step %d with the input order restarted from the beginning of '
                  'the dataset (checkpoint.allow_fresh_data_order)', why, step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains G_u or G_c as configured; resumes from WORKDIR/checkpoints when present.

  Holds the workdir lock (ivd_jax/io/lock.py) from the first write to the last.

  Returns:
    The last logged metrics plus 'step' and 'stopped' ('finished' | signal name).
  """
  _quiet_library_logs()
  config = resolve_config(config, workdir)
  checks.validate_config(config, num_devices=jax.device_count(), process_count=jax.process_count())
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # local or a bucket (gs://...)
  with lock_lib.hold_for(config, workdir):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """train_and_evaluate once the config is checked and the workdir is this run's."""
  # ----------------------------------------------------------------------- setup
  is_main = jax.process_index() == 0
  ensure_dataset(config, workdir)
  role = roles.role_of(config)
  name = role.title

  # ----------------------------------------------------------------------- mesh
  mesh = parallel.make_mesh(config.mesh)
  logging.info('%s: mesh %s over %d devices, %d processes', name, dict(mesh.shape),
               jax.device_count(), jax.process_count())

  with jax.set_mesh(mesh):
    # --------------------------------------------------------------------- model and optimizer
    model = role.network(config.model)
    tx = state_lib.make_optimizer(config.optim)
    checkpointer = ckpt_lib.Checkpointer(
        ckpt_lib.workdir_checkpoint_dir(workdir), every_steps=config.checkpoint.every_steps,
        keep=config.checkpoint.keep, keep_every=config.checkpoint.keep_every,
        async_save=config.checkpoint.async_save)

    # --------------------------------------------------------------------- sharding and state
    state, state_shardings = step_lib.init_state(model, tx, config, mesh)
    data_state = None
    if checkpointer.latest_step() is not None:
      abstract = ckpt_lib.abstract_state_like(state)
      del state  # free the fresh state before restoring onto the same shardings
      # Damaged newer steps are moved aside (and saved again when training reaches them).
      state, data_state, _, restored_step = checkpointer.restore(abstract)
      logging.info('%s: resumed from step %d', name, restored_step)
      check_input_state(config, checkpointer, restored_step, missing=data_state is None)
    elif config.init_from:
      params = step_lib.params_from_init_from(config, state.params)
      state, _ = step_lib.init_state(model, tx, config, mesh, params=params)
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
    input_iter = pipeline.create_input_iterator(
        config.data, global_batch_size=config.train.batch_size, mesh=mesh, seed=config.train.seed)
    if data_state:
      input_iter.set_state(data_state)

    # --------------------------------------------------------------------- step
    step_fn = step_lib.jit_train_step(model, tx, config, mesh, state_shardings)
    preview_fn = (train_logging.make_preview_fn(model, config)
                  if config.log.sample_every_steps else None)
    preview_cond, preview_ready = None, False

    # --------------------------------------------------------------------- checkpoint
    last_saved = start_step if checkpointer.latest_step() is not None else None

    def save(step):
      nonlocal last_saved
      try:  # a state holding NaN/inf is never written
        checkpointer.save(step, state, data_state=input_iter.get_state(), config=config)
      except ckpt_lib.NonFiniteState as e:
        raise NonFiniteError(f'{e}. Fix: lower optim.lr, set optim.grad_clip (e.g. 1.0) or use '
                             'model.dtype=float32, then rerun the same command to resume from '
                             'the last checkpoint') from None
      last_saved = step

    # --------------------------------------------------------------------- loop
    num_steps = config.train.num_steps
    batch_size = config.train.batch_size
    progress = train_logging.Progress(start_step, num_steps,
                                      enabled=is_main and config.log.progress, desc=name)
    accum, accum_steps = None, 0
    last = {'step': start_step}
    stopped = 'finished'
    # All processes enter the loop together (start-up may have drifted by minutes on a loaded
    # host; the first collectives of the step would not wait that long on CPU).
    ckpt_lib.wait_for_all_processes('ivd_jax:train_loop')
    t_log = time.perf_counter()
    step = start_step
    with _StopSignal(reached_preemption=checkpointer.reached_preemption,
                     service=ckpt_lib.preemption_service_active(),
                     every=(config.get('distributed') or {}).get('stop_check_every_steps', 0)
                     ) as stop:
      try:
        while step < num_steps:
          batch = next(input_iter)
          batch = {'rgbd': batch['rgbd'], 'label': batch['label']}
          if preview_fn is not None and not preview_ready:
            preview_cond, preview_ready = train_logging.preview_conditions(batch, config), True
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
          reason = stop.stop_reason(step)
          if reason and step < num_steps:
            stopped = reason
            logging.warning('%s: saving step %d and exiting', stopped, step)
            if last_saved != step:
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
