"""What a run leaves in its workdir: config.json, metrics.jsonl and summary.json."""

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

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir)

  def refuse_existing_results(self) -> None:
    """Never overwrite the results of an earlier run."""
    existing = [f for f in RESULT_FILES if (self.path / f).exists()]
    if existing:
      raise errors.WorkdirError(
          f"{self.path} already holds results of an earlier run ({', '.join(existing)}). "
          "Pass a new --workdir, or move the old one away; nothing was changed.")

  def create(self) -> None:
    try:
      self.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise errors.WorkdirError(f"Cannot create workdir {self.path}: {e.strerror}") from e

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    _write_atomic(self.path / "config.json", config.to_json_best_effort(indent=2) + "\n")

  def log_metrics(self, record: dict) -> None:
    with open(self.path / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")

  def write_summary(self, summary: dict) -> None:
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
