"""User-facing errors: bad input or configuration, reported without a traceback."""


class UserError(ValueError):
  """Bad input or configuration. The message names the problem and the fix."""


class ConfigError(UserError):
  """A configuration field is invalid; the message names the field."""

  def __init__(self, field: str, problem: str, fix: str):
    super().__init__(f'config.{field}: {problem}. Fix: {fix}')
    self.field = field
