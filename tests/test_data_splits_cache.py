"""The validation split is stratified and seeded; the decode cache is reused, invalidated
when the source changes, and rebuilt when corrupt."""

import os

import numpy as np
import pytest

from research.data import cache as cache_lib
from research.data import formats, load_dataset
import synthetic_data as syn
from research.data.splits import stratified_indices

CLASSES = ("a", "b", "c", "d")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("RESEARCH_DATA_DIR", raising=False)
  return tmp_path / "cache"


@pytest.fixture
def sorted_archive(tmp_path, cache_dir):
  """4 classes x 10 train images, written and archived sorted by class."""
  images, labels = syn.make_arrays(4, 10, (4, 4, 1), 0)
  # Make every image unique so that overlap between splits can be checked by content.
  images[:, 0, 0, 0] = np.arange(len(images))
  tree = syn.write_image_tree(tmp_path / "tree", {"train": (images, labels),
                                                  "test": syn.make_arrays(4, 1, (4, 4, 1), 1)},
                              CLASSES)
  return syn.write_tar(tree, tmp_path / "sorted.tar.xz")


def _ids(split):
  return set(split.images[:, 0, 0, 0].tolist())


def test_validation_holds_every_class(sorted_archive):
  ds = load_dataset("folder", str(sorted_archive), validation_size=0.2, split_seed=0)
  assert len(ds.validation) == 8 and len(ds.train) == 32
  assert np.bincount(ds.validation.labels, minlength=4).tolist() == [2, 2, 2, 2]
  assert np.bincount(ds.train.labels, minlength=4).tolist() == [8, 8, 8, 8]
  assert not _ids(ds.train) & _ids(ds.validation)
  assert _ids(ds.train) | _ids(ds.validation) == set(range(40))


def test_validation_count_and_seed(sorted_archive):
  a = load_dataset("folder", str(sorted_archive), validation_size=4, split_seed=1)
  b = load_dataset("folder", str(sorted_archive), validation_size=4, split_seed=1)
  c = load_dataset("folder", str(sorted_archive), validation_size=4, split_seed=2)
  assert len(a.validation) == 4 and sorted(a.validation.labels.tolist()) == [0, 1, 2, 3]
  np.testing.assert_array_equal(a.validation.images, b.validation.images)
  np.testing.assert_array_equal(a.train.images, b.train.images)
  assert _ids(a.validation) != _ids(c.validation)
  assert len(a.train) + len(a.validation) == 40


def test_stratified_uneven_classes():
  labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
  train, held = stratified_indices(labels, 10, seed=0)
  assert len(held) == 10 and len(train) == 90
  assert not set(train) & set(held)
  counts = np.bincount(labels[held], minlength=3)
  assert counts[0] == 9 and counts[1] == 1 and counts[2] == 0


def test_second_load_uses_cache(sorted_archive, cache_dir, monkeypatch):
  first = load_dataset("folder", str(sorted_archive))
  assert len(list(cache_dir.glob("*.npz"))) == 1

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again instead of using the cache")
  monkeypatch.setattr(formats, "read", no_decoding)
  second = load_dataset("folder", str(sorted_archive))
  np.testing.assert_array_equal(first.train.images, second.train.images)
  np.testing.assert_array_equal(first.test.labels, second.test.labels)
  assert first.class_names == second.class_names and first.source == second.source
  with pytest.raises(AssertionError, match="decoded again"):
    load_dataset("folder", str(sorted_archive), cache=False)


def test_cache_invalidated_when_source_changes(tmp_path, cache_dir):
  train = syn.make_arrays(2, 3, (4, 4, 1), 0)
  test = syn.make_arrays(2, 1, (4, 4, 1), 1)
  folder = syn.write_idx_set(tmp_path / "idx", train, test)
  assert load_dataset("mnist", str(folder)).train.images[0, 0, 0, 0] == train[0][0, 0, 0, 0]
  changed = train[0].copy()
  changed[0, 0, 0, 0] ^= 0xFF
  syn.write_idx_set(folder, (changed, train[1]), test)
  path = folder / "train-images-idx3-ubyte"
  stat = path.stat()
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse-mtime file systems
  assert load_dataset("mnist", str(folder)).train.images[0, 0, 0, 0] == changed[0, 0, 0, 0]
  assert len(list(cache_dir.glob("*.npz"))) == 2


def test_corrupt_cache_is_rebuilt(sorted_archive, cache_dir, caplog):
  first = load_dataset("folder", str(sorted_archive))
  (path,) = cache_dir.glob("*.npz")
  path.write_bytes(path.read_bytes()[:100])
  again = load_dataset("folder", str(sorted_archive))
  np.testing.assert_array_equal(first.train.images, again.train.images)
  assert "ignoring unreadable dataset cache" in caplog.text
  assert cache_lib.load(path) is not None  # rewritten whole


def test_unwritable_cache_dir_still_loads(sorted_archive, tmp_path, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(blocker / "cache"))
  assert len(load_dataset("folder", str(sorted_archive)).train) == 40
