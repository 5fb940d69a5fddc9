"""The tensorflow-datasets source, on tfds' own mock data (no network, no TensorFlow)."""

import numpy as np
import pytest

from research.data import load_dataset

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("RESEARCH_DATA_DIR", raising=False)


@pytest.mark.parametrize("name,shape,classes", [("mnist", (28, 28, 1), 10),
                                                ("fashion_mnist", (28, 28, 1), 10),
                                                ("cifar10", (32, 32, 3), 10)])
def test_tfds_mock(name, shape, classes):
  with tfds.testing.mock_data(num_examples=12):
    ds = load_dataset(name, source="tfds", validation_size=2)
  assert ds.source == f"tfds:{name}"
  assert ds.image_shape == shape and ds.num_classes == classes
  assert len(ds.train) == 10 and len(ds.validation) == 2 and len(ds.test) == 12
  assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
  assert ds.train.labels.max() < classes
  if name == "fashion_mnist":
    assert ds.class_names[0] == "T-shirt/top"


def test_auto_falls_back_to_tfds(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    ds = load_dataset("mnist", str(tmp_path / "nothing-here"))
  assert ds.source == "tfds:mnist" and len(ds.train) == 5
