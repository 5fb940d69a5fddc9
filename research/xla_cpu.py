"""Everything that exists only for XLA:CPU. Setup applies it when the platform is CPU
(`research/tuning.py`); on GPU and TPU none of it runs.

- `fast_kernels(fn)` runs a model application with its convolutions and max pools
  swapped for versions XLA:CPU computes faster, with bitwise the same results on CPU
  (tests/test_xla_cpu.py):
  - convolutions get output channels padded to a multiple of 8 (XLA:CPU vectorises over
    them) and gradients written as NHWC/HWIO convolutions (`nhwc_conv`): XLA:CPU puts
    autodiff's gradient convolutions into the order its kernels take only in a
    program's entry computation, so inside a loop over train steps they would run as
    generic loops;
  - non-overlapping max pools get a gradient of elementwise ops instead of the
    select-and-scatter, which XLA:CPU runs slowly.
- `compiler_options(library, rows)` chooses the convolution library per jitted call.
- `one_call_at_a_time(fn)` waits for each call when a mesh has several CPU devices.

Why each one, with the measurements: docs/performance.md.
"""

import functools

from absl import logging
import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import numpy as np

# config.cpu_convolutions: the library XLA:CPU runs convolutions with.
CONVOLUTION_LIBRARIES = ("auto", "ynnpack", "eigen")
# 'auto' picks Eigen from this many rows per device and call (one micro-batch slice).
EIGEN_FROM_ROWS = 64
CHANNEL_MULTIPLE = 8
_NHWC = ("NHWC", "HWIO", "NHWC")


# --- The model application, with XLA:CPU's faster kernels -------------------------------

@functools.cache
def fast_kernels(fn):
  """`fn` (a function of arrays and static values) with its convolutions and max pools
  computed by this module's versions: `fn` is traced to a jaxpr and evaluated equation by
  equation, with those equations replaced. Apply it before differentiating. Cached, so
  that one `fn` gets one wrapper, which jit sees as the same static value."""

  @functools.wraps(fn)
  def rewritten(*args, **kwargs):
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dynamic = [i for i, x in enumerate(leaves) if isinstance(x, (jax.Array, np.ndarray))]

    def of_arrays(*arrays):
      full = list(leaves)
      for i, x in zip(dynamic, arrays):
        full[i] = x
      args, kwargs = jax.tree.unflatten(treedef, full)
      return fn(*args, **kwargs)

    arrays = [leaves[i] for i in dynamic]
    closed, out_shape = jax.make_jaxpr(of_arrays, return_shape=True)(*arrays)
    out = _evaluate(closed.jaxpr, closed.consts, arrays)
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return rewritten


def _evaluate(jaxpr, consts, args) -> list:
  """Evaluates `jaxpr`, computing the equations that `_REWRITES` knows with its rules."""
  env = {}

  def read(var):
    return var.val if isinstance(var, jex_core.Literal) else env[var]

  for var, value in zip(jaxpr.constvars, consts):
    env[var] = value
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    inputs = [read(v) for v in eqn.invars]
    rule = _REWRITES.get(eqn.primitive.name)
    outputs = rule(*inputs, **eqn.params) if rule else None
    if outputs is None:
      outputs = _bind(eqn, inputs)
    if not eqn.primitive.multiple_results:
      outputs = [outputs]
    for var, value in zip(eqn.outvars, outputs):
      env[var] = value
  return [read(v) for v in jaxpr.outvars]


def _bind(eqn, inputs):
  """The equation as jax.core.eval_jaxpr runs it."""
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):   # jax < 0.9 also returned sub-functions
    subfuns, params = params
  with eqn.ctx.manager:
    return eqn.primitive.bind(*subfuns, *inputs, **params)


def _conv_rule(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
               dimension_numbers, feature_group_count, batch_group_count, precision,
               preferred_element_type, **others):
  """A convolution with its output channels padded to CHANNEL_MULTIPLE (zero filters,
  their outputs dropped) and, for a plain stride-1 NHWC/HWIO one, `nhwc_conv`'s
  gradients; None (keep the equation) for anything else."""
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  if (lhs.ndim != 4 or dimension_numbers != nhwc or feature_group_count != 1
      or batch_group_count != 1 or preferred_element_type is not None
      or others.get("out_sharding") is not None):
    return None
  out = rhs.shape[-1]
  extra = -out % CHANNEL_MULTIPLE
  if extra:
    rhs = jnp.pad(rhs, [(0, 0)] * 3 + [(0, extra)])
  if _nhwc_applies(window_strides, lhs_dilation, rhs_dilation):
    y = nhwc_conv(lhs, rhs, tuple(map(tuple, padding)), precision)
  else:
    y = jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                     rhs_dilation, _NHWC, precision=precision)
  return y[..., :out] if extra else y


def _nhwc_applies(*strides_and_dilations) -> bool:
  """Whether `nhwc_conv` computes an NHWC/HWIO convolution: stride 1, no dilation."""
  return all(x == 1 for xs in strides_and_dilations for x in xs)


def _conv_nhwc(x, w, padding, precision):
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def nhwc_conv(x, w, padding, precision=None):
  """A stride-1 NHWC/HWIO convolution with explicit `padding` pairs, whose gradients are
  NHWC/HWIO convolutions too: bitwise autodiff's on CPU, in the order XLA:CPU's kernels
  take also inside loops."""
  return _conv_nhwc(x, w, padding, precision)


