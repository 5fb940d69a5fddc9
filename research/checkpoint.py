"""Checkpoints of a run: the one module that talks to `orbax.checkpoint`.

A checkpoint is an orbax step directory `WORKDIR/checkpoints/<step>/` with two items:
- `state`: the train state pytree (step, params, batch_stats, opt_state), restored onto the
  shardings of the current mesh, so a checkpoint written on 8 devices loads on 1 and back;
- `progress`: a JSON document with what the loop needs to continue exactly: the train
  metrics of the unfinished log window, the last train record, the best-so-far and the
  early-stopping counters (see `training.resume.TrainProgress`).

The data order and all randomness are functions of (seed, step), so the step inside the
state is the position in the data; nothing else about the data is stored.

Saves are asynchronous on accelerators (`async_checkpoints=auto`): orbax copies the state
to the host, returns, and writes in a background thread while training goes on. On a CPU
they are synchronous: a save of these models takes a fraction of a second, a background
writer would compete with training for the same cores, and an error (read-only or full
disk) surfaces at the step that caused it. An asynchronous save is waited for before the
next save, before any restore or listing of the checkpoints, before the final evaluation
and summary.json, and at `close` (which every run reaches, an interrupted one included);
a storage error surfaces at that wait with the same message, naming the step of the save
that failed.

Orbax makes each save atomic in its default way for the filesystem: a temporary directory
renamed when complete on a local disk, a commit file written last on GCS. A crash during
a save leaves the earlier checkpoints as they were; a checkpoint that fails to restore is
skipped with a warning and the one before it is used.

The directory is a local path or a URL, through `etils.epath`. Orbax writes the arrays
with TensorStore, which it points at gs:// or at a local path (`as_posix()`), so other
schemes are refused before any work (`check_storage`).
"""

import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import sys
import threading
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from research import errors
from research import outputs


def async_saves(setting: str, platform: str) -> bool:
  """config.async_checkpoints on `platform`: auto is on for accelerators, off on CPU."""
  return setting == "on" or (setting == "auto" and platform != "cpu")


def check_storage(workdir: str | os.PathLike) -> None:
  """Refuses, before any work, a URL workdir that orbax cannot write checkpoints to, and
  a gs:// one without google-cloud-storage (orbax deletes old checkpoints on GCS with
  it). A scheme that etils.epath does not know is left to `outputs.workdir_path`."""
  if not outputs.is_url(workdir):
    return
  scheme = os.fspath(workdir).split("://", 1)[0]
  if scheme == "gs":
    if not _installed("google.cloud.storage"):
      raise errors.WorkdirError(
          f"Cannot write checkpoints to {workdir}: orbax needs google-cloud-storage on "
          f"gs://. Run `pip install {outputs.INSTALL['gs']}`, then the same command "
          "again; nothing was written.")
  elif not _has_local_name(workdir):
    raise errors.WorkdirError(
        f"Cannot write checkpoints to {workdir}: orbax stores them on gs:// or on a "
        f"local (or mounted) path, not on {scheme}://. Use one of those as the workdir.")


def _has_local_name(url: str | os.PathLike) -> bool:
  """Whether epath's path class for `url` gives TensorStore a local name (`as_posix`)."""
  try:
    return os.path.isabs(epath.Path(url).as_posix())
  except KeyError:  # no filesystem for the scheme at all
    return True


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:   # a parent package is missing
    return False


@dataclasses.dataclass
class _KeepLatestAndBest:
  """An orbax preservation policy: the last `keep` checkpoints and the best one."""
  keep: int
  best_step: int | None = None

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    latest = {info.step for info in checkpoints[-self.keep:]} if self.keep else set()
    return [info.step in latest or info.step == self.best_step for info in checkpoints]


def _state_items(state) -> dict:
  items = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
           "opt_state": state.opt_state}
  if state.average is not None:   # weight averaging (training/averaging.py)
    items["average"] = state.average
  return items


