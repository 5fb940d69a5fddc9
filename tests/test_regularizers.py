"""Issue 4 knobs: Zhang et al. corruptions, penalties, max-norm, cutout, model knobs."""

import dataclasses

import chex

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import configs, corruption, errors, preprocess
from research.data import types
from research.models import MODELS, create_model
from research.training import inputs, loop
from research.training.state import apply_model, create_train_state
from research.training.step import (StepConfig, max_norm_project, micro_batches,
                                    train_step)

from test_training import tiny_config


def _split(n, shape=(8, 8, 3), classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return types.Split(rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                     rng.integers(0, classes, n).astype(np.int32))


def _dataset(n=200, shape=(8, 8, 3)):
  return types.Dataset("synthetic", _split(n, shape), _split(50, shape, seed=1),
                       _split(60, shape, seed=2), tuple("abcdefghij"), "memory")


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_label_corruption_fraction_and_determinism(p):
  labels = np.random.default_rng(0).integers(0, 10, 20000).astype(np.int32)
  out = corruption.corrupt_labels(labels, p, 10, seed=3)
  changed = np.mean(out != labels)
  assert abs(changed - p * 0.9) < 0.015
  assert out.dtype == np.int32 and out.min() >= 0 and out.max() < 10
  np.testing.assert_array_equal(out, corruption.corrupt_labels(labels, p, 10, seed=3))
  if p:
    assert not np.array_equal(out, corruption.corrupt_labels(labels, p, 10, seed=4))
  else:
    assert out is labels


def test_label_corruption_leaves_held_out_splits_alone(tiny_folder):
  clean = inputs.load_data(tiny_config(tiny_folder))
  noisy = inputs.load_data(tiny_config(tiny_folder, label_corruption=1.0))
  assert not np.array_equal(clean.train.labels, noisy.train.labels)
  np.testing.assert_array_equal(clean.train.images, noisy.train.images)
  np.testing.assert_array_equal(clean.test.labels, noisy.test.labels)
  np.testing.assert_array_equal(clean.test.images, noisy.test.images)


def _positions(images):
  """Per image, the flat pixel-position order that sorts it: equal orders mean the same
  permutation was applied (the synthetic pixels are almost surely distinct rows)."""
  n, h, w, c = images.shape
  return images.reshape(n, h * w, c)


def test_shuffled_pixels_one_permutation_for_all_images():
  ds = _dataset()
  out = corruption.corrupt_inputs(ds, "shuffled_pixels", seed=0)
  n, h, w, c = ds.train.images.shape
  # Recover the permutation from the first image and check it explains every image of
  # every split.
  flat_in, flat_out = _positions(ds.train.images), _positions(out.train.images)
  perm = np.array([np.flatnonzero((flat_in[0] == px).all(-1))[0] for px in flat_out[0]])
  assert sorted(perm) == list(range(h * w)) and not np.array_equal(perm, np.arange(h * w))
  for name in ("train", "validation", "test"):
    before, after = getattr(ds, name).images, getattr(out, name).images
    np.testing.assert_array_equal(_positions(before)[:, perm], _positions(after))
    assert after.dtype == np.uint8
  np.testing.assert_array_equal(out.train.labels, ds.train.labels)


def test_random_pixels_permutes_each_image_differently():
  ds = _dataset()
  out = corruption.corrupt_inputs(ds, "random_pixels", seed=0)
  for name in ("train", "test"):
    before, after = _positions(getattr(ds, name).images), _positions(getattr(out, name).images)
    # Same multiset of pixels per image and channel: a permutation.
    np.testing.assert_array_equal(np.sort(before, axis=1), np.sort(after, axis=1))
  flat_in, flat_out = _positions(ds.train.images), _positions(out.train.images)
  perms = [tuple(np.flatnonzero((flat_in[i] == px).all(-1))[0] for px in flat_out[i])
           for i in range(5)]
  assert len(set(perms)) == 5
  again = corruption.corrupt_inputs(ds, "random_pixels", seed=0)
  np.testing.assert_array_equal(again.test.images, out.test.images)


def test_gaussian_matches_per_channel_statistics():
  rng = np.random.default_rng(0)
  # Channels with very different statistics, inside [0, 255] so clipping is rare.
  images = np.stack([rng.normal(m, s, (400, 8, 8)) for m, s in [(60, 10), (128, 30), (200, 15)]],
                    -1).clip(0, 255).astype(np.uint8)
  ds = dataclasses.replace(_dataset(), train=types.Split(images, np.zeros(400, np.int32)))
  out = corruption.corrupt_inputs(ds, "gaussian", seed=0)
  for name in ("train", "test"):
    noise = getattr(out, name).images
    assert noise.dtype == np.uint8 and noise.shape == getattr(ds, name).images.shape
    np.testing.assert_allclose(noise.mean((0, 1, 2)), images.mean((0, 1, 2)), atol=1.5)
    np.testing.assert_allclose(noise.std((0, 1, 2)), images.std((0, 1, 2)), rtol=0.05)
  assert not np.array_equal(out.train.images, images)


def _tiny_state(tx, **model_kw):
  model = create_model("mlp", input_shape=(4, 4, 1), num_classes=3, seed=0, widths=(5,),
                       **model_kw)
  return create_train_state(model, tx)


def _batch():
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)),
          "label": jnp.asarray(rng.integers(0, 3, 6).astype(np.int32))}


