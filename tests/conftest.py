"""Shared fixtures: where the real datasets are, and tiny synthetic ones."""

import os
import pathlib

import pytest

import synthetic_data

REPO = pathlib.Path(__file__).resolve().parent.parent


def shared_datasets_dir() -> pathlib.Path | None:
  for candidate in (os.environ.get("RESEARCH_DATA_DIR"), REPO.parent / "shared" / "datasets"):
    if candidate and (pathlib.Path(candidate) / "mnist-png.tar.xz").exists():
      return pathlib.Path(candidate).resolve()
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


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch) -> pathlib.Path:
  """A 3-class, 16x16 grayscale image-folder dataset: 36 train and 12 test PNGs."""
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  splits = {"train": synthetic_data.make_arrays(3, 12, (16, 16, 1), seed=0),
            "test": synthetic_data.make_arrays(3, 4, (16, 16, 1), seed=1)}
  return synthetic_data.write_image_tree(tmp_path / "tiny", splits, ["a", "b", "c"])


@pytest.fixture(autouse=True)
def _no_dataset_downloads(monkeypatch):
  """No test downloads a real dataset: where one would (data_source auto or download with
  no local copy), the mirror is a local port that refuses the connection at once. Tests of
  the download set their own mirror."""
  monkeypatch.setenv("RESEARCH_DOWNLOAD_MIRROR", "http://127.0.0.1:9/")
