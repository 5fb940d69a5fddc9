"""research/xla_cpu.py: the faster kernels give plain flax layers' results (bitwise where
they should), apply only where they can, and apply only on CPU."""

import pathlib

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.common import non_canonical_convolutions
from research import configs, optim, sharding, tuning, xla_cpu
from research.models import create_model
from research.training import jitted
from research.training.state import call_model, create_train_state
from research.training.step import StepConfig

from conftest import REPO


def _loss_and_grads(fn, weights):
  """jitted (module, x) -> (loss, (module grads, x grads)) of sum(fn(module, x) * w)."""
  loss = lambda module, x: jnp.sum(fn(module, x) * weights)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 9, 7, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_reduce_window(shape, ties):
  """Outputs and gradients equal nnx.max_pool's (select-and-scatter), also where a window
  holds several equal maxima (after ReLU, or on constant image regions): the first one
  in row-major order gets the gradient."""
  x = jax.random.normal(jax.random.key(0), shape)
  if ties:
    x = jnp.round(jax.nn.relu(x))   # many windows of equal values, zeros among them
  plain = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  fast = xla_cpu.fast_kernels(plain)
  np.testing.assert_array_equal(fast(x), plain(x))
  weights = jax.random.normal(jax.random.key(1), plain(x).shape)
  grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x) * weights)))(x)
  np.testing.assert_array_equal(grad(fast), grad(plain))
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(fast(x)))).lower(x).as_text()
  assert "select_and_scatter" not in hlo and "reduce_window" not in hlo


@pytest.mark.parametrize("features, kernel, padding, strides", [
    ((3, 6), 5, "VALID", 1), ((6, 16), 5, "VALID", 1), ((5, 12), 3, "SAME", 1),
    ((2, 6), 3, "SAME", 2)])
def test_conv_matches_nnx_conv(features, kernel, padding, strides):
  """nnx.Conv through fast_kernels (output channels padded to a multiple of 8, NHWC
  gradients where the stride is 1): the plain layer's outputs and gradients, under jit
  as in a train step."""
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, features[0]))
  conv = nnx.Conv(*features, (kernel, kernel), strides=strides, padding=padding,
                  rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(conv)
  apply = lambda params, x: nnx.merge(graphdef, params)(x)
  weights = jax.random.normal(jax.random.key(1), conv(x).shape)
  (loss, (dw, dx)) = _loss_and_grads(apply, weights)(params, x)
  (fast_loss, (fast_dw, fast_dx)) = _loss_and_grads(xla_cpu.fast_kernels(apply),
                                                    weights)(params, x)
  np.testing.assert_allclose(fast_loss, loss, rtol=1e-6)
  chex.assert_trees_all_close(fast_dw, dw, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fast_dx, dx, rtol=1e-5, atol=1e-5)
  # ... and really computed by this module's versions: padded filters, own gradients.
  jaxpr = str(jax.make_jaxpr(xla_cpu.fast_kernels(apply))(params, x))
  assert ("custom_vjp_call" in jaxpr) == (strides == 1)
  padded = features[1] + -features[1] % xla_cpu.CHANNEL_MULTIPLE
  assert ("pad[" in jaxpr) == (padded != features[1])
  assert f"{kernel},{kernel},{features[0]},{padded}]" in jaxpr


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
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, shape), jax.random.normal(kw, kernel)
  plain = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  pads = (jax.lax.padtype_to_pads(shape[1:3], kernel[:2], (1, 1), padding)
          if isinstance(padding, str) else padding)
  ours = lambda x, w: xla_cpu.nhwc_conv(x, w, tuple(map(tuple, pads)))
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


def test_only_nhwc_stride_one_convolutions_take_nhwc_conv():
  """Stride 1 without dilation: nhwc_conv; strided or dilated: lax's convolution."""
  assert xla_cpu._nhwc_applies((1, 1), (1, 1), (1, 1))
  assert not xla_cpu._nhwc_applies((2, 2), (1, 1), (1, 1))
  assert not xla_cpu._nhwc_applies((1, 1), (1, 1), (2, 2))


@pytest.mark.parametrize("name", ["lenet5", "vgg"])
def test_a_tuned_model_computes_the_plain_model(name):
  """A whole model through fast_kernels, with BatchNorm statistics and dropout: the
  plain model's logits, statistics and gradients (to float rounding)."""
  model = create_model(name, input_shape=(32, 32, 3), num_classes=10, seed=0)
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))

  def loss(fn, params):
    logits, new_stats = fn(graphdef, params, stats, x, train=True,
                           dropout_key=jax.random.key(1))
    return jnp.sum(logits ** 2), (logits, new_stats)

  plain, fast = (jax.jit(jax.value_and_grad(lambda p, fn=fn: loss(fn, p), has_aux=True))
                 for fn in (call_model, xla_cpu.fast_kernels(call_model)))
  chex.assert_trees_all_close(fast(params), plain(params), rtol=1e-4, atol=1e-4)


