"""What a run leaves in its workdir: config.json, data.json, metrics.jsonl and
summary.json.

A workdir is a local path or a URL (`gs://bucket/dir`, or any scheme that `etils.epath`
serves). Every read and write goes through `epath`, so a URL is never turned into a local
path; `workdir_path` checks, before any work, that the URL's filesystem is installed.
"""

import fcntl
import json
import os
import pathlib
import platform
import subprocess

from etils import epath
import ml_collections

from research import errors

RESULT_FILES = ("summary.json", "metrics.jsonl")

# What a workdir on each URL scheme that etils.epath serves needs: epath reads them
# through fsspec's filesystems (gs:// through tensorflow's gfile instead when tensorflow
# is installed); orbax also needs google-cloud-storage on gs:// (research/checkpoint.py).
INSTALL = {"gs": "gcsfs google-cloud-storage", "s3": "s3fs", "az": "adlfs",
           "hf": "huggingface_hub"}


def is_url(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def _scheme(path: str | os.PathLike) -> str:
  return os.fspath(path).split("://", 1)[0]


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
  """`workdir` as an `epath.Path`, once its filesystem is known to be usable here. A URL
  whose filesystem is not installed (or not reachable) stops the run before any work,
  saying what to install; nothing is written."""
  try:
    path = epath.Path(workdir)
  except KeyError:
    raise errors.WorkdirError(
        f"Cannot use workdir {workdir}: etils.epath has no filesystem for "
        f"{_scheme(workdir)}:// (it serves {', '.join(s + '://' for s in INSTALL)}). "
        "Use one of those or a local path; nothing was written.") from None
  if is_url(path):
    _check_filesystem(path)
  return path


def _check_filesystem(path: epath.Path) -> None:
  scheme = _scheme(path)
  try:
    path.exists()
  except ImportError as e:
    todo = (f"Run `pip install {INSTALL[scheme]}` (what a {scheme}:// workdir needs)"
            if scheme in INSTALL else "Install what it names")
    raise errors.WorkdirError(f"Cannot use workdir {path}: {e}. {todo}, then the same "
                              "command again; nothing was written.") from None
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).splitlines() or [""])[0][:300]
    raise errors.WorkdirError(
        f"Cannot reach workdir {path}: {type(e).__name__}: {reason}. Check the URL and "
        "your credentials; nothing was written.") from e


def _write_atomic(path: epath.Path, text: str) -> None:
  """Readers never see a half-written file, and a crash keeps the previous version: a
  rename on a local disk; on an object store, the copy that replaces the object is
  whole or absent."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


class RunDir:
  """The files of one run in its workdir, a local path or a URL.

  On a URL there is no `flock`: two runs must never share a cloud workdir (they would
  overwrite each other's checkpoints and metrics), and nothing stops them. With
  `writes=False` (the processes other than 0 of a multi-process run) it reads the files
  but never writes, creates or locks anything."""

  def __init__(self, workdir: str | os.PathLike, writes: bool = True):
    self.path = epath.Path(workdir)
    self.writes = writes

  @property
  def is_url(self) -> bool:
    return is_url(self.path)

  @property
  def checkpoint_dir(self) -> epath.Path:
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

    flock locks die with their process, so a lock left by a killed run never blocks. A
    URL workdir is only created: object stores have no such lock (see the class)."""
    if getattr(self, "_lock_file", None) or not self.writes:
      return
    self.create()
    if self.is_url:
      return
    path = self.path / "run.lock"
    try:
      f = open(os.fspath(path), "a+")
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

  def write_data_info(self, dataset) -> None:
    """data.json: the class names (in label order) and the shape and dtype of one image,
    so that research.predict and research.export rebuild the model without the data."""
    if self.writes:
      _write_atomic(self.path / "data.json", json.dumps(
          {"dataset": dataset.name, "source": dataset.source,
           "class_names": list(dataset.class_names),
           "image_shape": list(dataset.image_shape),
           "image_dtype": str(dataset.train.images.dtype)}, indent=2) + "\n")

  def read_data_info(self) -> dict | None:
    path = self.path / "data.json"
    return json.loads(path.read_text()) if path.exists() else None

  def log_metrics(self, record: dict) -> None:
    """Appends a line; on a URL, rewrites the (small) file, as object stores cannot
    append (gcsfs would silently overwrite)."""
    if not self.writes:
      return
    path, line = self.path / "metrics.jsonl", json.dumps(record) + "\n"
    if not self.is_url:
      with path.open("a") as f:
        f.write(line)
      return
    _write_atomic(path, (path.read_text() if path.exists() else "") + line)

  def write_summary(self, summary: dict) -> None:
    self.write_json("summary.json", summary)

  def write_json(self, name: str, record: dict) -> None:
    if self.writes:
      _write_atomic(self.path / name, json.dumps(record, indent=2) + "\n")


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