@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.02), (0.01, 0.02)])
def test_l1_l2_add_exactly_the_penalty(l1, l2):
  state = _tiny_state(optax.sgd(0.0))
  key = jax.random.key(0)
  _, plain = train_step(state, _batch(), key, StepConfig())
  _, penalised = train_step(state, _batch(), key, StepConfig(l1=l1, l2=l2))
  kernels = [np.asarray(state.params["hidden"][0]["kernel"]),
             np.asarray(state.params["head"]["kernel"])]
  expected = sum(l1 * np.abs(w).sum() + l2 * np.square(w).sum() for w in kernels)
  assert expected > 0
  np.testing.assert_allclose(float(penalised["loss"]) - float(plain["loss"]), expected,
                             rtol=1e-5)


def test_l2_gradient_shrinks_kernels_not_biases():
  state = _tiny_state(optax.sgd(0.1))
  key = jax.random.key(0)
  plain, _ = train_step(state, _batch(), key, StepConfig())
  decayed, _ = train_step(state, _batch(), key, StepConfig(l2=0.5))
  w0 = state.params["head"]["kernel"]
  # d/dw of l2 * w^2 is 2 * l2 * w: the SGD step moves by -lr * 2 * l2 * w extra.
  np.testing.assert_allclose(decayed.params["head"]["kernel"] - plain.params["head"]["kernel"],
                             -0.1 * 2 * 0.5 * w0, atol=1e-6)
  np.testing.assert_allclose(decayed.params["head"]["bias"], plain.params["head"]["bias"])


def test_max_norm_clips_incoming_weight_vectors():
  state = _tiny_state(optax.sgd(50.0))
  new, _ = train_step(state, _batch(), jax.random.key(0), StepConfig(max_norm=0.5))
  unclipped, _ = train_step(state, _batch(), jax.random.key(0), StepConfig())
  clipped_any = False
  for w, free in [(new.params["hidden"][0]["kernel"], unclipped.params["hidden"][0]["kernel"]),
                  (new.params["head"]["kernel"], unclipped.params["head"]["kernel"])]:
    norms, free_norms = np.linalg.norm(w, axis=0), np.linalg.norm(free, axis=0)
    assert np.all(norms <= 0.5 + 1e-6)
    clipped_any |= bool(np.any(free_norms > 0.5))
    # Units under the limit are left exactly as the update made them.
    small = free_norms <= 0.5
    np.testing.assert_array_equal(np.asarray(w)[:, small], np.asarray(free)[:, small])
  assert clipped_any
  np.testing.assert_array_equal(new.params["hidden"][0]["bias"],
                                unclipped.params["hidden"][0]["bias"])


def test_max_norm_conv_kernels_norm_over_all_but_output_axis():
  w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 4, 6)), jnp.float32)
  out = max_norm_project({"kernel": w}, 1.0)["kernel"]
  norms = np.sqrt(np.square(np.asarray(out)).sum((0, 1, 2)))
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)   # every unit was above 1


def test_cutout_zeroes_one_square_per_image():
  images = jnp.ones((16, 12, 10, 3))
  key = jax.random.key(0)
  out = np.asarray(preprocess.augment(key, images, ("cutout",), 4, cutout_size=5))
  zeros = out == 0
  assert np.all(zeros.sum((1, 2, 3)) == 5 * 5 * 3)
  for mask in zeros[..., 0]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert len(rows) == len(cols) == 5 and np.ptp(rows) == np.ptp(cols) == 4
  assert len({np.flatnonzero(m.any(1))[0] * 100 + np.flatnonzero(m.any(0))[0]
              for m in zeros[..., 0]}) > 1   # positions differ between images
  np.testing.assert_array_equal(
      out, np.asarray(preprocess.augment(key, images, ("cutout",), 4, cutout_size=5)))
  assert not np.array_equal(
      out, np.asarray(preprocess.augment(jax.random.key(1), images, ("cutout",), 4, 5)))
  with pytest.raises(errors.ConfigError, match="cutout_size"):
    preprocess.cutout(key, images, 11)