def _abstract(tree):
  """Shapes, dtypes and the target shardings of the current mesh."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


class Checkpoints:
  """The checkpoints of one workdir: save, list, restore with fallback.

  Saves are atomic in orbax's default way for the filesystem of `directory` (a rename of
  a complete temporary directory on a local disk, a commit file on GCS), unless
  `temporary_path_class` names another orbax `TemporaryPath` class to save through. With
  `async_saves`, `save` returns once the state is on the host (see the module)."""

  def __init__(self, directory: str | os.PathLike, keep: int = 3,
               best_step: int | None = None, read_only: bool = False,
               temporary_path_class: type | None = None, async_saves: bool = False):
    self.directory = _absolute(epath.Path(directory))
    self._policy = _KeepLatestAndBest(keep=max(keep, 1), best_step=best_step)
    self._pending: int | None = None    # the step of a save not yet waited for
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_saves, create=False, read_only=read_only,
        cleanup_tmp_directories=not read_only, preservation_policy=self._policy,
        temporary_path_class=temporary_path_class)   # None: orbax's default
    if not read_only:
      _make_dir(self.directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """The complete checkpoints, once a save in progress has finished."""
    self.wait()
    return sorted(self._manager.all_steps())

  def path(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def set_best_step(self, step: int | None) -> None:
    self._policy.best_step = step

  def save(self, state, progress: dict) -> None:
    self.wait()
    step = int(state.step)
    with self._storage_errors(step):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_state_items(state)),
          progress=ocp.args.JsonSave(progress)), force=True)
    self._pending = step

  def wait(self) -> None:
    """Blocks until the last save is complete; an asynchronous save's storage error
    surfaces here, as a CheckpointError naming its step."""
    step, self._pending = self._pending, None
    if step is not None:
      with self._storage_errors(step):
        self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _storage_errors(self, step: int):
    """Turns a storage error of the save of `step` into a CheckpointError."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not _is_storage_error(e):
        raise
      # Orbax leaves sibling write tasks that failed the same way; asyncio would log each
      # with a traceback when they are collected, after (and burying) the message below.
      logging.getLogger("asyncio").setLevel(logging.CRITICAL)
      raise errors.CheckpointError(
          f"Cannot write checkpoint {self.path(step)}: {_storage_reason(e)}. The earlier "
          f"checkpoints in {self.directory} are untouched; free some space or make the "
          "workdir writable, then run the same command again to resume.") from e

  def restore(self, step: int, state) -> tuple[Any, dict]:
    """Step `step` onto the structure and shardings of `state`; returns (state, progress)."""
    self.wait()
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(_state_items(state))),
        progress=ocp.args.JsonRestore()))
    return state.replace(**restored["state"]), dict(restored["progress"])

  def restore_latest(self, state, quarantine: bool = False) -> tuple[Any, dict] | None:
    """The newest checkpoint that restores, skipping (with a warning) any that do not.

    With `quarantine`, a skipped checkpoint is moved, never deleted, to
    `checkpoints.unreadable/`, so that the resumed run can save that step again."""
    for step in reversed(self.steps()):
      try:
        return self.restore(step, state)
      except Exception as e:  # pylint: disable=broad-except
        self._skipped(step, e, self._quarantine(step) if quarantine else None)
    return None

  def restore_weights_of_best(self, target: dict) -> tuple[int, dict] | None:
    """(step, `restore_weights`) of the best checkpoint that the newest readable progress
    record names, else of the newest checkpoint that restores; skips (with a warning)
    any that do not. None if there is none."""
    steps = self.steps()
    best = None
    for step in reversed(steps):
      try:
        best = (self.read_progress(step).get("best") or {}).get("step")
        break
      except Exception as e:  # pylint: disable=broad-except
        self._skipped(step, e)
    for step in dict.fromkeys(([best] if best in steps else []) + steps[::-1]):
      try:
        return step, self.restore_weights(step, target)
      except Exception as e:  # pylint: disable=broad-except
        self._skipped(step, e)
    return None

  def _skipped(self, step: int, e: Exception, moved: epath.Path | None = None) -> None:
    reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    print(f"warning: checkpoint {self.path(step)} is unreadable and was skipped "
          f"({reason})" + (f"; moved to {moved}" if moved else ""),
          file=sys.stderr, flush=True)

  def _quarantine(self, step: int) -> epath.Path:
    target = self.directory.with_name(self.directory.name + ".unreadable") / str(step)
    _make_dir(target.parent)
    suffix = 0
    while target.exists():
      suffix += 1
      target = target.with_name(f"{step}.{suffix}")
    self.path(step).rename(target)
    self._manager.reload()
    return target

  def read_progress(self, step: int) -> dict:
    """The loop's progress record saved with step `step` (its best-so-far, ...)."""
    self.wait()
    restored = self._manager.restore(step, args=ocp.args.Composite(
        progress=ocp.args.JsonRestore()))
    return dict(restored["progress"])

  def restore_weights(self, step: int, target: dict) -> dict:
    """The parts of step `step`'s state that `target` names (e.g. params and
    batch_stats, as abstract arrays with the shardings to restore onto); the rest, such
    as the optimiser state, is not read. So a model is rebuilt for inference without its
    optimiser, on any devices, whatever devices saved it."""
    self.wait()
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    with ocp.PyTreeCheckpointer() as checkpointer:
      return checkpointer.restore(self.path(step) / "state", args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True))

  def read_arrays(self, step: int) -> dict:
    """The saved train state of `step` as host arrays, for inspection and tests."""
    self.wait()
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fallback_sharding=device)))
    return jax.tree.map(np.asarray, restored["state"])

  def close(self) -> None:
    """Waits for the last save (raising its storage error), then closes orbax."""
    try:
      self.wait()
    finally:
      self._manager.close()


