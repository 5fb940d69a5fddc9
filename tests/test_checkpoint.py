"""Checkpoints, run as users run them: real training subprocesses on an MNIST subset that
are killed, interrupted, corrupted and resumed, then compared bit for bit with a run that
never stopped (issue 3)."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
import hooked_run
from research import checkpoint

# 512 train examples / batch 64 = 8 steps per epoch, 24 steps. Logs every 3 steps and
# checkpoints every 5 steps and every epoch, so these do not line up with each other.
ARGS = ["--config.train_subset=512", "--config.test_subset=256",
        "--config.validation_size=64", "--config.batch_size=64", "--config.num_epochs=3",
        "--config.log_every_steps=3", "--config.checkpoint_every_steps=5",
        "--config.best_metric=validation_accuracy", "--config.eval_batch_size=256"]
TOTAL = 24
TIMING = {"examples_per_s"}
# Asynchronous saves, as on GPU and TPU, forced on the CPU. The reference run saves
# synchronously, so the tests that use both also check that the mode changes nothing.
ASYNC = "--config.async_checkpoints=on"


def start(workdir, *extra, env=None, hooks=None, module="mnist_mlp"):
  """The experiment's command line; with `hooks` (tests/hooked_run.py's environment
  variables), the same command line run through tests/hooked_run.py."""
  command = ([str(hooked_run.PATH), f"--config=experiments/{module}.py"] if hooks
             else ["-m", f"experiments.{module}"])
  return subprocess.Popen(
      [sys.executable, *command, f"--workdir={workdir}", *ARGS, *extra],
      cwd=REPO, env=dict(os.environ, **(env or {}), **(hooks or {})),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(workdir, *extra, env=None, hooks=None, module="mnist_mlp"):
  proc = start(workdir, *extra, env=env, hooks=hooks, module=module)
  out, _ = proc.communicate(timeout=300)
  return proc.returncode, out


def final_params(workdir, step=TOTAL):
  ckpts = checkpoint.Checkpoints(pathlib.Path(workdir) / "checkpoints", read_only=True)
  try:
    arrays = ckpts.read_arrays(step)
  finally:
    ckpts.close()
  assert int(arrays["step"]) == step
  return arrays["params"]


def metrics(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def assert_same_run(workdir, reference):
  import jax
  a, b = final_params(workdir), final_params(reference)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y)    # bitwise, not to tolerance
  assert metrics(workdir) == metrics(reference)
  sa = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
  sb = json.loads((pathlib.Path(reference) / "summary.json").read_text())
  assert sa["test_accuracy"] == sb["test_accuracy"] and sa["best"] == sb["best"]


def test_saves_are_asynchronous_on_accelerators_only_by_default():
  assert [checkpoint.async_saves("auto", p) for p in ("cpu", "gpu", "tpu")] == [
      False, True, True]
  assert checkpoint.async_saves("on", "cpu") and not checkpoint.async_saves("off", "gpu")


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  os.environ["RESEARCH_DATA_DIR"] = str(data_dir)
  workdir = tmp_path_factory.mktemp("reference") / "run"
  code, out = run(workdir)
  assert code == 0, out[-3000:]
  return workdir


# Killed before the first checkpoint, and late (mid-epoch with asynchronous saves below).
@pytest.mark.parametrize("kill_after,last_checkpoint", [(2, 0), (19, 16)])
def test_sigkill_then_resume_is_exact(reference, tmp_path, kill_after, last_checkpoint):
  workdir = tmp_path / "run"
  code, out = run(workdir, hooks={hooked_run.SIGNAL_AT: f"{kill_after}:KILL"})
  assert code == -signal.SIGKILL, out[-2000:]
  assert not (workdir / "summary.json").exists()
  code, out = run(workdir)
  assert code == 0, out[-3000:]
  if last_checkpoint:
    assert f"resuming from checkpoint step {last_checkpoint} " in out
  assert_same_run(workdir, reference)


# With asynchronous saves, a kill right after a step may land while the save before it
# is still being written: the run resumes from that one if it was complete, else from the
# one before, and ends the same.
@pytest.mark.parametrize("kill_after,last_checkpoints", [(11, (10, 8))])
def test_sigkill_with_async_saves_then_resume_is_exact(reference, tmp_path, kill_after,
                                                       last_checkpoints):
  workdir = tmp_path / "run"
  code, out = run(workdir, ASYNC, hooks={hooked_run.SIGNAL_AT: f"{kill_after}:KILL"})
  assert code == -signal.SIGKILL, out[-2000:]
  code, out = run(workdir, ASYNC)
  assert code == 0, out[-3000:]
  assert int(out.split("resuming from checkpoint step ")[1].split()[0]) in last_checkpoints
  assert_same_run(workdir, reference)


# Asynchronous saves (a synchronous one is the same orbax commit, on the main thread).
def test_sigkill_during_a_save_keeps_earlier_checkpoints(reference, tmp_path):
  workdir = tmp_path / "run"
  proc = start(workdir, ASYNC, hooks={hooked_run.SAVE_PAUSE: "60"})
  seen = {}
  for line in proc.stdout:      # the first save (step 5) pauses before its commit
    if "[test hook] save of 5 paused" in line:
      seen["paused"] = time.monotonic()
    if "epoch 0.75 train" in line:   # the log of step 6
      seen["step 6"] = time.monotonic()
    if "paused" in seen and "step 6" in seen:
      break
  # Training went on while the save was being written.
  assert seen["step 6"] - seen["paused"] < 30, "step 6 waited for the save of step 5"
  proc.kill()
  proc.communicate(timeout=60)
  assert not (workdir / "checkpoints" / "5").exists()     # only its temporary directory
  assert any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())
  code, out = run(workdir, ASYNC)
  assert code == 0, out[-3000:]
  assert "resuming" not in out          # nothing was complete: starts over, exactly
  assert_same_run(workdir, reference)


# With asynchronous saves, the save at the signal is waited for before the exit (other
# tests stop synchronous runs with SIGTERM).
def test_sigterm_saves_at_the_current_step_and_exits_3(reference, tmp_path):
  workdir = tmp_path / "run"
  code, out = run(workdir, ASYNC, hooks={hooked_run.SIGNAL_AT: "12:TERM"})
  assert code == 3, out[-3000:]
  assert "SIGTERM" in out and f"stopped at step 12 of {TOTAL}" in out
  assert (workdir / "checkpoints" / "12" / "commit_success.txt").is_file()
  assert not (workdir / "summary.json").exists()
  code, out = run(workdir, ASYNC)
  assert code == 0, out[-3000:]
  assert "resuming from checkpoint step 12 " in out
  assert_same_run(workdir, reference)


def test_several_steps_per_call_resume_exactly(reference, tmp_path):
  """Calls of several steps (cut at logs and checkpoints), stopped by SIGTERM and resumed
  with another number of steps per call: still bitwise the reference run's."""
  workdir = tmp_path / "run"
  code, out = run(workdir, "--config.steps_per_call=4",
                  hooks={hooked_run.SIGNAL_AT: "12:TERM"})
  assert code == 3 and f"stopped at step 12 of {TOTAL}" in out, out[-3000:]
  code, out = run(workdir, "--config.steps_per_call=7")
  assert code == 0, out[-3000:]
  assert "resuming from checkpoint step 12 " in out and "steps_per_call: 4 -> 7" in out
  assert_same_run(workdir, reference)