def test_tuning_applies_only_on_cpu():
  """On GPU and TPU nothing of xla_cpu runs: the plain model application, no compiler
  options, plain calls."""
  for platform in ("gpu", "tpu"):
    tuned = tuning.for_platform(platform, num_devices=8)
    assert tuned == tuning.Tuning()
    assert tuned.model_fn(call_model) is call_model
    assert tuned.compiler_options(512) == {}
  cpu = tuning.for_platform("cpu", num_devices=1, cpu_convolutions="eigen")
  assert cpu.model_fn(call_model) is xla_cpu.fast_kernels(call_model)
  assert cpu.compiler_options(512) == xla_cpu.compiler_options("eigen", 512) != {}
  assert tuning.for_platform("cpu", num_devices=2).dispatch is xla_cpu.one_call_at_a_time


def test_models_and_train_step_name_no_backend():
  """Backend-specific code lives in research/xla_cpu.py alone."""
  files = [*(REPO / "research" / "models").glob("*.py"),
           *(REPO / "research" / "training").glob("*.py")]
  for path in files:
    text = pathlib.Path(path).read_text().lower()
    assert "cpu" not in text and "xla_cpu" not in text, path


def _ynnpack_convolutions(hlo_text: str) -> int:
  """How many YNNPACK fusions of an optimised HLO module compute a convolution."""
  bodies, name = {}, None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      name = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
      bodies[name.lstrip("%")] = []
    elif name is not None:
      bodies[name.lstrip("%")].append(line)
  called = [line.split("calls=%")[1].split(",")[0] for body in bodies.values()
            for line in body if "__ynn_fusion" in line and "calls=%" in line]
  return sum(any(" convolution(" in line for line in bodies[c]) for c in called)


def test_cpu_convolutions_choose_the_library_by_rows():
  """config.cpu_convolutions reaches XLA: 'eigen' (and 'auto' at >= 64 rows) leaves no
  convolution to YNNPACK, which XLA:CPU gives the kernel gradient to by default (jax
  0.10.2; if that assertion fails, XLA changed its default: re-measure the choice)."""

  def kernel_grad(x, w):
    conv = lambda w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.grad(lambda w: jnp.sum(conv(w) ** 2))(w)

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 12, 12, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((5, 5, 3, 8)), jnp.float32)
  results = {}
  for choice, rows in [("ynnpack", 64), ("eigen", 64), ("auto", 64), ("auto", 63)]:
    fn = jax.jit(kernel_grad, compiler_options=xla_cpu.compiler_options(choice, rows))
    compiled = fn.lower(x, w).compile()
    results[choice, rows] = (_ynnpack_convolutions(compiled.as_text()), compiled(x, w))
  assert results["ynnpack", 64][0] > 0 and results["auto", 63][0] > 0
  assert results["eigen", 64][0] == 0 and results["auto", 64][0] == 0
  reference = np.asarray(results["ynnpack", 64][1])
  np.testing.assert_allclose(results["eigen", 64][1], reference, rtol=0,
                             atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("micro_batch_size, on_ynnpack", [(0, False), (16, True)])
def test_run_step_picks_the_convolution_library_by_rows_per_call(micro_batch_size,
                                                                 on_ynnpack):
  """The loop's train step at batch 64: Eigen for the whole batch, YNNPACK for slices
  of 16 (config.cpu_convolutions='auto')."""
  c = configs.base_config()
  c.model, c.batch_size, c.micro_batch_size = "mnist_cnn", 64, micro_batch_size
  c.normalize, c.normalize_mean, c.normalize_std = "explicit", (0.0,), (1.0,)
  mesh = sharding.make_mesh(1)
  tuned = tuning.for_mesh(mesh, c)
  model = create_model(c.model, input_shape=(28, 28, 1), num_classes=10, seed=0)
  state = create_train_state(model, optim.create_optimizer(c, steps_per_epoch=1)[0],
                             tuned.model_fn)
  train_fn = jitted.make_train_fn(StepConfig.from_config(c, 1), mesh, c.batch_size,
                                  seed=0, tuning=tuned)
  data = (jnp.zeros((64, 28, 28, 1), jnp.uint8), jnp.zeros(64, jnp.int32),
          jnp.arange(64, dtype=jnp.int32))
  hlo = train_fn.lower(state, *data, 0, 1).compile().as_text()
  assert (_ynnpack_convolutions(hlo) > 0) == on_ynnpack
