"""User-facing errors: bad input or configuration, reported without a traceback."""
import contextlib
from typing import Iterator


class UserError(ValueError):
  """Bad input or configuration. The message names the problem and the fix."""


class FieldError(UserError):
  """A named setting is invalid; the message names the setting, the problem and the fix.

  Library objects (a UNet field, an estimator option) raise this with their own field name;
  the stage that read the value from a config turns it into the ConfigError of its config path
  with `config_section`.
  """

  def __init__(self, field: str, problem: str, fix: str):
    super().__init__(f'{field}: {problem}. Fix: {fix}')
    self.field, self.problem, self.fix = field, problem, fix


class ConfigError(FieldError):
  """A configuration field is invalid; `field` is its path in the config (e.g. 'model.dtype')."""

  def __init__(self, field: str, problem: str, fix: str):
    UserError.__init__(self, f'config.{field}: {problem}. Fix: {fix}')
    self.field, self.problem, self.fix = field, problem, fix


def check_name(field: str, name: str) -> str:
  """`name` if it is one plain path component (a run or report name); else a ConfigError.

  Names are joined under the workdir (DIR/samples/<run_name>, DIR/eval/<name>.json); '/', '\\'
  or '..' would write outside it.
  """
  text = str(name)
  if (not text or text in ('.', '..') or any(c in text for c in '/\\\0') or
      text != text.strip()):
    raise ConfigError(field, f'{text!r} is not a plain name (one folder or file name)',
                      "use letters, digits, '-', '_' and '.', without '/', '\\' or '..', "
                      'e.g. photo_run1')
  return text


@contextlib.contextmanager
def config_section(section: str) -> Iterator[None]:
  """Re-raises a library FieldError as the ConfigError of config.<section>.<field>."""
  try:
    yield
  except ConfigError:
    raise
  except FieldError as e:
    raise ConfigError(f'{section}.{e.field}', e.problem, e.fix) from None
