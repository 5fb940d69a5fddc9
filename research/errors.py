"""Errors caused by the user's input. The command line prints these as one clear message
and exits non-zero; anything else is a bug and keeps its traceback."""


class UserError(Exception):
  """Bad input: the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
  """A config value is invalid; the message names the key."""


class WorkdirError(UserError, OSError):
  """The workdir cannot be used; the message names the path."""