def _count(name, config):
  model = create_model(name, input_shape=(28, 28, 1), num_classes=10,
                       **configs.model_kwargs(config))
  from flax import nnx
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return sum(x.size for x in jax.tree.leaves(params)), len(jax.tree.leaves(stats))


def test_model_knobs_reach_the_models():
  c = configs.base_config()
  c.model_kwargs.widths = (64,)
  assert _count("mlp", c) == (784 * 64 + 64 + 64 * 10 + 10, 0)
  c.width_multiplier = 2.0
  assert _count("mlp", c) == (784 * 128 + 128 + 128 * 10 + 10, 0)
  c.batch_norm = "on"   # Dense without bias, then BatchNorm's scale and shift
  assert _count("mlp", c) == (784 * 128 + 2 * 128 + 128 * 10 + 10, 2)
  c.dropout = 0.3
  assert create_model("mlp", input_shape=(28, 28, 1), num_classes=10,
                      **configs.model_kwargs(c)).dropout_rate == 0.3
  cnn = configs.base_config()
  base, _ = _count("mnist_cnn", cnn)
  cnn.width_multiplier = 0.5   # S2: conv 16, conv 32, dense 64
  half = 9 * 16 + 16 + 9 * 16 * 32 + 32 + 5 * 5 * 32 * 64 + 64 + 64 * 10 + 10
  assert _count("mnist_cnn", cnn) == (half, 0) and half < base
  cnn.batch_norm = "on"
  assert _count("mnist_cnn", cnn)[1] == 2 * 3   # mean and var for 2 convs + 1 dense
  vgg = configs.base_config()
  vgg.batch_norm = "off"
  model = create_model("vgg", input_shape=(32, 32, 3), num_classes=10,
                       **configs.model_kwargs(vgg))
  assert len(model.norms) == 0


def test_model_knob_errors(monkeypatch):
  c = configs.base_config()
  c.dropout = 0.2
  c.model_kwargs.dropout = 0.1
  with pytest.raises(errors.ConfigError, match="config.dropout"):
    configs.validate(c)
  monkeypatch.setitem(MODELS, "fixed", lambda *, input_shape, num_classes, rngs: None)
  c = configs.base_config()
  c.model, c.width_multiplier = "fixed", 2.0
  with pytest.raises(errors.ConfigError, match="config.width_multiplier.*'fixed'"):
    configs.validate(c)


@pytest.mark.parametrize("key,value", [("label_corruption", 1.5), ("input_corruption", "x"),
                                       ("l1", -1.0), ("l2", -0.1), ("max_norm", -1.0),
                                       ("dropout", 1.0), ("batch_norm", "yes"),
                                       ("width_multiplier", 0.0), ("cutout_size", 0)])
def test_bad_values_name_the_key(key, value):
  c = configs.base_config()
  c[key] = value
  with pytest.raises(errors.ConfigError, match=f"config.{key}"):
    configs.validate(c)


def test_random_labels_shuffled_pixels_end_to_end(tiny_folder, tmp_path):
  c = tiny_config(tiny_folder, label_corruption=1.0, input_corruption="shuffled_pixels",
                  model="mlp", augment="crop,flip,cutout", cutout_size=4, l2=1e-4,
                  max_norm=3.0, dropout=0.1, batch_norm="on", width_multiplier=2.0)
  _, summary = loop.run_training(c, tmp_path / "run")
  assert summary["steps"] == 2 * 3 and np.isfinite(summary["train_loss"])
  assert (tmp_path / "run" / "config.json").read_text().count("label_corruption") == 1


@pytest.mark.parametrize("l2,micro_batches,data_shards", [(0.0, 4, 1), (1e-3, 4, 1),
                                                         (0.0, 2, 2), (0.0, 2, 4)])
