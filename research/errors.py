"""Errors caused by the user's input. The command line prints these as one clear message
and exits non-zero; anything else is a bug and keeps its traceback."""


class UserError(Exception):
  """Bad input: the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
  """A config value is invalid; the message names the key."""


class WorkdirError(UserError, OSError):
  """The workdir cannot be used; the message names the path."""


class CheckpointError(UserError, OSError):
  """A checkpoint cannot be written or read; the message names the path."""


class DivergenceError(UserError, FloatingPointError):
  """The loss became NaN or Inf; the message names the step."""


class WorkdirBusy(WorkdirError):
  """Another live process is running in the same workdir."""


class Interrupted(Exception):
  """SIGTERM or SIGINT stopped the run after it saved a checkpoint; running the same
  command again resumes. The command line exits with `EXIT_CODE`."""
  EXIT_CODE = 3
