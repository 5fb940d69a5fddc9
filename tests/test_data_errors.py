"""Corrupt, truncated and missing data fail fast with messages that name the file."""

import pytest

from research.data import (CorruptDataError, DataError, DataNotFoundError, load_dataset)
import synthetic_data as syn
from research.data import tfds_source

CLASSES = ("a", "b")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("RESEARCH_DATA_DIR", raising=False)


def _idx_folder(tmp_path, compress=False):
  train = syn.make_arrays(2, 3, (4, 4, 1), 0)
  test = syn.make_arrays(2, 1, (4, 4, 1), 1)
  return syn.write_idx_set(tmp_path / "idx", train, test, compress=compress)


def test_truncated_idx_names_file_and_sizes(tmp_path):
  folder = _idx_folder(tmp_path)
  path = folder / "train-images-idx3-ubyte"
  full = path.read_bytes()
  path.write_bytes(full[:-5])
  with pytest.raises(CorruptDataError) as e:
    load_dataset("mnist", str(folder))
  message = str(e.value)
  assert str(path) in message and "truncated" in message
  assert f"expected {len(full)} bytes" in message and f"got {len(full) - 5} bytes" in message


def test_truncated_idx_gz_names_file(tmp_path):
  folder = _idx_folder(tmp_path, compress=True)
  path = folder / "t10k-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-6])
  with pytest.raises(CorruptDataError, match="t10k-labels-idx1-ubyte.gz"):
    load_dataset("mnist", str(folder))


def test_bad_idx_magic(tmp_path):
  folder = _idx_folder(tmp_path)
  path = folder / "train-labels-idx1-ubyte"
  data = bytearray(path.read_bytes())
  data[3] = 3  # claims 3 dimensions: an images file under a labels name
  path.write_bytes(bytes(data))
  with pytest.raises(CorruptDataError, match=r"train-labels-idx1-ubyte.*magic"):
    load_dataset("mnist", str(folder))


def test_truncated_png_in_tar_names_member(tmp_path):
  tree = syn.write_image_tree(tmp_path / "t", {"train": syn.make_arrays(2, 3, (8, 8, 3)),
                                               "test": syn.make_arrays(2, 1, (8, 8, 3))}, CLASSES)
  bad = tree / "train" / "b" / "0004.png"
  bad.write_bytes(bad.read_bytes()[:40])
  archive = syn.write_tar(tree, tmp_path / "d.tar.xz", prefix="d")
  with pytest.raises(CorruptDataError) as e:
    load_dataset("folder", str(archive))
  assert "d/train/b/0004.png" in str(e.value) and str(archive) in str(e.value)


