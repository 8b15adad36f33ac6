"""The one entry point: prepare, train, sample, eval and the quickstart.

  python -m ivd_jax.main --config=configs/uncond.py[:preset] --workdir=DIR \
      [--config.train.batch_size=64 ...]
  ivd-jax --config=uncond[:preset] --workdir=DIR ...      # installed: configs by bare name

Kept short on purpose: flags, multi-host initialisation, one call into a library function
chosen by `config.mode`.
"""
import importlib
import pathlib
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ivd_jax import errors
from ivd_jax import parallel

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file or the name of a packaged config (uncond, cond, '
    'prepare, sample, eval, quickstart, warp_demo), optionally with :preset.', lock_config=True)
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


# The configs shipped inside the package (ivd_jax/configs; configs/ in a clone links to it).
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / 'configs'


def resolve_config_names(argv: Sequence[str]) -> list[str]:
  """`--config=NAME[:preset]` -> the packaged ivd_jax/configs/NAME.py[:preset].

  A value that names an existing file is left alone (`--config=configs/uncond.py:tiny` from a
  clone, or any config file of the user's), so bare names work from any directory.
  """
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      prefix, value = '--config=', arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(argv):
      prefix, value, i = '', argv[i + 1], i + 1
    else:
      continue
    path, sep, preset = value.partition(':')
    packaged = CONFIG_DIR / f'{path}.py'
    if pathlib.Path(path).is_file():
      continue
    if '/' in path or not packaged.is_file():
      names = sorted(p.stem for p in CONFIG_DIR.glob('*.py') if p.stem not in ('__init__',
                                                                                 'common'))
      raise app.UsageError(f'--config={value}: {path} is neither a config file nor a packaged '
                           f'config. Fix: give a file path or one of {", ".join(names)}')
    argv[i] = f'{prefix}{packaged}{sep}{preset}'
  return argv


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


def cli() -> None:
  """The console command `ivd-jax` (pyproject.toml), the same as `python -m ivd_jax.main`."""
  try:
    argv = resolve_config_names(sys.argv)
  except app.UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv)


if __name__ == '__main__':
  cli()
