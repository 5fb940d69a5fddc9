"""Every local format round-trips: synthetic files written in the exact published layout are
read back with the same pixels, labels, shapes and class names."""

import numpy as np
import pytest

from research.data import load_dataset
import synthetic_data as syn

CLASSES = ("cat", "dog", "emu")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("RESEARCH_DATA_DIR", raising=False)


def _data(shape, classes=3, seed=0):
  train = syn.make_arrays(classes, 5, shape, seed)
  test = syn.make_arrays(classes, 2, shape, seed + 1)
  return train, test


def _assert_same(split, expected):
  images, labels = expected
  assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
  np.testing.assert_array_equal(split.labels, labels)
  np.testing.assert_array_equal(split.images, images)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_folder_roundtrip(tmp_path, channels):
  train, test = _data((6, 7, channels))
  root = syn.write_image_tree(tmp_path / "pets", {"train": train, "test": test}, CLASSES)
  ds = load_dataset("folder", str(root))
  _assert_same(ds.train, train)
  _assert_same(ds.test, test)
  assert ds.class_names == CLASSES and ds.num_classes == 3
  assert ds.image_shape == (6, 7, channels)
  assert ds.validation is None
  assert str(root) in ds.source


def test_jpeg_folder_is_close(tmp_path):
  # JPEG is lossy: check shape/labels exactly and pixels approximately (smooth images).
  images = np.repeat(np.linspace(20, 230, 10, dtype=np.uint8)[:, None, None, None], 16, 1)
  images = np.repeat(np.repeat(images, 16, 2), 3, 3)
  labels = np.array([0] * 5 + [1] * 5, np.int32)
  root = syn.write_image_tree(tmp_path / "j", {"train": (images, labels),
                                               "test": (images[:4], labels[:4])},
                              ("a", "b"), ext="jpg")
  ds = load_dataset("folder", str(root))
  assert ds.train.images.shape == (10, 16, 16, 3)
  np.testing.assert_array_equal(ds.train.labels, labels)
  assert np.abs(ds.train.images.astype(int) - images).max() <= 3


def test_grayscale_jpeg_has_one_channel(tmp_path):
  train, test = _data((8, 8, 1))
  root = syn.write_image_tree(tmp_path / "g", {"train": train, "test": test}, CLASSES, ext="jpeg")
  assert load_dataset("folder", str(root)).image_shape == (8, 8, 1)


@pytest.mark.parametrize("mode,suffix,prefix", [
    ("w", ".tar", ""), ("w:gz", ".tar.gz", "pets"), ("w:gz", ".tgz", ""),
    ("w:xz", ".tar.xz", "pets-png")])
def test_image_tar_roundtrip(tmp_path, mode, suffix, prefix):
  train, test = _data((5, 5, 3))
  tree = syn.write_image_tree(tmp_path / "tree", {"train": train, "test": test}, CLASSES)
  archive = syn.write_tar(tree, tmp_path / f"pets{suffix}", prefix=prefix, mode=mode)
  ds = load_dataset("folder", str(archive))
  _assert_same(ds.train, train)
  _assert_same(ds.test, test)
  assert ds.class_names == CLASSES
  assert ds.source.startswith(str(archive))


