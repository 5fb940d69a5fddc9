"""MNIST-1D: generated offline by the mnist1d package as float32 (N, 40, 1, 1) "images",
deterministic, without side effects on global RNGs, and usable by the whole pipeline."""

import random
import socket
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import mnist_mlp
from research import corruption, preprocess
from research.data import DataError, DataNotFoundError, load_dataset, types
from research.training import loop

pytest.importorskip("mnist1d")


@pytest.fixture(scope="module")
def ds():
  return load_dataset("mnist1d")


def test_shapes_dtypes_and_classes(ds):
  assert ds.name == "mnist1d" and ds.num_classes == 10
  assert ds.class_names == tuple(str(i) for i in range(10))
  assert ds.source == "mnist1d.make_dataset (seed 42)"
  assert ds.validation is None
  assert ds.train.images.shape == (4000, 40, 1, 1) and ds.test.images.shape == (1000, 40, 1, 1)
  assert ds.image_shape == (40, 1, 1)
  for split in (ds.train, ds.test):
    assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
    assert np.isfinite(split.images).all()
    assert set(np.unique(split.labels).tolist()) == set(range(10))
  # Standardised by the generator over all 5000 sequences; kept as they are.
  everything = np.concatenate([ds.train.images, ds.test.images])
  assert abs(everything.mean()) < 0.01 and abs(everything.std() - 1) < 0.01
  # Pins the generator's output: the shuffle of its seed 42 (numpy's legacy RandomState).
  assert np.bincount(ds.train.labels).tolist() == [398, 396, 411, 394, 394, 402, 401, 404,
                                                   402, 398]


def test_deterministic_and_aliases(ds):
  again = load_dataset("MNIST-1D")
  assert again.name == "mnist1d"
  for name in ("train", "test"):
    a, b = getattr(ds, name), getattr(again, name)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.labels.tobytes() == b.labels.tobytes()


def test_global_rng_state_is_untouched():
  np.random.seed(123)
  random.seed(7)
  np_before, py_before = np.random.get_state(), random.getstate()
  load_dataset("mnist1d")
  np_after = np.random.get_state()
  assert np_after[0] == np_before[0] and np_after[2:] == np_before[2:]
  np.testing.assert_array_equal(np_after[1], np_before[1])
  assert random.getstate() == py_before
  # And the next draws are the ones the caller's seed gives.
  expected = np.random.RandomState(123).rand(3)
  np.testing.assert_array_equal(np.random.rand(3), expected)


def test_no_network_and_no_files(ds, monkeypatch, tmp_path):
  def refuse(*args, **kwargs):
    raise AssertionError("mnist1d must not use the network")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  requests = pytest.importorskip("requests")
  monkeypatch.setattr(requests, "get", refuse)
  monkeypatch.chdir(tmp_path)  # get_dataset would write ./mnist1d_data.pkl here
  # data_dir and source 'local' do not apply to a generated dataset.
  loaded = load_dataset("mnist1d", str(tmp_path / "nowhere"), source="local", cache=True)
  np.testing.assert_array_equal(loaded.test.images, ds.test.images)
  assert list(tmp_path.iterdir()) == []


def test_tfds_source_is_refused():
  with pytest.raises(DataError, match="generated"):
    load_dataset("mnist1d", source="tfds")


def test_missing_package_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "mnist1d.data", None)  # import raises ImportError
  with pytest.raises(DataNotFoundError, match="pip install mnist1d"):
    load_dataset("mnist1d")


def test_validation_split(ds):
  split = load_dataset("mnist1d", validation_size=0.1, split_seed=3)
  assert len(split.train) == 3600 and len(split.validation) == 400
  assert split.validation.images.dtype == np.float32
  assert np.bincount(split.validation.labels, minlength=10).min() >= 39
  # The two parts are exactly the full train split, regrouped.
  merged = np.concatenate([split.train.images, split.validation.images]).reshape(4000, 40)
  full = ds.train.images.reshape(4000, 40)
  assert sorted(map(bytes, merged)) == sorted(map(bytes, full))
  np.testing.assert_array_equal(split.test.images, ds.test.images)


def test_split_accepts_float32_only_among_floats():
  types.Split(np.zeros((2, 3, 1, 1), np.float32), np.zeros(2, np.int32))
  with pytest.raises(ValueError, match="uint8 or float32"):
    types.Split(np.zeros((2, 3, 1, 1), np.float64), np.zeros(2, np.int32))
  with pytest.raises(ValueError, match="uint8 or float32"):
    types.Split(np.zeros((2, 3, 1), np.float32), np.zeros(2, np.int32))


