"""The one entry point: prepare, train, sample, eval and the quickstart.

  python -m ivd_jax.main --config=configs/uncond.py[:preset] --workdir=DIR \
      [--config.train.batch_size=64 ...]

Kept short on purpose: flags, multi-host initialisation, one call into a library function
chosen by `config.mode`.
"""
import importlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ivd_jax import errors
from ivd_jax import parallel

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file, optionally with :preset.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for outputs and checkpoints.')

# config.mode -> 'module:function(config, workdir)'; imported lazily so each mode only pays for
# what it uses.
MODES = {
    'prepare': 'ivd_jax.pipelines.prepare:run',
    'train': 'ivd_jax.pipelines.train:train_and_evaluate',
    'sample': 'ivd_jax.pipelines.sample:sample_and_export',
    'eval': 'ivd_jax.pipelines.eval:evaluate',
    'quickstart': 'ivd_jax.pipelines.quickstart:run',
    'warp_demo': 'ivd_jax.pipelines.warp_demo:run',
}


def run(config, workdir: str):
  """Dispatches on config.mode; importable so tests and notebooks call it directly."""
  mode = config.get('mode')
  if mode not in MODES:
    raise errors.ConfigError('mode', f'unknown mode {mode!r}', f'use one of {sorted(MODES)}')
  module_name, fn_name = MODES[mode].split(':')
  return getattr(importlib.import_module(module_name), fn_name)(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _WORKDIR.value is None:
    raise app.UsageError('--workdir is required: the directory for outputs and checkpoints.')
  parallel.maybe_initialize(_CONFIG.value)
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except errors.UserError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