@pytest.mark.parametrize("compress,dotted", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_idx_roundtrip(tmp_path, compress, dotted):
  train, test = _data((28, 28, 1), classes=10)
  folder = syn.write_idx_set(tmp_path / "fm", train, test, compress=compress, dotted=dotted)
  ds = load_dataset("fashion_mnist", str(folder))
  _assert_same(ds.train, train)
  _assert_same(ds.test, test)
  assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
  assert ds.image_shape == (28, 28, 1)
  assert load_dataset("mnist", str(folder)).class_names == tuple("0123456789")


def _cifar10_parts(seed=0):
  batches = [syn.make_arrays(3, 2, (32, 32, 3), seed + i) for i in range(2)]
  test = syn.make_arrays(3, 2, (32, 32, 3), seed + 9)
  train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
  return batches, test, train


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar10_pickle_roundtrip(tmp_path, as_archive):
  batches, test, train = _cifar10_parts()
  files = syn.cifar10_pickle_files(batches, test, CLASSES)
  if as_archive:
    syn.write_tar_of_files(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
  else:
    syn.write_files(tmp_path / "cifar-10-batches-py", files)
  ds = load_dataset("cifar10", str(tmp_path))  # found by name inside a folder of datasets
  _assert_same(ds.train, train)
  _assert_same(ds.test, test)
  assert ds.class_names == CLASSES and ds.image_shape == (32, 32, 3)


def test_cifar_pickle_chw_to_hwc(tmp_path):
  # One image whose red plane is 10, green 20, blue 30: HWC pixels must be (10, 20, 30).
  image = np.zeros((1, 32, 32, 3), np.uint8) + np.array([10, 20, 30], np.uint8)
  files = syn.cifar10_pickle_files([(image, np.array([1]))], (image, np.array([0])), CLASSES)
  assert pickle_row(files["data_batch_1"])[:3].tolist() == [10, 10, 10]  # CHW on disk
  syn.write_files(tmp_path / "c", files)
  ds = load_dataset("cifar10", str(tmp_path / "c"))
  assert ds.train.images[0, 5, 7].tolist() == [10, 20, 30]


def pickle_row(data):
  import pickle
  return pickle.loads(data, encoding="bytes")[b"data"][0]


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar10_binary_roundtrip(tmp_path, as_archive):
  batches, test, train = _cifar10_parts(seed=3)
  files = syn.cifar_binary_files(batches, test, CLASSES)
  assert len(files["test_batch.bin"]) == 6 * 3073
  if as_archive:
    path = syn.write_tar_of_files(tmp_path / "cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                                  files)
  else:
    path = syn.write_files(tmp_path / "cifar-10-batches-bin", files)
  ds = load_dataset("cifar10", str(path))  # the dataset's own archive/folder
  _assert_same(ds.train, train)
  _assert_same(ds.test, test)
  assert ds.class_names == CLASSES


def test_cifar100_pickle_uses_fine_labels(tmp_path):
  names = tuple(f"c{i}" for i in range(12))
  train = syn.make_arrays(12, 2, (32, 32, 3), 0)
  test = syn.make_arrays(12, 1, (32, 32, 3), 1)
  syn.write_tar_of_files(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python",
                         syn.cifar100_pickle_files(train, test, names))
  ds = load_dataset("cifar100", str(tmp_path))
  _assert_same(ds.train, train)
  _assert_same(ds.test, test)
  assert ds.class_names == names


def test_cifar100_binary_uses_fine_labels(tmp_path):
  names = tuple(f"c{i}" for i in range(12))
  train = syn.make_arrays(12, 2, (32, 32, 3), 0)
  test = syn.make_arrays(12, 1, (32, 32, 3), 1)
  syn.write_files(tmp_path / "cifar-100-binary",
                  syn.cifar_binary_files([train], test, names, cifar100=True))
  ds = load_dataset("cifar100", str(tmp_path))
  _assert_same(ds.train, train)
  assert ds.class_names == names


def test_data_dir_of_several_datasets_vs_own_folder(tmp_path, monkeypatch):
  mnist = _data((28, 28, 1), classes=10, seed=5)
  fashion = _data((28, 28, 1), classes=10, seed=7)
  syn.write_idx_set(tmp_path / "all" / "mnist", *mnist, compress=True)
  syn.write_idx_set(tmp_path / "all" / "fashion-mnist", *fashion)
  tree = syn.write_image_tree(tmp_path / "tree", {"train": _data((4, 4, 3))[0],
                                                  "test": _data((4, 4, 3))[1]}, CLASSES)
  syn.write_tar(tree, tmp_path / "all" / "pets.tar.gz", mode="w:gz")
  all_dir = tmp_path / "all"
  _assert_same(load_dataset("mnist", str(all_dir)).train, mnist[0])
  _assert_same(load_dataset("fashion_mnist", str(all_dir)).train, fashion[0])
  _assert_same(load_dataset("fashion-mnist", str(all_dir / "fashion-mnist")).train, fashion[0])
  assert load_dataset("pets", str(all_dir)).class_names == CLASSES
  # The environment variable stands in for data_dir.
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(all_dir))
  _assert_same(load_dataset("mnist").test, mnist[1])
