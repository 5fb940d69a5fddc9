"""Workdirs at URLs (issue 13): a gs:// workdir without GCS support installed stops before
any work, saying what to install; a run and a sweep directory on a URL filesystem
(tests/url_filesystem.py: local folders behind localurl:// URLs, served by etils.epath)
write everything, checkpoints included, through epath, and the run resumes exactly."""

import dataclasses
import io
import json
import os
import pathlib
import signal
import subprocess
import sys

from etils.epath import gpath
import jax
import numpy as np
import pytest

from conftest import REPO
import url_filesystem
from experiments import mnist_mlp
from research import checkpoint
from research import errors
from research import outputs
from research import sweep as sweep_lib
from research import sweep_results
from research.training import loop

# The experiment's command line, as if nothing that reaches gs:// were installed: gcsfs
# (etils.epath's way through fsspec), tensorflow (its other way) and google-cloud-storage
# (orbax's).
WITHOUT_GCS = ("import runpy, sys; sys.modules.update(dict.fromkeys(['gcsfs', 'tensorflow', "
               "'google.cloud.storage'])); sys.argv[0] = 'mnist_mlp'; "
               "runpy.run_module('experiments.mnist_mlp', run_name='__main__')")


def test_gs_workdir_without_gcs_support_stops_before_any_work(tmp_path):
  result = subprocess.run(
      [sys.executable, "-c", WITHOUT_GCS, "--workdir=gs://bucket/runs/1"], cwd=tmp_path,
      env=dict(os.environ, PYTHONPATH=str(REPO), RESEARCH_DATA_DIR=str(tmp_path / "none")),
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("error: ") and "gs://bucket/runs/1" in message
  assert "pip install gcsfs google-cloud-storage" in message
  assert os.listdir(tmp_path) == []     # no local gs: folder, nothing written; and the
                                        # data (nowhere to be found) was not loaded first


def test_each_missing_piece_is_named(monkeypatch):
  monkeypatch.setitem(sys.modules, "gcsfs", None)                # etils.epath's own check
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  with pytest.raises(errors.WorkdirError, match="Run `pip install gcsfs"):
    outputs.workdir_path("gs://bucket/run")
  with pytest.raises(errors.WorkdirError, match="no filesystem for foo://"):
    outputs.workdir_path("foo://bucket/run")
  with pytest.raises(errors.WorkdirError, match="not on s3://"):   # orbax cannot write there
    checkpoint.check_storage("s3://bucket/run")
  checkpoint.check_storage(url_filesystem.url("/tmp/x"))          # TensorStore can


def tiny_config(data_dir, **overrides):
  """24 steps; logs every 3, checkpoints every 5 and every epoch (8 steps)."""
  c = mnist_mlp.get_config()
  c.data_dir, c.progress, c.best_metric = str(data_dir), False, "validation_accuracy"
  c.train_subset, c.test_subset, c.validation_size, c.batch_size = 512, 256, 64, 64
  c.num_epochs, c.log_every_steps, c.checkpoint_every_steps = 3, 3, 5
  for key, value in overrides.items():
    c[key] = value
  return c


@dataclasses.dataclass
class UrlRun:
  sweep_url: str            # localurl://... of a sweep directory
  url: str                  # the run's workdir in it, as a sweep plans it
  folder: pathlib.Path      # the local folder behind `url`
  cwd: pathlib.Path         # where the run was started
  summary: dict


@pytest.fixture(scope="module")
def url_run(data_dir, tmp_path_factory):
  """A run on a URL, stopped by SIGTERM at step 12 and resumed, as a sweep's one job;
  with asynchronous saves, as on an accelerator with a bucket."""
  root, cwd = tmp_path_factory.mktemp("bucket"), tmp_path_factory.mktemp("cwd")
  sweep_url = url_filesystem.url(root / "sweep")
  run_url = f"{sweep_url}/base/seed_0"
  stop = loop.Hooks(at_step={12: lambda state: os.kill(os.getpid(), signal.SIGTERM)})
  before = os.getcwd()
  os.chdir(cwd)
  try:
    with pytest.raises(errors.Interrupted, match=f"checkpoint in {run_url}/checkpoints/12"):
      loop.run_training(tiny_config(data_dir, async_checkpoints="on"), run_url, stop)
    _, summary = loop.run_training(tiny_config(data_dir, async_checkpoints="on"), run_url)
  finally:
    os.chdir(before)
  return UrlRun(sweep_url, run_url, root / "sweep" / "base" / "seed_0", cwd, summary)


def _metrics(text: str) -> list[dict]:
  return [{k: v for k, v in json.loads(line).items() if k != "examples_per_s"}
          for line in text.splitlines()]


def test_a_run_on_a_url_writes_through_epath_and_resumes_exactly(url_run, data_dir, tmp_path):
  assert url_run.summary["resumed_from_step"] == 12
  assert os.listdir(url_run.cwd) == []            # no local localurl: folder
  files = {p.name for p in url_run.folder.iterdir()}
  assert {"config.json", "metrics.jsonl", "summary.json", "curves.png",
          "checkpoints"} <= files
  assert "run.lock" not in files                  # no flock on an object store
  # The checkpoints went through the URL: orbax wrote them there, and reads them back.
  saved = checkpoint.Checkpoints(f"{url_run.url}/checkpoints", read_only=True)
  assert saved.steps() == [16, 20, 24] and saved.directory.as_posix() == str(
      url_run.folder / "checkpoints")
  params = saved.read_arrays(24)["params"]
  saved.close()
  # Bitwise the run that never stopped, on a local disk, with synchronous saves.
  local = tmp_path / "run"
  state, summary = loop.run_training(tiny_config(data_dir), local)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    assert np.array_equal(x, np.asarray(y))
  assert (_metrics((url_run.folder / "metrics.jsonl").read_text())
          == _metrics((local / "metrics.jsonl").read_text()))
  assert url_run.summary["test_accuracy"] == summary["test_accuracy"]


def test_a_run_that_crashed_before_its_first_checkpoint_starts_over(data_dir, tmp_path,
                                                                    monkeypatch):
  """It logged step 3, then died (a crash, not a signal) before the checkpoint of step
  5: on an object store its empty checkpoints/ folder does not exist, yet the run is
  still recognised as one that can start again, not refused as an old run's results."""
  monkeypatch.chdir(tmp_path)
  run_url = url_filesystem.url(tmp_path / "bucket" / "run")

  def crash(state):
    raise RuntimeError("crash at step 4")

  with pytest.raises(RuntimeError, match="crash at step 4"):
    loop.run_training(tiny_config(data_dir), run_url, loop.Hooks(at_step={4: crash}))
  assert (tmp_path / "bucket" / "run" / "metrics.jsonl").exists()
  _, summary = loop.run_training(tiny_config(data_dir), run_url)
  assert summary["steps"] == 24 and summary["resumed_from_step"] is None


def test_an_unreadable_checkpoint_at_a_url_is_moved_aside(data_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  folder = tmp_path / "bucket" / "run"
  config = tiny_config(data_dir, num_epochs=1, best_metric="")   # checkpoints 5 and 8
  loop.run_training(config, url_filesystem.url(folder))
  for f in (folder / "checkpoints" / "8" / "state").rglob("*"):   # truncate every file
    if f.is_file():
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
  _, summary = loop.run_training(tiny_config(data_dir, num_epochs=2, best_metric=""),
                                 url_filesystem.url(folder))
  assert summary["resumed_from_step"] == 5 and summary["steps"] == 16
  assert (folder / "checkpoints.unreadable" / "8" / "state").is_dir()   # moved, not lost
  assert os.listdir(tmp_path) == ["bucket"]


def test_a_sweep_directory_at_a_url(url_run, data_dir):
  """Planned, listed and aggregated through epath; running its jobs from here (their logs
  are local files) is refused."""
  sweep = sweep_lib.Sweep([sweep_lib.Point({}), sweep_lib.Point({"learning_rate": 0.01})])
  jobs = sweep_lib.plan(sweep, tiny_config(data_dir), url_run.sweep_url, 1,
                        ["python", "-m", "experiments.mnist_mlp"], "experiments/mnist_mlp.py",
                        {})
  assert [str(j.workdir) for j in jobs] == [url_run.url,
                                            f"{url_run.sweep_url}/learning_rate=0.01/seed_0"]
  sweep_lib.check_existing(jobs)                  # reads the finished run's config.json
  assert [sweep_lib.status(j) for j in jobs] == ["done", "new"]
  printed = io.StringIO()
  sweep_lib.print_commands(jobs, file=printed)
  assert f"--workdir={jobs[1].workdir}" in printed.getvalue()
  sweep_results.write_plan(sweep, jobs, url_run.sweep_url)
  sweep_results.aggregate(sweep, jobs, url_run.sweep_url, 1)
  folder = url_run.folder.parent.parent
  assert {"sweep.json", "results.csv", "results.md", "learning_curves.png",
          "test_accuracy.png", "gap.png"} <= {p.name for p in folder.iterdir()}
  assert "| base | 1 |" in (folder / "results.md").read_text()
  with pytest.raises(errors.WorkdirError, match="--print-commands"):
    sweep_lib.check_can_execute(url_run.sweep_url)
