"""Cross-validation (issue 14, section 4): stratified folds of the training split, one
run per fold in a sweep, and the mean ± std over folds and seeds in the results."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from experiments import mnist_mlp
from research import configs, errors, sweep_results
from research import sweep as sweep_lib
from research.data import splits
from research.training import inputs


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_partition_the_training_split_stratified(folds):
  labels = np.repeat(np.arange(4), [23, 10, 7, 1]).astype(np.int32)
  fold = splits.fold_assignment(labels, folds, seed=3)
  assert sorted(set(fold)) == list(range(folds))   # every example in exactly one fold
  sizes = np.bincount(fold, minlength=folds)
  assert sizes.sum() == len(labels) and np.ptp(sizes) <= 1
  for c in range(4):   # each class split as evenly as it can be
    assert np.ptp(np.bincount(fold[labels == c], minlength=folds)) <= 1
  np.testing.assert_array_equal(fold, splits.fold_assignment(labels, folds, seed=3))
  assert not np.array_equal(fold, splits.fold_assignment(labels, folds, seed=4))


def _rows(images: np.ndarray) -> set[bytes]:
  return {image.tobytes() for image in images}


def test_each_fold_validates_on_its_own_part_of_train_and_never_on_test(tiny_folder):
  config = configs.base_config()
  config.dataset, config.data_dir = "folder", str(tiny_folder)
  whole = inputs.load_full(config)
  train, test = _rows(whole.train.images), _rows(whole.test.images)
  assert len(train) == len(whole.train) and not train & test   # distinct images
  config.cv_folds, validated = 3, []
  for fold in range(3):
    config.cv_fold = fold
    config.seed = 7 + fold   # the folds follow split_seed, not seed
    dataset = inputs.load_full(config)
    np.testing.assert_array_equal(dataset.test.images, whole.test.images)
    np.testing.assert_array_equal(dataset.test.labels, whole.test.labels)
    held, kept = _rows(dataset.validation.images), _rows(dataset.train.images)
    assert not held & kept and held | kept == train
    assert np.bincount(dataset.validation.labels).tolist() == [4, 4, 4]   # 12 per class
    validated.append(held)
  assert set.union(*validated) == train and sum(map(len, validated)) == len(train)
  config.split_seed = 1   # another draw of the folds
  assert _rows(inputs.load_full(config).validation.images) != validated[-1]


@pytest.mark.parametrize("overrides, key", [
    ({"cv_folds": 1}, "cv_folds"), ({"cv_folds": 3, "cv_fold": 3}, "cv_fold"),
    ({"cv_fold": 1}, "cv_fold"), ({"cv_folds": 2, "validation_size": 0.1}, "validation_size")])
def test_bad_cross_validation_keys_are_named(overrides, key):
  config = configs.base_config()
  config.update(overrides)
  with pytest.raises(errors.ConfigError, match=f"config.{key}"):
    configs.validate(config)


def test_best_metric_on_validation_accepts_a_fold():
  config = configs.base_config()
  config.best_metric, config.cv_folds = "validation_accuracy", 2
  configs.validate(config)


def test_plan_runs_every_fold_of_every_seed_and_reports_mean_and_std(tmp_path):
  sweep = sweep_lib.Sweep([sweep_lib.Point({"l2": 0.0}, name="p")])
  jobs = sweep_lib.plan(sweep, mnist_mlp.get_config("smoke"), tmp_path, 2,
                        ["python", "-m", "experiments.mnist_mlp"],
                        "experiments/mnist_mlp.py:smoke", {}, cv_folds=3)
  assert [j.name for j in jobs] == [f"p/seed_{s}_fold_{f}" for s in (0, 1) for f in range(3)]
  assert [(j.config.seed, j.config.cv_folds, j.config.cv_fold) for j in jobs] == [
      (s, 3, f) for s in (0, 1) for f in range(3)]
  assert "--config.cv_folds=3" in jobs[4].argv and "--config.cv_fold=1" in jobs[4].argv
  test = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
  for job, accuracy in zip(jobs, test):
    job.workdir.mkdir(parents=True)
    (job.workdir / "summary.json").write_text(json.dumps(
        {"train_accuracy": 1.0, "test_accuracy": accuracy}))
  table = sweep_results.rows(jobs)
  assert [(r["seed"], r["fold"]) for r in table] == [(s, f) for s in (0, 1) for f in range(3)]
  sweep_results.write_markdown(sweep, sweep_results.per_point(sweep, table), 2,
                               tmp_path / "results.md", cv_folds=3)
  markdown = (tmp_path / "results.md").read_text()
  cell = f"{100 * np.mean(test):.2f} ± {100 * np.std(test, ddof=1):.2f}"
  assert "| p | 6 | 100.00 ± 0.00 | " + cell + " |" in markdown, markdown
  assert "over the finished runs (of 2 seed(s) x 3 folds asked)" in markdown


def test_cli_sweep_with_cv_folds_trains_each_fold_and_reports_mean_and_std(tiny_folder,
                                                                          tmp_path):
  """A real sweep, as a user runs it, on a 36-image synthetic folder: 2 folds, 1 seed,
  both at once (most of each run is starting JAX)."""
  result = subprocess.run(
      [sys.executable, "-m", "experiments.mnist_mlp", f"--workdir={tmp_path / 'sweep'}",
       "--config=experiments/mnist_mlp.py:smoke", "--cv_folds=2", "--parallel=2",
       "--config.dataset=folder", f"--config.data_dir={tiny_folder}",
       "--config.train_subset=0", "--config.test_subset=0", "--config.batch_size=6",
       "--config.num_epochs=1", "--config.checkpoint_every_epochs=0",
       "--config.progress=False"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert "1 point(s) x 1 seed(s) x 2 folds = 2 runs" in result.stdout
  runs = [tmp_path / "sweep" / "base" / f"seed_0_fold_{k}" for k in (0, 1)]
  summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
  assert [json.loads((run / "config.json").read_text())["cv_fold"] for run in runs] == [0, 1]
  # Each run trained on one half of the 36 training images and validated on the other.
  for run, summary in zip(runs, summaries):
    assert ": 18 train, 12 test;" in (run / "output.log").read_text()
    assert 18 * summary["validation_accuracy"] == pytest.approx(
        round(18 * summary["validation_accuracy"]))
    assert f"validation {summary['validation_accuracy']:.2%}" in result.stdout
  test = [100 * s["test_accuracy"] for s in summaries]
  cell = f"{np.mean(test):.2f} ± {np.std(test, ddof=1):.2f}"
  assert f"| base | 2 | " in result.stdout and cell in result.stdout, result.stdout
  assert "(of 1 seed(s) x 2 folds asked)" in result.stdout
  with open(tmp_path / "sweep" / "results.csv") as f:
    assert [row["fold"] for row in csv.DictReader(f)] == ["0", "1"]
