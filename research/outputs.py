"""What a run leaves in its workdir: config.json, metrics.jsonl and summary.json."""

import fcntl
import json
import os
import pathlib
import platform
import subprocess

import ml_collections

from research import errors

RESULT_FILES = ("summary.json", "metrics.jsonl")


def _write_atomic(path: pathlib.Path, text: str) -> None:
  """Readers never see a half-written file, and a crash keeps the previous version."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


class RunDir:
  """The files of one workdir. With `writes=False` (the processes other than 0 of a
  multi-process run) it reads them but never writes, creates or locks anything."""

  def __init__(self, workdir: str | os.PathLike, writes: bool = True):
    self.path = pathlib.Path(workdir)
    self.writes = writes

  @property
  def checkpoint_dir(self) -> pathlib.Path:
    return self.path / "checkpoints"

  def refuse_results_without_checkpoints(self) -> None:
    """Results with checkpoints belong to a run that can resume; results without them
    (an older run, or a run that ended before its first checkpoint) are never
    overwritten."""
    existing = [f for f in RESULT_FILES if (self.path / f).exists()]
    if existing and not self.checkpoint_dir.is_dir():
      raise errors.WorkdirError(
          f"{self.path} already holds results of an earlier run ({', '.join(existing)}) "
          "and no checkpoints to resume from. Pass a new --workdir, or move the old one "
          "away; nothing was changed.")

  def lock(self) -> None:
    """Holds an exclusive lock on WORKDIR/run.lock until `unlock` or the process ends.

    flock locks die with their process, so a lock left by a killed run never blocks."""
    if getattr(self, "_lock_file", None) or not self.writes:
      return
    self.create()
    path = self.path / "run.lock"
    try:
      f = open(path, "a+")
    except OSError as e:
      raise errors.WorkdirError(f"Cannot open lock file {path}: {e.strerror}") from e
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      owner = f.read().strip() or "unknown"
      f.close()
      raise errors.WorkdirBusy(
          f"Another run (pid {owner}) is using {self.path}; two runs in one workdir "
          "would corrupt each other. Wait for it to finish, stop it, or pass another "
          "--workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    self._lock_file = f

  def unlock(self) -> None:
    f = getattr(self, "_lock_file", None)
    if f:
      fcntl.flock(f, fcntl.LOCK_UN)
      f.close()
      self._lock_file = None

  def read_config(self) -> dict | None:
    path = self.path / "config.json"
    return json.loads(path.read_text()) if path.exists() else None

  def read_summary(self) -> dict | None:
    path = self.path / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None

  def trim_metrics(self, step: int) -> int:
    """Keeps the records of metrics.jsonl up to `step` (and drops a line cut short by a
    crash), atomically; returns how many records were dropped. A resumed run then
    writes the rest of the history exactly as an uninterrupted run would have."""
    path = self.path / "metrics.jsonl"
    if not path.exists() or not self.writes:
      return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if record.get("step", 0) <= step:
        kept.append(line)
      else:
        dropped += 1
    if dropped:
      _write_atomic(path, "".join(line + "\n" for line in kept))
    return dropped

  def create(self) -> None:
    try:
      self.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise errors.WorkdirError(f"Cannot create workdir {self.path}: {e.strerror}") from e

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    if self.writes:
      _write_atomic(self.path / "config.json", config.to_json_best_effort(indent=2) + "\n")

  def log_metrics(self, record: dict) -> None:
    if not self.writes:
      return
    with open(self.path / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")

  def write_summary(self, summary: dict) -> None:
    if self.writes:
      _write_atomic(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")


def git_commit() -> str:
  """The commit of the code that ran, with '+dirty' when it had local changes."""
  repo = pathlib.Path(__file__).resolve().parent.parent
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=repo, capture_output=True, text=True, timeout=10).stdout
    return commit + ("+dirty" if dirty.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def library_versions() -> dict:
  import flax
  import jax
  import jaxlib
  import numpy
  import optax
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "optax": optax.__version__, "numpy": numpy.__version__}
