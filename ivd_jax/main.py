"""The one entry point: prepare, train, sample, eval and the quickstart.

  python -m ivd_jax.main --config=configs/uncond.py[:preset] --workdir=DIR \
      [--config.train.batch_size=64 ...]
  ivd-jax --config=uncond[:preset] --workdir=DIR ...      # installed: configs by bare name

Kept short on purpose: flags, multi-host initialisation, one call into a library function
chosen by `config.mode`. Every error of the user's making (a flag, a config field, a file, the
workdir) ends the process with one line `error: ...` on stderr and exit code 2.
"""
import errno
import importlib
import pathlib
import re
import sys
import tempfile
from typing import NoReturn, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax import runtime
from ivd_jax.io import paths

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


def fail(message: str) -> NoReturn:
  """Ends the process: one line `error: message` on stderr, exit code 2."""
  print('error: ' + ' '.join(str(message).split()), file=sys.stderr)
  sys.exit(2)


def flag_error_message(e: Exception, argv: Sequence[str]) -> str:
  """One line naming the flag and the fix for an error of absl / ml_collections flag parsing."""
  while isinstance(e, (KeyError, AttributeError)) and e.args and isinstance(e.args[0], Exception):
    e = e.args[0]  # ml_collections wraps the KeyError of a missing field in an AttributeError
  text = str(e.args[0]) if isinstance(e, (KeyError, AttributeError)) and e.args else str(e)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if any(line.startswith('Traceback') for line in lines):  # a config file raised: its last line
    lines = [lines[0], lines[-1]]
  text = ' '.join(lines)
  overrides = [a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
  unknown = re.search(r"'([^']+)'", text) if isinstance(e, (KeyError, AttributeError)) else None
  if isinstance(e, flags.UnrecognizedFlagError) and 'config.' in text:
    unknown = re.search(r"'config\.[^']*?([^.']+)'", text)
  if unknown:
    key = unknown.group(1)
    named = [o for o in overrides if key in o[len('--config.'):].split('.')]
    flag = named[0] if named else '--config.<field>'
    hint = '; ' + text[text.find('Did you mean'):] if 'Did you mean' in text else ''
    return (f'{flag}: the config has no field {flag[len("--config."):]} (no {key!r} in it'
            f'{hint}). Fix: check the name against the fields of '
            "the mode's config (ivd_jax/configs/<mode>.py and the shared sections of "
            'ivd_jax/configs/common.py)')
  if isinstance(e, flags.UnrecognizedFlagError):
    return (f'{text}. Fix: the flags are --config, --workdir and --config.<section>.<field>=value '
            '(--helpfull lists them)')
  if 'config file' in text:
    return f'{text}. Fix: give an existing config file and one of its presets'
  return f'{text}. Fix: give the flag a value of its type (--helpfull lists the flags)'


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with every flag error (an unknown config field, a value of the wrong
  type, a config file that raises) as one line `error: ...` and exit code 2."""
  try:
    return flags.FLAGS(list(argv))
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    fail(flag_error_message(e, argv))


def check_workdir(workdir: str) -> None:
  """A local workdir must be a directory this process can create and write in."""
  if paths.is_remote(workdir):
    return
  path = pathlib.Path(workdir)
  fix = 'give --workdir a directory you can write to (it is created when missing)'
  if path.exists() and not path.is_dir():
    raise errors.UserError(f'--workdir {workdir} is a file, not a directory. Fix: {fix}')
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise errors.UserError(f'--workdir {workdir} cannot be written ({e.strerror or e}). '
                           f'Fix: {fix}') from None


# A full or read-only file system, as an OSError errno or in the text of a library's error
# (TensorStore reports "No space left on device [os_error_code='28']" in a ValueError).
_STORAGE_FAULTS = (
    ((errno.ENOSPC, errno.EDQUOT), ('No space left on device', 'Disk quota exceeded'),
     'is full', 'free space there or give --workdir a larger disk'),
    ((errno.EROFS,), ('Read-only file system',), 'became read-only',
     'remount it writable or give --workdir another disk'),
)


def storage_error(e: BaseException, workdir: str) -> Optional[str]:
  """One line for a full or read-only disk met anywhere in an exception chain, else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    for numbers, texts, what, fix in _STORAGE_FAULTS:
      if getattr(e, 'errno', None) in numbers or any(t in str(e) for t in texts):
        where = getattr(e, 'filename', None) or workdir
        return (f'the disk holding {where} {what} ({texts[0]}): the run stopped, and what it '
                f'had completed (e.g. the last complete checkpoint) is kept. Fix: {fix}, then '
                'rerun the same command to resume')
    e = e.__cause__ or e.__context__
  return None


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}. Fix: pass settings as --config.<section>.<field>=value')
  if _CONFIG.value is None:
    fail('--config is required: the mode\'s config. Fix: --config=NAME[:preset] with NAME one of '
         'uncond, cond, prepare, sample, eval, quickstart, warp_demo, or a config file path')
  if _WORKDIR.value is None:
    fail('--workdir is required: the directory for outputs and checkpoints. Fix: --workdir=DIR')
  try:
    check_workdir(_WORKDIR.value)
    parallel.maybe_initialize(_CONFIG.value)
    run(_CONFIG.value, _WORKDIR.value)
  except errors.UserError as e:
    logging.error('%s', e)
    fail(str(e))
  except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
    logging.error('%s', e)
    fail(f'{e.filename}: {e.strerror}. Fix: check that path and its permissions')
  except Exception as e:  # pylint: disable=broad-except
    message = storage_error(e, _WORKDIR.value)
    if message is None:
      raise
    logging.error('%s', e)
    fail(message)


def cli() -> None:
  """The console command `ivd-jax` (pyproject.toml), the same as `python -m ivd_jax.main`."""
  runtime.configure()  # XLA:CPU settings, before the config files or the run compute anything
  try:
    argv = resolve_config_names(sys.argv)
  except app.UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == '__main__':
  cli()
