"""Rotation and scaling augmentation (issue 14, section 5): one affine resampling per
image on the device, drawn from the step's key."""

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import configs, data_checks, errors, preprocess
from research.training.step import StepConfig


# Jitted, as in the train step (and much faster than op by op).
affine_resample = jax.jit(preprocess.affine_resample)
augment = jax.jit(preprocess.augment, static_argnums=(2, 3),
                  static_argnames=("rotate_degrees", "scale_range"))


def _images(shape=(4, 8, 8, 3), seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_rotate_by_0_and_scale_by_1_are_the_identity():
  images = _images((3, 7, 9, 2))
  out = augment(jax.random.key(0), images, ("rotate", "scale"), 4,
                           rotate_degrees=0.0, scale_range=(1.0, 1.0))
  np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 6, 8, 1), (2, 9, 5, 2)])
def test_rotating_by_90_degrees_is_rot90(shape):
  """Counter-clockwise as displayed, about the centre: a non-square image's central
  square turns like np.rot90 of it; so does every square image."""
  images = _images(shape)
  h, w = shape[1:3]
  side, top, left = min(h, w), (h - min(h, w)) // 2, (w - min(h, w)) // 2
  for angle, turns in ((np.pi / 2, 1), (-np.pi / 2, -1), (np.pi, 2)):
    out = affine_resample(images, jnp.full(2, angle), jnp.ones(2))
    square = np.asarray(images)[:, top:top + side, left:left + side]
    np.testing.assert_allclose(np.asarray(out)[:, top:top + side, left:left + side],
                               np.rot90(square, turns, axes=(1, 2)), atol=1e-5)


def test_a_scale_above_1_zooms_in_and_below_1_fills_with_zeros():
  columns = jnp.broadcast_to(jnp.arange(9.0)[None, None, :, None], (2, 9, 9, 1))
  out = np.asarray(affine_resample(columns, jnp.zeros(2), jnp.array([2.0, 0.5])))
  centre = 4.0   # pixel value = column index; a zoom by 2 halves the offsets from the centre
  np.testing.assert_allclose(out[0, :, :, 0], np.broadcast_to(
      centre + (np.arange(9) - centre) / 2, (9, 9)), atol=1e-6)
  np.testing.assert_allclose(out[1, 4, 2:7, 0], centre + 2 * (np.arange(2, 7) - centre),
                             atol=1e-6)
  assert np.all(out[1, :, :2] == 0) and np.all(out[1, :2] == 0)   # from outside: 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_random_rotate_scale_is_deterministic_per_key_with_shape_and_dtype(dtype):
  images = _images((5, 12, 10, 3)).astype(dtype)
  fn = lambda key, x: augment(key, x, ("rotate", "scale"), 4, rotate_degrees=30.0,
                             scale_range=(0.8, 1.2))
  out = fn(jax.random.key(1), images)
  chex.assert_shape(out, images.shape)
  chex.assert_type(out, dtype)
  chex.assert_tree_all_finite(out)
  np.testing.assert_array_equal(out, fn(jax.random.key(1), images))
  assert not np.array_equal(np.asarray(out, np.float32),
                            np.asarray(fn(jax.random.key(2), images), np.float32))
  assert not np.array_equal(np.asarray(out, np.float32), np.asarray(images, np.float32))


def test_only_the_asked_op_is_drawn():
  """rotate alone keeps the scale at 1 (no pixel leaves the disc of the corners' radius)
  and scale alone keeps the angle at 0 (a symmetric image stays symmetric)."""
  key = jax.random.key(3)
  ones = jnp.ones((8, 9, 9, 1))
  rotated = np.asarray(augment(key, ones, ("rotate",), 4, rotate_degrees=45.0,
                                          scale_range=(3.0, 3.0)))
  np.testing.assert_allclose(rotated[:, 4, :, 0], 1.0, atol=1e-6)  # the middle row is inside
  symmetric = _images((8, 9, 9, 1))
  symmetric = symmetric + symmetric[:, :, ::-1]
  scaled = np.asarray(augment(key, symmetric, ("scale",), 4,
                                         rotate_degrees=90.0, scale_range=(0.7, 1.3)))
  np.testing.assert_allclose(scaled, scaled[:, :, ::-1], atol=1e-5)
  assert not np.allclose(scaled, symmetric, atol=1e-3)


def test_step_config_takes_the_augmentation_keys():
  config = configs.base_config()
  config.augment, config.rotate_degrees, config.scale_range = "rotate,scale", 10, (0.8, 1.2)
  cfg = StepConfig.from_config(config)
  assert (cfg.augment, cfg.rotate_degrees, cfg.scale_range) == (
      ("rotate", "scale"), 10.0, (0.8, 1.2))


@pytest.mark.parametrize("key, value", [("rotate_degrees", -1.0), ("rotate_degrees", 181.0),
                                        ("scale_range", (1.2, 1.0)),
                                        ("scale_range", (0.0, 1.0)), ("scale_range", (1.0,))])
def test_bad_augmentation_values_are_named(key, value):
  config = configs.base_config()
  config[key] = value
  with pytest.raises(errors.ConfigError, match=f"config.{key}"):
    configs.validate(config)


def test_sequences_refuse_rotate_and_scale():
  config = configs.base_config()
  config.augment = "crop,rotate"
  sequences = types.SimpleNamespace(name="mnist1d", image_shape=(40, 1, 1))
  lines = data_checks._augmentation(config, sequences)
  assert len(lines) == 1 and "rotate" in lines[0] and "40x1" in lines[0]
  images = types.SimpleNamespace(name="mnist", image_shape=(28, 28, 1))
  assert data_checks._augmentation(config, images) == []
