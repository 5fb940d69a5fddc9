"""The measurements the studies rely on (per-epoch train-split evaluation, capacity
knobs, memorisation of random labels) and a smoke run of every study module."""

import csv
import importlib
import json
import os
import subprocess
import sys

from flax import nnx
import pytest

from conftest import REPO
from experiments import mnist_mlp
from research.models import create_model
from research.training import loop


def _smoke_config(**overrides):
  c = mnist_mlp.get_config("smoke")
  c.progress, c.checkpoint_every_epochs = False, 0
  for key, value in overrides.items():
    c[key] = value
  return c


def _records(workdir, split):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def test_train_split_is_evaluated_every_epoch_and_gives_the_gap(data_dir, tmp_path,
                                                                monkeypatch):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(data_dir))
  summary = loop.train_and_evaluate(
      _smoke_config(eval_train=True, num_epochs=3, label_corruption=0.5), tmp_path)
  train_eval, test = _records(tmp_path, "train_eval"), _records(tmp_path, "test")
  assert [r["epoch"] for r in train_eval] == [1, 2, 3] == [r["epoch"] for r in test]
  # The whole training split, its corrupted labels included: the summary reuses it.
  assert summary["train_accuracy"] == train_eval[-1]["accuracy"]
  assert summary["generalization_gap"] == pytest.approx(
      train_eval[-1]["accuracy"] - test[-1]["accuracy"])


def test_train_split_evaluation_on_a_fixed_subset(data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(data_dir))
  summary = loop.train_and_evaluate(_smoke_config(eval_train=True, eval_train_size=100),
                                    tmp_path)
  for record in _records(tmp_path, "train_eval"):
    assert (100 * record["accuracy"]) == pytest.approx(round(100 * record["accuracy"]))
  # The final train accuracy is still over all 512 training examples.
  assert (512 * summary["train_accuracy"]) == pytest.approx(round(512 * summary["train_accuracy"]))


def _count(model, kind):
  return sum(isinstance(m, kind) for _, m in nnx.iter_graph(model))


def test_depth_multiplier_repeats_layers():
  mlp = create_model("mlp", input_shape=(8, 8, 1), num_classes=3, widths=(16, 8),
                     depth_multiplier=3)
  assert [layer.out_features for layer in mlp.hidden] == [16, 16, 16, 8, 8, 8]
  vgg = create_model("vgg", input_shape=(8, 8, 3), num_classes=3, widths=(4, 8),
                     convs_per_block=1, depth_multiplier=2)
  assert _count(vgg, nnx.Conv) == 4


@pytest.mark.slow
def test_small_mlp_memorises_random_labels(data_dir, tmp_path, monkeypatch):
  """Zhang et al. 2017 in miniature: 1,000 MNIST images with random labels are fitted
  exactly, and the test accuracy stays at chance."""
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(data_dir))
  c = mnist_mlp.get_config()
  c.train_subset, c.label_corruption = 1000, 1.0
  c.model_kwargs.widths = (512,)
  c.batch_size, c.num_epochs, c.eval_every_epochs = 100, 60, 20
  c.progress, c.checkpoint_every_epochs = False, 0
  summary = loop.train_and_evaluate(c, tmp_path)
  assert summary["train_accuracy"] >= 0.99
  assert summary["test_accuracy"] < 0.2  # chance is 0.1


STUDIES = ("random_labels", "regularization", "dropout_mnist", "double_descent",
           "early_stopping", "transfer", "interpretability")


@pytest.mark.parametrize("study", STUDIES)
def test_study_smoke_sweep_runs_and_aggregates(study, data_dir, tmp_path):
  """Each study's `smoke` variant: its real sweep, end to end, as a user runs it."""
  result = subprocess.run(
      [sys.executable, "-m", f"experiments.{study}", f"--workdir={tmp_path}",
       f"--config=experiments/{study}.py:smoke"], cwd=REPO, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, RESEARCH_DATA_DIR=str(data_dir)))
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  module = importlib.import_module(f"experiments.{study}")
  sweep = module.get_sweep("smoke")
  with open(tmp_path / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == len(sweep.points) * sweep.seeds
  for row in table:
    assert 0 <= float(row["test_accuracy"]) <= 1 and int(row["steps"]) > 0
  assert all((tmp_path / name).stat().st_size > 10_000 for name in ("learning_curves.png",
                                                                     "gap.png"))
  if study == "interpretability":   # its analysis of the trained runs
    assert "cascading randomisation" in (tmp_path / "results.md").read_text()
    assert all((tmp_path / name).stat().st_size > 10_000 for name in ("cascade.png", "maps.png"))


def test_compression_smoke_sweep_prunes_quantises_distils_and_writes_one_table(data_dir,
                                                                              tmp_path):
  """experiments/compression.py's smoke sweep: the teacher first, then the runs that
  start from it; results.md holds the study's table, with the sizes each point claims."""
  result = subprocess.run(
      [sys.executable, "-m", "experiments.compression", f"--workdir={tmp_path}",
       "--config=experiments/compression.py:smoke"], cwd=REPO, capture_output=True,
      text=True, timeout=600, env=dict(os.environ, RESEARCH_DATA_DIR=str(data_dir)))
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  summaries = {p.name: json.loads((p / "seed_0" / "summary.json").read_text())
               for p in tmp_path.iterdir() if (p / "seed_0" / "summary.json").exists()}
  assert sorted(summaries) == sorted(p.label for p in
                                     importlib.import_module("experiments.compression")
                                     .get_sweep("smoke").points)
  teacher = summaries["teacher"]
  for name in ("oneshot_sparsity=0.9", "finetuned_sparsity=0.9"):
    kept = summaries[name]["nonzero_kernel_weights"] / summaries[name]["kernel_weights"]
    assert kept == pytest.approx(0.1, abs=1e-3)
  assert summaries["oneshot_sparsity=0.9"]["steps"] == 0
  assert summaries["int8"]["model_bytes"] < teacher["model_bytes"] / 3
  assert "distilling from" in (tmp_path / "distilled_student" / "seed_0" /
                               "output.log").read_text()
  table = (tmp_path / "results.md").read_text().split("## Compressing")[1]
  assert all(f"| {name} | 1 | {summaries[name]['nonzero_params']:,} / " in table
             for name in summaries)
  assert (tmp_path / "sparsity.png").stat().st_size > 10_000


def test_compilation_cache_is_used_and_changes_nothing(data_dir, tmp_path):
  """Runs compile into a persistent cache; a second run loads from it, with bitwise the
  same results."""
  cache = tmp_path / "jax-cache"
  env = dict(os.environ, RESEARCH_DATA_DIR=str(data_dir), JAX_COMPILATION_CACHE_DIR=str(cache))
  summaries = []
  for name in ("first", "second"):
    subprocess.run([sys.executable, "-m", "experiments.mnist_mlp", f"--workdir={tmp_path / name}",
                    "--config=experiments/mnist_mlp.py:smoke"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    summaries.append(json.loads((tmp_path / name / "summary.json").read_text()))
    if name == "first":
      entries = sorted(p.name for p in cache.iterdir())
      assert entries, "nothing was cached"
  assert sorted(p.name for p in cache.iterdir()) == entries  # all hits: nothing new
  for key in ("test_accuracy", "test_loss", "train_loss"):
    assert summaries[0][key] == summaries[1][key]
