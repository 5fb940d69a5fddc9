"""Every registered model: output shapes (chex), seed parameter counts, shape errors."""

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import errors
from research.models import MODELS, create_model

MNIST, CIFAR = (28, 28, 1), (32, 32, 3)
# Parameter counts of the seed recipes, computed by hand from the layer shapes.
SEED_PARAMS = {
    ("mlp", MNIST): 784 * 64 + 64 + 64 * 10 + 10,                                  # S1
    ("mnist_cnn", MNIST): 320 + 18496 + 1600 * 128 + 128 + 1290,                   # S2
    ("minimal_cnn", MNIST): 320 + 13 * 13 * 32 * 10 + 10,                         # S3
    ("lenet5", CIFAR): 62006,                                                     # S4
    ("cnn32", CIFAR): 896 + 18496 + 2304 * 64 + 64 + 650,                         # S5
    ("dropout_cnn", CIFAR): 4864 + 204928 + 3200 * 1024 + 1024 + 10250,           # S6
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_output_shape(name, shape):
  model = create_model(name, input_shape=shape, num_classes=7, seed=0)
  for train in (False, True):
    logits = model(jnp.zeros((3, *shape)), train=train, dropout_key=jax.random.key(1))
    chex.assert_shape(logits, (3, 7))
    chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name,shape", sorted(SEED_PARAMS))
def test_seed_parameter_counts(name, shape):
  model = create_model(name, input_shape=shape, num_classes=10)
  params = nnx.state(model, nnx.Param)
  assert sum(x.size for x in jax.tree.leaves(params)) == SEED_PARAMS[(name, shape)]


def test_wrong_input_shape_is_caught():
  model = create_model("mnist_cnn", input_shape=MNIST, num_classes=10)
  with pytest.raises(AssertionError):
    model(jnp.zeros((2, 32, 32, 3)))


def test_unknown_model_and_bad_kwargs_name_the_problem():
  with pytest.raises(errors.ConfigError, match="registered models"):
    create_model("resnet9000", input_shape=MNIST, num_classes=10)
  with pytest.raises(errors.ConfigError, match="mlp"):
    create_model("mlp", input_shape=MNIST, num_classes=10, widht=3)


@pytest.mark.parametrize("name", ["lenet5", "vgg"])
def test_inputs_too_small_for_the_pooling_are_refused(name):
  """MNIST-1D's (40, 1, 1) sequences would pool to nothing."""
  with pytest.raises(errors.ConfigError, match="too small"):
    create_model(name, input_shape=(40, 1, 1), num_classes=10)


def test_dropout_is_active_only_in_training():
  model = create_model("mlp", input_shape=MNIST, num_classes=10, widths=(256,), dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (4, *MNIST))
  a = model(x, train=True, dropout_key=jax.random.key(1))
  b = model(x, train=True, dropout_key=jax.random.key(2))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(model(x), model(x, train=False))


def test_width_multiplier_scales_vgg():
  small = create_model("vgg", input_shape=CIFAR, num_classes=10, width_multiplier=0.5)
  big = create_model("vgg", input_shape=CIFAR, num_classes=10, width_multiplier=2.0)
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(big) > 10 * count(small)


@pytest.mark.parametrize("name, shape, kwargs", [
    ("mlp", MNIST, {}), ("lenet5", CIFAR, {}), ("vgg", CIFAR, {}),
    ("airbench", CIFAR, {"widths": (4, 4, 4)})])
def test_jitted_construction_gives_the_eager_parameters(name, shape, kwargs):
  """create_model builds under one jit (one compile instead of one per initialiser op),
  compiled with less optimisation; the parameters are bitwise those of building the
  module eagerly, op by op fully optimised."""
  jitted = nnx.state(create_model(name, input_shape=shape, num_classes=10, seed=3, **kwargs))
  eager = nnx.state(MODELS[name](input_shape=shape, num_classes=10, rngs=nnx.Rngs(params=3),
                                 **kwargs))
  chex.assert_trees_all_equal(jitted, eager)
