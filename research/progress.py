"""Progress display: a tqdm bar with throughput and ETA on a terminal, and plain log
lines (with the same numbers) when stderr is not a TTY, e.g. in CI or under nohup."""

import sys
import time

from tqdm import tqdm


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:

  def __init__(self, total_steps: int, initial_step: int = 0, enabled: bool = True,
               silent: bool = False):
    """enabled: the bar, on a terminal. silent: no output at all (a process other than
    0 of a multi-process run)."""
    self.total = total_steps
    self.silent = silent
    self.step = initial_step
    self.start_time = time.perf_counter()
    self.start_step = initial_step
    self.tty = enabled and not silent and sys.stderr.isatty()
    self.bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                    dynamic_ncols=True, disable=not self.tty, file=sys.stderr)

  def update(self, step: int) -> None:
    self.bar.update(step - self.step)
    self.step = step

  def eta_seconds(self) -> float:
    done = self.step - self.start_step
    if done <= 0:
      return float("nan")
    rate = done / (time.perf_counter() - self.start_time)
    return (self.total - self.step) / rate

  def log(self, message: str, postfix: dict | None = None) -> None:
    """A line for the record. On a TTY it goes above the bar; otherwise it carries the
    progress and ETA itself."""
    if self.silent:
      return
    if self.tty:
      if postfix:
        self.bar.set_postfix(postfix, refresh=False)
      self.bar.write(message)
    else:
      eta = self.eta_seconds()
      eta_text = "" if eta != eta else f" | eta {format_duration(eta)}"
      print(f"[{self.step}/{self.total}] {message}{eta_text}", flush=True)

  def close(self) -> None:
    self.bar.close()
