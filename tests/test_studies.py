"""The measurements the studies rely on (per-epoch train-split evaluation, capacity
knobs, memorisation of random labels) and a smoke run of every study module."""

import json

from flax import nnx
import pytest

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