def test_external_sigterm_during_training(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = start(workdir, "--config.num_epochs=200", "--config.checkpoint_every_steps=0",
               "--config.checkpoint_every_epochs=0")
  for line in proc.stdout:
    if "epoch 1.00 train" in line:
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 3, out[-3000:]
  step = int(out.split("stopped at step ")[1].split()[0])
  assert os.listdir(workdir / "checkpoints") == [str(step)]
  assert all(json.loads(l)["step"] <= step
             for l in (workdir / "metrics.jsonl").read_text().splitlines())


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(reference, tmp_path):
  workdir = tmp_path / "run"
  code, out = run(workdir, hooks={hooked_run.SIGNAL_AT: "17:KILL"})
  assert code == -signal.SIGKILL
  assert {"15", "16"} <= set(os.listdir(workdir / "checkpoints"))
  for f in (workdir / "checkpoints" / "16" / "state").rglob("*"):   # truncate every file
    if f.is_file():
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
  code, out = run(workdir)
  assert code == 0, out[-3000:]
  assert f"{workdir / 'checkpoints' / '16'} is unreadable and was skipped" in out
  assert "resuming from checkpoint step 15 " in out
  assert (workdir / "checkpoints.unreadable" / "16").is_dir()    # moved, not deleted
  assert_same_run(workdir, reference)


EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


@pytest.mark.parametrize("first,second", [(8, 1)])
def test_restore_on_another_device_count(reference, tmp_path, first, second):
  workdir = tmp_path / "run"
  code, out = run(workdir, f"--config.num_devices={first}", env=EIGHT_DEVICES,
                  hooks={hooked_run.SIGNAL_AT: "10:TERM"})
  assert code == 3, out[-3000:]
  assert f"on {first} cpu device(s)" in out
  code, out = run(workdir, f"--config.num_devices={second}", env=EIGHT_DEVICES)
  assert code == 0, out[-3000:]
  assert "resuming from checkpoint step 10 " in out and f"on {second} cpu device(s)" in out
  assert "num_devices" in out                        # reported as an allowed change
  import jax
  for x, y in zip(jax.tree.leaves(final_params(workdir)),
                  jax.tree.leaves(final_params(reference))):
    np.testing.assert_allclose(x, y, atol=1e-4)      # other reductions: float tolerance


def test_config_changes_on_resume(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  code, out = run(workdir, "--config.learning_rate=0.01", "--config.batch_size=32")
  assert code == 2
  assert "config.batch_size: 64 -> 32" in out and "config.learning_rate" in out
  assert "Traceback" not in out
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before

  code, out = run(workdir)                       # finished: reports, trains nothing
  assert code == 0 and "finished run" in out
  assert (workdir / "summary.json").read_bytes() == before["summary.json"]

  code, out = run(workdir, "--config.num_epochs=4", "--config.log_every_steps=7")
  assert code == 0, out[-3000:]
  assert "num_epochs: 3 -> 4" in out and "log_every_steps: 3 -> 7" in out
  assert f"resuming from checkpoint step {TOTAL} " in out
  assert json.loads((workdir / "summary.json").read_text())["steps"] == 32
  assert metrics(workdir)[: len(metrics(reference))] == metrics(reference)


def test_nan_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  workdir = tmp_path / "run"
  code, out = run(workdir, "--config.learning_rate=1e12", "--config.optimizer=sgd",
                  "--config.checkpoint_every_steps=1")
  assert code == 2, out[-3000:]
  assert "diverged" in out and "Traceback" not in out
  step = int(out.split("at step ")[1].split()[0])
  saved = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  assert saved and max(saved) < step            # nothing from the diverged steps
  assert f"last good checkpoint is step {max(saved)}" in out
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", read_only=True)
  import jax
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(ckpts.read_arrays(max(saved))))
  ckpts.close()


def test_two_runs_on_one_workdir(tmp_path, data_dir):
  workdir = tmp_path / "run"
  first = start(workdir, "--config.num_epochs=200")
  for line in first.stdout:
    if "train loss" in line:
      break
  code, out = run(workdir)
  first.kill()
  first.communicate(timeout=60)
  assert code == 2, out[-3000:]
  assert f"pid {first.pid}" in out and str(workdir) in out
  # The first run is dead now (SIGKILL): the lock it held does not block anyone.
  from research import outputs
  rundir = outputs.RunDir(workdir)
  rundir.lock()
  rundir.unlock()


def test_eval_mode_prints_test_metrics_without_training(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  code, out = run(workdir, "--config.mode=eval", "--config.restore_best=true")
  assert code == 0, out[-3000:]
  summary = json.loads(before["summary.json"])
  assert f"checkpoint step {summary['best']['step']}: test accuracy" in out
  assert "train loss" not in out
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MB tmpfs: room for one checkpoint of the MLP (600 kB with Adam), not two."""
  mount = tmp_path / "disk"
  mount.mkdir()
  made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                        capture_output=True)
  if made.returncode:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


# An asynchronous save's error surfaces at the next wait (here the save of step 24), with
# the same message, naming the step that failed.
@pytest.mark.parametrize("saves", ["sync", "async"])
def test_full_disk_names_the_path_and_keeps_earlier_checkpoints(small_disk, data_dir, saves):
  workdir = small_disk / "run"
  extra = [ASYNC] if saves == "async" else []
  code, out = run(workdir, "--config.checkpoint_every_steps=0", *extra)
  assert code == 2, out[-3000:]
  assert f"error: Cannot write checkpoint {workdir / 'checkpoints' / '16'}" in out, out[-3000:]
  assert "No space left on device" in out, out[-3000:]
  # Our code handles the error, so no traceback passes through it. (Orbax's own writer
  # threads may still print theirs while the process exits; that noise is orbax's.)
  assert f'File "{REPO / "research"}' not in out, out[-3000:]
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", read_only=True)
  assert ckpts.steps() == [8], (ckpts.steps(), out[-3000:])
  assert int(ckpts.read_arrays(8)["step"]) == 8
  ckpts.close()


def test_early_stopping_with_restore_best(tmp_path, data_dir):
  # best_mode=min on an accuracy that rises: epoch 1 stays the best, so patience 1 stops
  # the run after epoch 2, and restore_best reports the checkpoint of epoch 1.
  workdir = tmp_path / "run"
  code, out = run(workdir, "--config.best_mode=min", "--config.early_stopping_patience=1",
                  "--config.restore_best=true", "--config.keep_checkpoints=1")
  assert code == 0, out[-3000:]
  assert "early stopping at epoch 2" in out
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["stopped_early"] and summary["steps"] == 16
  assert summary["best"]["step"] == summary["reported_step"] == 8
  assert sorted(os.listdir(workdir / "checkpoints")) == ["16", "8"]   # last 1 + best
  code, out = run(workdir, "--config.best_mode=min", "--config.early_stopping_patience=1",
                  "--config.restore_best=true", "--config.keep_checkpoints=1")
  assert code == 0 and "finished run" in out
