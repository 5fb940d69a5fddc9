"""Real MNIST from the shared archive (skipped where ../shared/datasets is absent)."""

import os
import pathlib

import numpy as np
import pytest

from research.data import load_dataset

REPO = pathlib.Path(__file__).resolve().parent.parent


def _shared_dir():
  for candidate in (os.environ.get("RESEARCH_DATA_DIR"), REPO.parent / "shared" / "datasets"):
    if candidate and (pathlib.Path(candidate) / "mnist-png.tar.xz").is_file():
      return pathlib.Path(candidate)
  if os.environ.get("RESEARCH_REQUIRE_DATA"):
    pytest.fail("RESEARCH_REQUIRE_DATA is set but mnist-png.tar.xz was not found")
  pytest.skip("shared datasets not found: set RESEARCH_DATA_DIR (e.g. ../shared/datasets)")


def test_real_mnist(tmp_path, monkeypatch):
  data_dir = _shared_dir()
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  ds = load_dataset("mnist", str(data_dir), validation_size=5000)
  assert len(ds.train) == 55000 and len(ds.validation) == 5000 and len(ds.test) == 10000
  assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10
  assert ds.class_names == tuple("0123456789")
  for split in (ds.train, ds.validation, ds.test):
    counts = np.bincount(split.labels, minlength=10)
    assert counts.min() > 0.7 * len(split) / 10 and counts.max() < 1.3 * len(split) / 10
  assert 20 < ds.test.images.mean() < 50  # MNIST's mean pixel is ~33