def test_truncated_archive(tmp_path):
  tree = syn.write_image_tree(tmp_path / "t", {"train": syn.make_arrays(2, 30, (16, 16, 3)),
                                               "test": syn.make_arrays(2, 1, (16, 16, 3))}, CLASSES)
  archive = syn.write_tar(tree, tmp_path / "d.tar.gz", mode="w:gz")
  archive.write_bytes(archive.read_bytes()[:len(archive.read_bytes()) // 2])
  with pytest.raises(CorruptDataError, match="d.tar.gz"):
    load_dataset("folder", str(archive))


def test_unreadable_image_in_folder(tmp_path):
  tree = syn.write_image_tree(tmp_path / "t", {"train": syn.make_arrays(2, 3, (8, 8, 1)),
                                               "test": syn.make_arrays(2, 1, (8, 8, 1))}, CLASSES)
  bad = tree / "test" / "a" / "0000.png"
  bad.write_bytes(b"not an image at all")
  with pytest.raises(CorruptDataError, match=str(bad)):
    load_dataset("folder", str(tree))


def test_image_size_mismatch_names_file(tmp_path):
  tree = syn.write_image_tree(tmp_path / "t", {"train": syn.make_arrays(2, 3, (8, 8, 1)),
                                               "test": syn.make_arrays(2, 1, (8, 8, 1))}, CLASSES)
  odd = syn.write_image_tree(tmp_path / "o", {"train": syn.make_arrays(1, 1, (9, 8, 1))}, ("b",))
  (odd / "train" / "b" / "0000.png").rename(tree / "train" / "b" / "zzzz.png")
  with pytest.raises(CorruptDataError, match="zzzz.png.*same size"):
    load_dataset("folder", str(tree))


def test_truncated_cifar_binary_batch(tmp_path):
  batches = [syn.make_arrays(2, 2, (32, 32, 3), 0)]
  files = syn.cifar_binary_files(batches, syn.make_arrays(2, 1, (32, 32, 3), 1), CLASSES)
  files["data_batch_1.bin"] = files["data_batch_1.bin"][:-100]
  syn.write_files(tmp_path / "cifar-10-batches-bin", files)
  with pytest.raises(CorruptDataError, match=r"data_batch_1\.bin.*3073"):
    load_dataset("cifar10", str(tmp_path))


def test_cifar_pickle_refuses_code(tmp_path):
  # A pickle that would call os.system must be refused, not executed.
  evil = b"cos\nsystem\n(S'echo pwned'\ntR."
  files = syn.cifar10_pickle_files([syn.make_arrays(2, 1, (32, 32, 3))],
                                   syn.make_arrays(2, 1, (32, 32, 3)), CLASSES)
  files["test_batch"] = evil
  syn.write_files(tmp_path / "c", files)
  with pytest.raises(CorruptDataError, match="test_batch.*refusing"):
    load_dataset("cifar10", str(tmp_path / "c"))


def test_empty_split_and_no_classes(tmp_path):
  tree = syn.write_image_tree(tmp_path / "t", {"train": syn.make_arrays(2, 2, (4, 4, 1))}, CLASSES)
  (tree / "test").mkdir()
  with pytest.raises(CorruptDataError, match="no images found for split 'test'"):
    load_dataset("folder", str(tree))
  (tmp_path / "empty" / "train").mkdir(parents=True)
  with pytest.raises(CorruptDataError, match="no images found for split 'train'"):
    load_dataset("folder", str(tmp_path / "empty"))


def test_test_class_missing_from_train(tmp_path):
  tree = syn.write_image_tree(tmp_path / "t", {"train": syn.make_arrays(1, 2, (4, 4, 1)),
                                               "test": syn.make_arrays(2, 1, (4, 4, 1))}, CLASSES)
  with pytest.raises(CorruptDataError, match=r"test/ has classes \['b'\]"):
    load_dataset("folder", str(tree))


def test_missing_data_lists_paths_and_remedies(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, "installed", lambda: False)
  (tmp_path / "datasets").mkdir()
  with pytest.raises(DataNotFoundError) as e:
    load_dataset("cifar10", str(tmp_path / "datasets"))
  message = str(e.value)
  assert str(tmp_path / "datasets" / "cifar-10-python.tar.gz") in message
  assert str(tmp_path / "datasets" / "cifar-10-batches-bin") in message
  assert "--config.data_dir" in message and "RESEARCH_DATA_DIR" in message
  assert "pip install -e '.[tfds]'" in message
  assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, DataError)


def test_missing_without_any_dir(monkeypatch):
  monkeypatch.setattr(tfds_source, "installed", lambda: False)
  with pytest.raises(DataNotFoundError, match="RESEARCH_DATA_DIR"):
    load_dataset("mnist")
  with pytest.raises(DataNotFoundError, match="does not exist"):
    load_dataset("mnist", "/nonexistent/datasets", source="local")


def test_asks_for_other_dataset_does_not_load_lone_subfolder(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, "installed", lambda: False)
  syn.write_idx_set(tmp_path / "d" / "mnist", syn.make_arrays(2, 2, (4, 4, 1)),
                    syn.make_arrays(2, 1, (4, 4, 1)))
  with pytest.raises(DataNotFoundError, match="looks like mnist"):
    load_dataset("cifar10", str(tmp_path / "d"))


def test_bad_arguments():
  with pytest.raises(DataError, match="source"):
    load_dataset("mnist", source="web")
  with pytest.raises(DataError, match="validation_size"):
    load_dataset("mnist", validation_size=-1)
  with pytest.raises(DataError, match="validation_size"):
    load_dataset("mnist", validation_size=2.5)


def test_tfds_offline_never_hangs(monkeypatch):
  # Without data and without network, the tfds path must give up at once with reasons.
  tfds = pytest.importorskip("tensorflow_datasets")
  del tfds
  monkeypatch.setattr(tfds_source, "network_reachable", lambda: False)
  with pytest.raises(DataNotFoundError, match="no network"):
    load_dataset("mnist", "/nonexistent/tfds_dir", source="tfds")
