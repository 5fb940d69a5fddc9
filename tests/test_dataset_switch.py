"""Changing an experiment's dataset (issue 12): every experiment's smoke variant, on each
shipped dataset it does not use by default, either trains or stops before any work with
a message that names the config key; the normalisation follows the data.

The matrix runs in-process, as the command line would (a sweep: its plan, the check of
every point, then a run), to stay fast; the CLI tests at the end prove the exit code
and the message of the real command."""

import dataclasses
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from research import configs
from research import data as data_lib
from research import errors
from research import normalization
from research import sweep as sweep_lib
from research.training import inputs
from research.training import loop
from research.training import preflight

EXPERIMENTS = ("cifar_cnn", "mnist_cnn", "mnist_mlp", "random_labels", "regularization",
               "dropout_mnist", "early_stopping", "double_descent")
DATASETS = ("mnist", "cifar10", "mnist1d")
# Smaller than the smoke variants: what is tested is the switch, not the training.
SHRINK = {"train_subset": 256, "test_subset": 256, "num_epochs": 1, "progress": False}
# The cases that cannot run, and the key their message must name: the seed CNNs' valid
# convolutions need more than MNIST-1D's (40, 1) sequences, and the VGG's pooling needs
# more than its width of 1.
REFUSED = {("cifar_cnn", "mnist1d"): "config.model='airbench'",
           ("mnist_cnn", "mnist1d"): "config.model='mnist_cnn'",
           ("regularization", "mnist1d"): "config.model='cnn32'"}


def _module(name):
  return importlib.import_module(f"experiments.{name}")


def _cases():
  return [(name, dataset) for name in EXPERIMENTS for dataset in DATASETS
          if dataset != _module(name).get_config("smoke").dataset]


_LOADED = {}


@pytest.fixture
def loads_once(data_dir, monkeypatch):
  """Each dataset decoded (or generated, for MNIST-1D) once for the whole file: the
  loader has its own tests, and the arrays are never modified."""
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(data_dir))
  cache = _LOADED
  load = inputs.load_full

  def load_full(config):
    key = tuple(str(config[k]) for k in preflight.DATA_KEYS)
    if key not in cache:
      cache[key] = load(config)
    return cache[key]

  monkeypatch.setattr(inputs, "load_full", load_full)


def _switched_jobs(name, dataset, workdir):
  """The jobs that `python -m experiments.NAME --config=...:smoke --config.dataset=X`
  runs: one for a plain experiment, one per point for a study's sweep."""
  module = _module(name)
  overrides = {"dataset": dataset, **SHRINK}
  config = module.get_config("smoke")
  config.update_from_flattened_dict(overrides)
  sweep = (module.get_sweep("smoke") if hasattr(module, "get_sweep")
           else sweep_lib.Sweep([sweep_lib.Point({}, name="run")]))
  return sweep_lib.plan(sweep, config, workdir, 1, ["python"], name, overrides)


@pytest.mark.parametrize("name, dataset", _cases())
def test_smoke_variant_on_another_dataset_trains_or_stops_first(name, dataset, loads_once,
                                                                tmp_path):
  jobs = _switched_jobs(name, dataset, tmp_path / "sweep")
  if (name, dataset) in REFUSED:
    with pytest.raises(errors.ConfigError) as refused:
      preflight.check_jobs(jobs)
    assert REFUSED[name, dataset] in str(refused.value)
    assert f"config.dataset='{dataset}'" in str(refused.value)
    with pytest.raises(errors.ConfigError, match=REFUSED[name, dataset]):
      loop.train_and_evaluate(jobs[0].config, jobs[0].workdir)   # a single run, too
    assert not (tmp_path / "sweep").exists()
    return
  preflight.check_jobs(jobs)   # every point, as the command line does first
  # The last point trains (a sweep's points differ in knobs that the check covers, not
  # in data): the one furthest from the base config (random labels, crop and weight
  # decay, dropout with max-norm, early stopping, the widest MLP).
  job = jobs[-1]
  summary = loop.train_and_evaluate(job.config, job.workdir)
  assert summary["dataset"] == dataset and summary["steps"] > 0
  assert json.loads((job.workdir / "summary.json").read_text())["dataset"] == dataset


def _config(**overrides):
  c = _module("mnist_mlp").get_config("smoke")
  c.update_from_flattened_dict({**SHRINK, "normalize": "auto", **overrides})
  return c


def test_auto_records_the_training_split_statistics_and_resumes(loads_once, tmp_path):
  """Measured on the training split left after the validation split, before the subset
  and the corruptions, and recorded in config.json; `normalize` still says 'auto'. A
  re-run measures them again and resumes."""
  def config(**overrides):
    return _config(dataset="cifar10", validation_size=0.1, label_corruption=1.0,
                   input_corruption="gaussian", **overrides)

  c = config()
  loop.train_and_evaluate(c, tmp_path)
  assert c.normalize_mean == ()   # the caller's config is left as it was
  saved = json.loads((tmp_path / "config.json").read_text())
  train = data_lib.load_dataset("cifar10", validation_size=0.1).train.images
  assert len(train) == 45000 and saved["normalize"] == "auto"
  for channel in range(3):
    pixels = train[..., channel]
    mean = pixels.mean(dtype=np.float64) / 255
    std = np.sqrt(np.mean(np.square(pixels, dtype=np.float64)) / 255**2 - mean**2)
    assert saved["normalize_mean"][channel] == pytest.approx(mean, rel=1e-5)
    assert saved["normalize_std"][channel] == pytest.approx(std, rel=1e-5)
  summary = loop.train_and_evaluate(config(num_epochs=2), tmp_path)
  assert summary["resumed_from_step"] == 2 and summary["steps"] == 4


