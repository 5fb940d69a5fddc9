"""The command line, run as users run it: in a subprocess."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from research import runtime


def run_cli(module, *args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                        env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                        timeout=timeout)


# cifar_cnn's smoke variant runs as the README gives it, in tests/test_readme.py.
@pytest.mark.parametrize("module", ["mnist_mlp", "mnist_cnn"])
def test_smoke_variant_trains_and_reports(module, data_dir, tmp_path):
  workdir = tmp_path / "run"
  result = run_cli(module, f"--config=experiments/{module}.py:smoke", f"--workdir={workdir}",
                   env={"RESEARCH_DATA_DIR": str(data_dir)})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "test accuracy" in result.stdout
  summary = json.loads((workdir / "summary.json").read_text())
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  assert summary["steps"] > 0
  # Not a TTY here, so progress comes as plain lines with an ETA.
  assert "eta" in result.stdout


def test_readme_several_devices_command_runs(data_dir, tmp_path):
  """The README's multi-device example on 8 simulated CPU devices (more than this
  machine's cores): it hung in the gradient all-reduce and aborted while steps were
  queued ahead (research/xla_cpu.py one_call_at_a_time), and the recipe's
  micro_batch_size was refused on several devices."""
  workdir = tmp_path / "run"
  result = run_cli("mnist_cnn", "--config.train_subset=8192", "--config.num_epochs=1",
                   f"--workdir={workdir}", timeout=240,
                   env={"RESEARCH_DATA_DIR": str(data_dir),
                        "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["devices"]["count"] == 8
  assert summary["devices"]["host_cpu"] == runtime.host_cpu() != ""
  assert summary["test_accuracy"] > 0.9


def test_unknown_config_key_fails_before_work(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli("mnist_mlp", "--config.no_such_key=3", f"--workdir={workdir}")
  assert result.returncode != 0
  assert "no_such_key" in result.stderr
  assert not workdir.exists()


def test_wrong_type_fails_before_work(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli("mnist_mlp", "--config.batch_size=many", f"--workdir={workdir}")
  assert result.returncode != 0
  assert "batch_size" in result.stderr
  assert not workdir.exists()


def test_bad_value_names_the_key(tmp_path):
  result = run_cli("mnist_mlp", "--config.optimizer=adamm", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2
  assert "config.optimizer" in result.stderr
  assert "Traceback" not in result.stderr


def test_platform_jax_is_not_on_stops_before_work(tmp_path):
  """A TPU runtime's subprocess that fell back to the CPU must not train at CPU speed."""
  workdir = tmp_path / "run"
  result = run_cli("mnist_mlp", "--config.platform=tpu", f"--workdir={workdir}",
                   env={"JAX_PLATFORMS": "cpu", "RESEARCH_DATA_DIR": ""})
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in result.stderr
  assert "config.platform='tpu'" in lines[0] and "'cpu'" in lines[0]
  assert "jax[tpu]" in lines[0] and "--config.platform=cpu" in lines[0]
  assert not workdir.exists()


def test_missing_data_fails_fast_and_says_how_to_fix(tmp_path):
  start = time.monotonic()
  result = run_cli("mnist_mlp", f"--config.data_dir={tmp_path / 'nowhere'}",
                   "--config.data_source=local", f"--workdir={tmp_path / 'run'}",
                   env={"RESEARCH_DATA_DIR": ""})
  assert time.monotonic() - start < 60
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert "nowhere" in result.stderr                 # where it looked
  assert "--config.data_dir" in result.stderr       # how to fix it
  assert "RESEARCH_DATA_DIR" in result.stderr
  assert not (tmp_path / "run" / "summary.json").exists()


def test_unknown_variant_is_an_error(tmp_path):
  result = run_cli("cifar_cnn", "--config=experiments/cifar_cnn.py:huge",
                   f"--workdir={tmp_path / 'run'}")
  assert result.returncode != 0
  assert "huge" in result.stderr


def test_mnist_cnn_on_a_folder_of_fashion_mnist_idx_files(tmp_path):
  """`--config.dataset=fashion_mnist` against the four standard IDX.gz files."""
  import synthetic_data as synthetic
  folder = synthetic.write_idx_set(
      tmp_path / "fashion", synthetic.make_arrays(10, 64, (28, 28, 1), seed=0),
      synthetic.make_arrays(10, 8, (28, 28, 1), seed=1), compress=True)
  workdir = tmp_path / "run"
  # All of the 640 + 80 images: the smoke variant's subsets ask for more than that.
  result = run_cli("mnist_cnn", "--config=experiments/mnist_cnn.py:smoke",
                   "--config.dataset=fashion_mnist", f"--config.data_dir={folder}",
                   "--config.train_subset=0", "--config.test_subset=0",
                   f"--workdir={workdir}",
                   env={"RESEARCH_CACHE_DIR": str(tmp_path / "cache")})
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["dataset"] == "fashion_mnist"
  assert summary["class_names"][0] == "T-shirt/top"
  assert "idx" in summary["data_source"].lower()
