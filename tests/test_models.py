"""Every registered model: output shapes (chex), seed parameter counts, shape errors, and
the reshape max-pool against flax's reduce_window pooling."""

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import errors
from research.models import MODELS, create_model, layers

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


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 9, 7, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_reduce_window(shape, ties):
  """Outputs and gradients equal nnx.max_pool's (select-and-scatter), also where a window
  holds several equal maxima (after ReLU, or on constant image regions): the first one
  in row-major order gets the gradient."""
  x = jax.random.normal(jax.random.key(0), shape)
  if ties:
    x = jnp.round(jax.nn.relu(x))   # many windows of equal values, zeros among them
  reference = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(layers.max_pool(x), reference(x))
  weights = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * weights))(x)
  np.testing.assert_array_equal(grad(jax.jit(layers.max_pool)), grad(reference))


@pytest.mark.parametrize("features, kernel, padding", [((3, 6), 5, "VALID"),
                                                      ((6, 16), 5, "VALID"),
                                                      ((5, 12), 3, "SAME")])
def test_padded_conv_matches_nnx_conv(features, kernel, padding):
  """layers.conv (output channels padded to a multiple of 8 inside the call) has
  nnx.Conv's parameters, outputs and gradients, under jit as in a train step."""
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, features[0]))
  ours = layers.conv(*features, kernel, padding=padding, use_bias=True, rngs=nnx.Rngs(0))
  plain = nnx.Conv(*features, (kernel, kernel), padding=padding, rngs=nnx.Rngs(0))
  chex.assert_trees_all_equal(nnx.state(ours), nnx.state(plain))
  weights = jax.random.normal(jax.random.key(1), plain(x).shape)

  @jax.jit
  def loss_and_grads(module, x):
    loss = lambda module, x: jnp.sum(module(x) * weights)
    return jax.value_and_grad(loss, argnums=(0, 1))(module, x)

  (ours_loss, (ours_dw, ours_dx)), (loss, (dw, dx)) = (loss_and_grads(ours, x),
                                                       loss_and_grads(plain, x))
  np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ours_loss, loss, rtol=1e-6)
  chex.assert_trees_all_close(nnx.state(ours_dw), nnx.state(dw), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours_dx, dx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, shape", [("lenet5", (32, 32, 3)), ("vgg", (32, 32, 3))])
def test_jitted_construction_gives_the_eager_parameters(name, shape):
  """create_model builds under one jit (one compile instead of one per initialiser op);
  the parameters are bitwise those of building the module eagerly."""
  jitted = nnx.state(create_model(name, input_shape=shape, num_classes=10, seed=3))
  eager = nnx.state(MODELS[name](input_shape=shape, num_classes=10, rngs=nnx.Rngs(params=3)))
  chex.assert_trees_all_equal(jitted, eager)


@pytest.mark.parametrize("shape, kernel, padding", [((4, 12, 12, 3), (5, 5, 3, 6), "VALID"),
                                                    ((4, 9, 11, 5), (3, 3, 5, 16), "SAME"),
                                                    ((2, 8, 8, 4), (4, 2, 4, 8), "SAME"),
                                                    ((2, 8, 8, 4), (3, 2, 4, 8),
                                                     ((2, 0), (1, 3)))])
def test_nhwc_conv_gradients_are_autodiffs_also_inside_scan(shape, kernel, padding):
  """nhwc_conv's own gradients equal autodiff's bitwise, also as the body of lax.scan,
  where they stay in the NHWC/HWIO order of XLA:CPU's kernels for 'VALID' and 'SAME'
  padding (with some explicit, uneven paddings XLA folds a transpose back into one of
  them: correct, and slow)."""
  from benchmarks.common import non_canonical_convolutions
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, shape), jax.random.normal(kw, kernel)
  plain = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = lambda x, w: layers.nhwc_conv(x, w, (1, 1), padding)
  g = jax.random.normal(kg, plain(x, w).shape)
  np.testing.assert_array_equal(ours(x, w), plain(x, w))

  def grads(conv, scanned):
    vjp = lambda x, w, g: jax.vjp(conv, x, w)[1](g)
    if not scanned:
      return jax.jit(vjp)

    def scan(x, w, g):
      def body(total, shift):   # shifted inputs: nothing can be hoisted out of the loop
        return jax.tree.map(jnp.add, total, vjp(x + shift, w, g)), None
      return jax.lax.scan(body, (jnp.zeros_like(x), jnp.zeros_like(w)), jnp.zeros(2))[0]
    return jax.jit(scan)

  expected = grads(plain, False)(x, w, g)
  chex.assert_trees_all_equal(grads(ours, False)(x, w, g), expected)
  # Two iterations that add the same gradients: exactly twice the plain call's. Autodiff's
  # own scanned gradients run on XLA's generic loops and differ in rounding.
  twice = jax.tree.map(lambda a: a + a, expected)
  chex.assert_trees_all_equal(grads(ours, True)(x, w, g), twice)
  chex.assert_trees_all_close(grads(plain, True)(x, w, g), twice, rtol=1e-4, atol=1e-4)
  hlo = grads(ours, True).lower(x, w, g).compile().as_text()
  assert "convolution(" in hlo
  assert non_canonical_convolutions(hlo) == [] or not isinstance(padding, str)
  assert non_canonical_convolutions(grads(plain, True).lower(x, w, g).compile().as_text())


def test_conv_layer_takes_nhwc_conv_on_cpu_only_where_it_applies():
  """Stride 1, NHWC/HWIO, no dilation or groups: nhwc_conv; anything else: lax's."""
  x, w = jnp.zeros((1, 6, 6, 2)), jnp.zeros((3, 3, 2, 8))
  assert layers._nhwc_applies(x, w, (1, 1), "SAME", dimension_numbers=
                              jax.lax.conv_dimension_numbers(x.shape, w.shape,
                                                             ("NHWC", "HWIO", "NHWC")))
  assert not layers._nhwc_applies(x, w, (2, 2), "SAME")
  assert not layers._nhwc_applies(x, w, (1, 1), "SAME", rhs_dilation=(2, 2))
  assert not layers._nhwc_applies(x, jnp.zeros((3, 3, 1, 8)), (1, 1), "SAME",
                                  feature_group_count=2)
  assert not layers._nhwc_applies(x, w, (1, 1), "SAME", dimension_numbers=
                                  ("NCHW", "OIHW", "NCHW"))
  strided = nnx.Conv(2, 8, (3, 3), strides=2, conv_general_dilated=layers.padded_conv,
                     rngs=nnx.Rngs(0))
  plain = nnx.Conv(2, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
  np.testing.assert_array_equal(strided(x), plain(x))