def test_normalize_scales_uint8_only(ds):
  x = jnp.asarray(ds.train.images[:8])
  np.testing.assert_array_equal(preprocess.normalize(x, (0.0,), (1.0,)), x)
  np.testing.assert_allclose(preprocess.normalize(x, (0.5,), (2.0,)), (x - 0.5) / 2.0,
                             rtol=1e-6)
  pixels = jnp.asarray([[[[0]], [[51]], [[255]]]], jnp.uint8)
  np.testing.assert_allclose(preprocess.normalize(pixels, (0.1,), (0.5,)).ravel(),
                             [(0 - 0.1) / 0.5, (0.2 - 0.1) / 0.5, (1 - 0.1) / 0.5], rtol=1e-6)
  under_jit = jax.jit(preprocess.normalize, static_argnums=(1, 2))
  np.testing.assert_array_equal(under_jit(x, (0.0,), (1.0,)), x)
  assert under_jit(pixels, (0.0,), (1.0,)).max() == 1.0


def _old_random_crop(key, images, padding):
  """random_crop before 1-D support: the 2-D result must not change."""
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
  return jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
      padded, offsets)


def test_augmentation_on_sequences(ds):
  key = jax.random.key(0)
  x = jnp.asarray(ds.train.images[:64])
  # Jitted, as in the train step (and eager vmap compiles op by op: seconds).
  augment = jax.jit(preprocess.augment, static_argnums=(2, 3))
  cropped = augment(key, x, ("crop", "flip"), 4)
  assert cropped.shape == x.shape and cropped.dtype == jnp.float32
  # Each sequence is shifted along its length by at most 4 steps, never off its one column.
  seqs, out = np.asarray(x)[:, :, 0, 0], np.asarray(cropped)[:, :, 0, 0]
  for s, o in zip(seqs, out):
    shifts = [d for d in range(-4, 5)
              if np.array_equal(o, np.roll(np.pad(s, 4), d)[4:44])]
    assert shifts, "not a translation of the input"
  assert not np.array_equal(out, seqs)
  # 2-D images crop exactly as before.
  images = jax.random.uniform(jax.random.key(1), (16, 8, 8, 3))
  new, old = (jax.jit(f, static_argnums=2)(key, images, 2)
              for f in (preprocess.random_crop, _old_random_crop))
  np.testing.assert_array_equal(new, old)


def test_gaussian_and_label_corruption_on_floats(ds):
  out = corruption.corrupt_inputs(ds, "gaussian", seed=0)
  mean, std = ds.train.images.mean(), ds.train.images.std()
  for name in ("train", "test"):
    noise = getattr(out, name).images
    assert noise.dtype == np.float32 and noise.shape == getattr(ds, name).images.shape
    assert abs(noise.mean() - mean) < 0.03 and abs(noise.std() / std - 1) < 0.02
    assert noise.min() < -3 and len(np.unique(noise)) > 10000  # not rounded or clipped
  again = corruption.corrupt_inputs(ds, "gaussian", seed=0)
  np.testing.assert_array_equal(again.test.images, out.test.images)
  shuffled = corruption.corrupt_inputs(ds, "shuffled_pixels", seed=0)
  assert shuffled.train.images.dtype == np.float32
  np.testing.assert_array_equal(np.sort(shuffled.train.images, axis=1),
                                np.sort(ds.train.images, axis=1))
  labels = corruption.corrupt_labels(ds.train.labels, 0.5, ds.num_classes, seed=0)
  assert labels.dtype == np.int32 and abs(np.mean(labels != ds.train.labels) - 0.45) < 0.03


def test_mlp_learns_mnist1d(tmp_path):
  config = mnist_mlp.get_config("smoke")
  config.dataset = "mnist1d"
  config.train_subset = config.test_subset = 0
  config.batch_size, config.num_epochs, config.progress = 100, 2, False
  summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["dataset"] == "mnist1d" and summary["steps"] == 80
  # 10 classes, 1000 test examples: chance is 0.10 +- 0.01. Seeds 0-7 give 0.23-0.26
  # after these 2 epochs (seed 0: 0.26).
  assert summary["test_accuracy"] > 0.18
