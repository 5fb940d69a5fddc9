"""Shared fixtures: where the real datasets are, and tiny synthetic ones."""

import os
import pathlib

import numpy as np
from PIL import Image
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def shared_datasets_dir() -> pathlib.Path | None:
  for candidate in (os.environ.get("RESEARCH_DATA_DIR"), REPO.parent / "shared" / "datasets"):
    if candidate and (pathlib.Path(candidate) / "mnist-png.tar.xz").exists():
      return pathlib.Path(candidate)
  return None


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The real MNIST/CIFAR-10 archives. CI sets RESEARCH_REQUIRE_DATA=1 so that a missing
  copy fails the run instead of skipping the tests that train on real data."""
  found = shared_datasets_dir()
  if found is None:
    message = ("real datasets not found: set RESEARCH_DATA_DIR to a folder holding "
               "mnist-png.tar.xz (e.g. ../shared/datasets)")
    if os.environ.get("RESEARCH_REQUIRE_DATA"):
      pytest.fail(message)
    pytest.skip(message)
  return found


def write_image_folder(root: pathlib.Path, *, classes=3, per_class=12, test_per_class=4,
                       size=16, channels=1, seed=0) -> pathlib.Path:
  """A tiny class-folder dataset whose classes are easy to tell apart (by brightness)."""
  rng = np.random.default_rng(seed)
  for split, count in (("train", per_class), ("test", test_per_class)):
    for c in range(classes):
      folder = root / split / f"class_{c}"
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(count):
        pixels = rng.integers(0, 40, (size, size, channels)) + 100 * c
        image = pixels.astype(np.uint8).squeeze(-1) if channels == 1 else pixels.astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
  return root


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch) -> pathlib.Path:
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  return write_image_folder(tmp_path / "tiny")