def test_explicit_values_of_the_wrong_length_name_the_key(loads_once, tmp_path):
  c = _config(dataset="mnist", normalize="explicit", normalize_mean=(0.5, 0.5, 0.5),
              normalize_std=(0.5, 0.5, 0.5))
  with pytest.raises(errors.ConfigError, match=r"config.normalize_mean has 3 value\(s\), "
                     r"but the mnist inputs have 1 channel"):
    loop.train_and_evaluate(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()
  c.normalize_mean, c.normalize_std = (0.5,), (0.5,)
  loop.train_and_evaluate(c, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["normalize_mean"] == [0.5] and saved["normalize_std"] == [0.5]


@pytest.mark.parametrize("overrides, message", [
    ({"normalize_mean": (0.5,), "normalize_std": (0.5,)},
     "config.normalize_mean is set, but config.normalize='auto' measures it"),
    ({"normalize": "explicit"}, "needs config.normalize_mean and config.normalize_std"),
    ({"normalize": "explicit", "normalize_mean": (0.5,), "normalize_std": (0.5, 0.5)},
     "differ in length"),
    ({"normalize": "scaled"}, "config.normalize='scaled' is not one of")])
def test_normalisation_keys_are_checked_before_loading(overrides, message):
  c = configs.base_config()
  c.update_from_flattened_dict(overrides)
  with pytest.raises(errors.ConfigError, match=message):
    configs.validate(c)


def test_channel_stats_of_uint8_and_float_images():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (50, 4, 3, 2), dtype=np.uint8)
  pixels[..., 1] = 7   # a constant channel: std 1, not a division by zero
  mean, std = normalization.channel_stats(pixels)
  assert mean[0] == pytest.approx(pixels[..., 0].mean() / 255, rel=1e-5)
  assert std == (pytest.approx(pixels[..., 0].std() / 255, rel=1e-5), 1.0)
  values = rng.normal(2.0, 3.0, (50, 40, 1, 1)).astype(np.float32)
  assert normalization.channel_stats(values) == (
      (pytest.approx(values.mean(), rel=1e-5),), (pytest.approx(values.std(), rel=1e-5),))


def test_a_saved_config_with_measured_values_is_the_same_sweep(tmp_path):
  """A run records the values it measured; the sweep's plan, which has not loaded the
  data, must not take that for a changed config (--aggregate-only)."""
  job = _switched_jobs("random_labels", "mnist", tmp_path)[0]
  job.workdir.mkdir(parents=True)
  measured = normalization.resolved(job.config, (0.13,), (0.31,))
  (job.workdir / "config.json").write_text(measured.to_json_best_effort())
  sweep_lib.check_existing([job])
  # Values known on both sides are compared.
  changed = dataclasses.replace(job, config=normalization.resolved(job.config, (0.2,), (0.31,)))
  with pytest.raises(errors.WorkdirError, match="normalize_mean"):
    sweep_lib.check_existing([changed])


def _cli(module, *args, data_dir):
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                        env=dict(os.environ, RESEARCH_DATA_DIR=str(data_dir)),
                        capture_output=True, text=True, timeout=300)


def test_the_issues_command_checks_every_run_and_they_train(data_dir, loads_once,
                                                            tmp_path):
  """random_labels on MNIST: each of its 10 runs crashed on CIFAR-10's 3-channel
  statistics. Now the command checks all 10 and plans them (--print-commands: the
  same checks, without running), and its runs train: here the last, for one epoch."""
  overrides = {"dataset": "mnist", "train_subset": 1000, "label_corruption": 1.0}
  planned = _cli("random_labels", f"--workdir={tmp_path}", "--print-commands",
                 *(f"--config.{k}={v}" for k, v in overrides.items()), data_dir=data_dir)
  assert planned.returncode == 0, planned.stderr[-2000:]
  commands = planned.stdout.splitlines()
  assert len(commands) == 10 and "--config.input_corruption=gaussian" in commands[-1]
  module = _module("random_labels")
  config = module.get_config()
  config.update_from_flattened_dict({**overrides, "num_epochs": 1, "progress": False})
  job = sweep_lib.plan(module.get_sweep(), config, tmp_path, 2, ["python"], "x", {})[-1]
  assert f"--workdir={job.workdir}" in commands[-1]
  summary = loop.train_and_evaluate(job.config, job.workdir)
  assert summary["dataset"] == "mnist" and summary["steps"] == 1000 // 128


def test_a_sweep_with_a_point_that_cannot_run_stops_before_its_first_run(data_dir,
                                                                         tmp_path):
  """Switched to MNIST, one point of two asks for more training images than MNIST has:
  the sweep stops with exit code 2 before its first run, naming the point and the key."""
  result = _cli("random_labels", "--config=experiments/random_labels.py:smoke",
                f"--workdir={tmp_path / 'sweep'}", "--config.dataset=mnist",
                '--grid={"train_subset": [256, 70000]}', data_dir=data_dir)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "no run was started" in result.stderr
  assert ("sweep point(s) 'train_subset=70000': the config does not fit "
          "config.dataset='mnist'") in result.stderr
  assert ("config.train_subset=70000 is more than the 60000 training examples of mnist"
          in result.stderr)
  assert "'train_subset=256'" not in result.stderr
  assert not (tmp_path / "sweep").exists()