def test_micro_batches_give_the_full_batch_update(l2, micro_batches, data_shards):
  """Gradients accumulated over slices (of each device's rows, with `data_shards`) are the
  full-batch mean up to float rounding, and the logits come back in the batch's order."""
  model = create_model("mnist_cnn", input_shape=(28, 28, 1), num_classes=10, seed=0)
  state = create_train_state(model, optax.sgd(0.1))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8))
  # Labels = the model's own predictions: accuracy 1 only if every logit row is in place.
  logits, _ = apply_model(state, state.params, preprocess.normalize(images, (0.0,), (1.0,)),
                          train=False)
  batch = {"image": images, "label": jnp.argmax(logits, -1).astype(jnp.int32)}
  step = jax.jit(train_step, static_argnums=3)
  full, full_metrics = step(state, batch, jax.random.key(0), StepConfig(l2=l2))
  sliced, sliced_metrics = step(state, batch, jax.random.key(0),
                                StepConfig(l2=l2, micro_batches=micro_batches,
                                           data_shards=data_shards))
  changes = lambda s: jax.tree.map(lambda a, b: a - b, s.params, state.params)
  chex.assert_trees_all_close(changes(sliced), changes(full), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(sliced_metrics["loss"], full_metrics["loss"], rtol=1e-6)
  assert full_metrics["accuracy"] == sliced_metrics["accuracy"] == 1.0


@pytest.mark.parametrize("batch,devices,micro,slices", [(64, 1, 16, 4), (64, 8, 16, 1),
                                                         (64, 2, 16, 2), (64, 1, 0, 1)])
def test_micro_batches_per_device(batch, devices, micro, slices):
  config = configs.base_config()
  config.batch_size, config.micro_batch_size = batch, micro
  assert micro_batches(config, devices) == slices


def test_micro_batch_that_does_not_divide_a_device_shard_names_the_keys():
  config = configs.base_config()
  config.batch_size, config.micro_batch_size = 96, 16
  assert micro_batches(config, 2) == 3   # 48 rows per device
  config.micro_batch_size = 32
  with pytest.raises(errors.ConfigError, match="micro_batch_size=32.*batch_size=96.*2 dev"):
    micro_batches(config, 2)


def test_micro_batches_are_refused_with_batch_norm(tmp_path, tiny_folder):
  config = tiny_config(tiny_folder)
  config.model, config.batch_norm, config.micro_batch_size = "mlp", "on", 2
  with pytest.raises(errors.ConfigError, match="micro_batch_size.*ghost_batch_norm=True"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_ghost_batch_norm_normalises_each_slice_and_chains_the_averages():
  """With BatchNorm, slice i is normalised with its own statistics and starts from the
  running averages that slice i-1 left: the step equals that sequence done by hand."""
  model = create_model("mlp", input_shape=(4, 4, 1), num_classes=3, seed=0,
                       widths=(8,), batch_norm=True)
  state = create_train_state(model, optax.sgd(0.1))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(8, 4, 4, 1)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 3, 8).astype(np.int32))
  new_state, metrics = jax.jit(train_step, static_argnums=3)(
      state, {"image": images, "label": labels}, jax.random.key(0),
      StepConfig(micro_batches=2))

  def slice_loss(params, batch_stats, part):
    logits, stats = apply_model(state, params, images[part], train=True,
                                batch_stats=batch_stats)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels[part]).mean(), stats

  grad = jax.value_and_grad(slice_loss, has_aux=True)
  (loss0, stats0), g0 = grad(state.params, state.batch_stats, slice(0, 4))
  (loss1, stats1), g1 = grad(state.params, stats0, slice(4, 8))
  np.testing.assert_allclose(metrics["loss"], (loss0 + loss1) / 2, rtol=1e-6)
  chex.assert_trees_all_close(new_state.batch_stats, stats1, rtol=1e-6)
  expected = jax.tree.map(lambda p, a, b: p - 0.1 * (a + b) / 2, state.params, g0, g1)
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-7)
  # Not the full-batch model: one batch of 8 normalises with other statistics.
  full, _ = jax.jit(train_step, static_argnums=3)(
      state, {"image": images, "label": labels}, jax.random.key(0), StepConfig())
  assert not np.allclose(jax.tree.leaves(full.batch_stats)[0],
                         jax.tree.leaves(new_state.batch_stats)[0])


def test_ghost_batch_norm_run(tmp_path, tiny_folder):
  config = tiny_config(tiny_folder)
  config.model, config.batch_norm, config.micro_batch_size = "mlp", "on", 4
  config.ghost_batch_norm = True
  _, summary = loop.run_training(config, tmp_path / "run")
  assert summary["steps"] > 0 and np.isfinite(summary["test_loss"])