"""The one orbax wrapper: training checkpoints and exported parameters.

Training checkpoints (manager.Checkpointer) live in WORKDIR/checkpoints/<step>/ with these items:
  state      the train state as a dict {step, params, ema_params, opt_state, rng} (sharded arrays);
  data       the input iterator state, one JSON file per process (each host feeds its own slice);
  config     the run's configuration as JSON;
  integrity  what the caller records to verify the state on restore (the trainer: checksums).
Saves are asynchronous: the step loop continues while the arrays are written, and every
exit path waits for the last save. Orbax writes to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous step as the latest restorable one.
A damaged step (unreadable, truncated, or failing the caller's check: NaN/inf, a checksum) is
moved aside to <step>.damaged-<UTC time> (never deleted) with a warning, and restore falls back
to the newest good step; the step is then free to be saved again.

Exported parameters (params.save_params) are a directory with params/ (orbax) and config.json;
they are what the reference-checkpoint converter writes and what sampling and evaluation read
through load_params, which also accepts a training workdir (EMA weights of the latest step).
"""
from ivd_jax.checkpoint.manager import CHECKPOINT_SUBDIR
from ivd_jax.checkpoint.manager import Checkpointer
from ivd_jax.checkpoint.manager import NonFiniteState
from ivd_jax.checkpoint.manager import abstract_state_like
from ivd_jax.checkpoint.manager import preemption_service_active
from ivd_jax.checkpoint.manager import wait_for_all_processes
from ivd_jax.checkpoint.manager import workdir_checkpoint_dir
from ivd_jax.checkpoint.params import load_params
from ivd_jax.checkpoint.params import save_params