def _nhwc_conv_fwd(x, w, padding, precision):
  return _conv_nhwc(x, w, padding, precision), (x, w)


def _nhwc_conv_bwd(padding, precision, residuals, g):
  x, w = residuals
  kh, kw = w.shape[:2]
  (top, bottom), (left, right) = padding
  # Kernel gradient: the input channels play the batch and the images the input
  # channels, correlated with the output gradient as a kernel of the output's size.
  dw = _conv_nhwc(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)),
                  padding, precision)
  # Input gradient: a full correlation with the flipped kernel, its channel axes swapped.
  flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
  dx = _conv_nhwc(g, flipped, ((kh - 1 - top, kh - 1 - bottom),
                               (kw - 1 - left, kw - 1 - right)), precision)
  return dx, jnp.transpose(dw, (1, 2, 0, 3))


nhwc_conv.defvjp(_nhwc_conv_fwd, _nhwc_conv_bwd)


def _max_pool_rule(x, *, window_dimensions, window_strides, padding, base_dilation,
                   window_dilation):
  """A non-overlapping 'VALID' max pool over H and W of NHWC as `max_pool`; None (keep
  the equation) for any other window."""
  if (x.ndim != 4 or window_dimensions != window_strides
      or window_dimensions[0] != 1 or window_dimensions[3] != 1
      or window_dimensions[1] != window_dimensions[2]
      or any(p != (0, 0) for p in padding)
      or any(d != 1 for d in (*base_dilation, *window_dilation))):
    return None
  return max_pool(x, window_dimensions[1])


def max_pool(x: jax.Array, window: int) -> jax.Array:
  """Non-overlapping max pooling over NHWC, 'VALID' (odd edges are dropped): outputs
  and gradients are `nnx.max_pool`'s bitwise, the gradient of tied maxima going to the
  first one, as select-and-scatter does, but computed with elementwise ops."""
  n, h, w, c = x.shape
  h_out, w_out = h // window, w // window
  # The dropped edge gets a zero gradient through this slice.
  return _pool(x[:, :h_out * window, :w_out * window, :], window)


def _window_parts(x: jax.Array, window: int) -> list[jax.Array]:
  """The window*window strided views of x, in row-major order within the window."""
  return [x[:, i::window, j::window, :] for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool(x: jax.Array, window: int) -> jax.Array:
  return functools.reduce(jnp.maximum, _window_parts(x, window))


def _pool_fwd(x, window):
  y = _pool(x, window)
  return y, (x, y)


def _pool_bwd(window, residuals, g):
  x, y = residuals
  taken = jnp.zeros(y.shape, bool)
  grads = []
  for part in _window_parts(x, window):   # the first maximum of each window wins
    hit = (part == y) & ~taken
    taken = taken | hit
    grads.append(jnp.where(hit, g, 0.0).astype(g.dtype))
  n, h_out, w_out, c = y.shape
  rows = [jnp.stack(grads[i * window:(i + 1) * window], axis=3).reshape(
      n, h_out, w_out * window, c) for i in range(window)]
  return (jnp.stack(rows, axis=2).reshape(n, h_out * window, w_out * window, c),)


_pool.defvjp(_pool_fwd, _pool_bwd)

_REWRITES = {"conv_general_dilated": _conv_rule, "reduce_window_max": _max_pool_rule}


# --- Compilation and dispatch -----------------------------------------------------------

def compiler_options(library: str, rows: int) -> dict:
  """`jax.jit` compiler options that give XLA:CPU's convolutions to YNNPACK (XLA's
  default) or to XLA's Eigen kernels; `rows` is what each device's call holds. 'auto'
  takes Eigen from EIGEN_FROM_ROWS rows, where YNNPACK's kernel gradients slow down per
  image. Dots stay on YNNPACK either way; the two differ in float rounding only."""
  if library == "auto":
    library = "eigen" if rows >= EIGEN_FROM_ROWS else "ynnpack"
  if library == "ynnpack" or not _eigen_option_accepted():
    return {}
  return dict(_EIGEN_CONVOLUTIONS)


# XLA's default list of YNNPACK fusions without the convolutions: the optimised HLO equals
# that of XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution.
_EIGEN_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                       "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def _eigen_option_accepted() -> bool:
  """Whether this jaxlib takes the option: it is experimental and may be renamed."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=_EIGEN_CONVOLUTIONS).lower(
        jnp.zeros(())).compile()
  except jax.errors.JaxRuntimeError as e:
    logging.warning("config.cpu_convolutions: this jaxlib does not take %s (%s); "
                    "XLA's default convolutions are used.", _EIGEN_CONVOLUTIONS, e)
    return False
  return True


def one_call_at_a_time(fn):
  """`fn`, waiting for each call's result. For meshes of several CPU devices: XLA:CPU
  runs every device's share on one thread pool, and with the next call queued, devices
  waiting in the gradient all-reduce can take every thread from a device that has not
  reached it, and the process hangs (tests/test_cli.py runs such a mesh)."""

  @functools.wraps(fn)
  def waiting(*args):
    return jax.block_until_ready(fn(*args))

  return waiting