# TensorStore reports I/O failures as ValueErrors that carry an absl status code.
_STORAGE_STATUS = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE", "DATA_LOSS",
                   "FAILED_PRECONDITION", "UNKNOWN")


def _is_storage_error(e: Exception) -> bool:
  return isinstance(e, OSError) or (isinstance(e, ValueError) and (
      "os_error_code" in str(e) or str(e).startswith(_STORAGE_STATUS)))


def _storage_reason(e: Exception) -> str:
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  text = str(e)
  for reason in ("No space left on device", "Read-only file system", "Permission denied",
                 "Disk quota exceeded"):
    if reason in text:
      return reason
  return text.splitlines()[0][:300]


def _absolute(path: epath.Path) -> epath.Path:
  """Orbax needs an absolute path; a URL already is one, and stays a URL."""
  return path if outputs.is_url(path) else epath.Path(os.path.abspath(path))


def _make_dir(path: epath.Path) -> None:
  """Creates a checkpoint directory. An object store (gcsfs) has no empty folders, so
  there it also gets a file: a run stopped before its first checkpoint then still shows
  one, and is not taken for an old run's results
  (`RunDir.refuse_results_without_checkpoints`); a checkpoint can be moved into it."""
  try:
    path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
      (path / "README.txt").write_text("Orbax checkpoints of this run, a folder per step "
                                       "(docs/checkpoints.md).\n")
  except OSError as e:
    raise errors.CheckpointError(f"Cannot create checkpoint directory {path}: "
                                 f"{e.strerror or e}") from e


class StopSignals:
  """SIGTERM and SIGINT ask the loop to checkpoint and stop at the next step boundary.

  A second signal of either kind restores the default behaviour (die, or
  KeyboardInterrupt), so a stuck run can still be stopped."""

  def __init__(self):
    self.received: str | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.received = signal.Signals(signum).name
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"\n{self.received} received: saving a checkpoint at the end of this step, "
          "then stopping (send it again to stop at once).", file=sys.stderr, flush=True)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
