"""Seed S1 on the real shipped MNIST: the MLP must reach 97% test accuracy."""

import time

from experiments import mnist_mlp
from research.training import loop


def test_s1_mlp_reaches_97_percent_on_real_mnist(data_dir, tmp_path):
  config = mnist_mlp.get_config()
  config.data_dir, config.progress = str(data_dir), False
  start = time.monotonic()
  summary = loop.train_and_evaluate(config, str(tmp_path / "s1"))
  elapsed = time.monotonic() - start
  assert summary["test_accuracy"] >= 0.97, summary["test_accuracy"]
  assert summary["steps"] == 10 * (60000 // 128)
  assert elapsed < 120, f"S1 took {elapsed:.0f}s; it should take well under a minute"
