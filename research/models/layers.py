"""Layers shared by the model zoo.

`max_pool` is written with strided slices and its own gradient rather than as
`flax.nnx.max_pool`: the gradient of `lax.reduce_window` max is a select-and-scatter,
which XLA:CPU runs several times slower (issue 5: the S2 CNN went from 1.5k to 2.5k
images/s without it). The plain alternative, reshape + max, is as fast but splits the
gradient among tied maxima (equal values on flat image regions); ours sends it to the
first maximum of each window, as select-and-scatter does, with elementwise ops only, at
the same speed as reshape + max (S2 and S4 train steps, batch 128, within noise).
Outputs and gradients equal nnx.max_pool's bitwise, ties included (tests/test_models.py).

`conv` is `nnx.Conv` with the output channels rounded up to a multiple of 8 inside the
call: XLA:CPU's convolution is vectorised over output channels and runs S4's first
convolution (3 -> 6 channels, 5x5, 16 images) in 1.25 ms, but in 0.7 ms with 8 or 16
output channels. The extra filters are zeros and their outputs are dropped, so the
results are those of the plain convolution (tests/test_models.py); the S4 train step went
from 4.4k to 6.1k images/s at batch 32 and from 6.9k to 8.0k at batch 128 (one
interleaved run each, 2-core AMD EPYC). Padding the input channels too (for the gradient of S4's second
convolution, 6 channels) was slower. Layers whose channels are already multiples of 8
(S2, S3, the VGG at width 1) run the plain convolution.

On XLA:CPU, `conv` also writes its own gradients (`nhwc_conv`): the same convolutions as
autodiff's, but put into the one dimension order (NHWC input, HWIO kernel, NHWC output)
that XLA:CPU's convolution kernels take, by explicit transposes. XLA:CPU transposes
autodiff's gradient convolutions into that order only in a program's entry computation;
inside a while loop (several train steps in one call, `lax.scan`) they stay as they are
and run as generic loops (S2's train step 11x slower, benchmarks/scan_vs_loop.py). The
gradients are bitwise those of autodiff on CPU (tests/test_models.py). Other backends
take autodiff's convolutions: their compilers arrange layouts everywhere, and they were
not measured.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from research import errors

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
}


def activation(name: str):
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise errors.ConfigError(
        f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.") from None


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
  """Non-overlapping max pooling over NHWC, 'VALID' semantics (odd edges are dropped)."""
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


CHANNEL_MULTIPLE = 8


def conv(in_features: int, out_features: int, kernel: int, *, padding: str,
         use_bias: bool, rngs: nnx.Rngs) -> nnx.Conv:
  """A square-kernel `nnx.Conv` (same parameters) computed by `padded_conv`."""
  return nnx.Conv(in_features, out_features, (kernel, kernel), padding=padding,
                  use_bias=use_bias, conv_general_dilated=padded_conv, rngs=rngs)


def padded_conv(lhs: jax.Array, rhs: jax.Array, *args, **kwargs) -> jax.Array:
  """`lax.conv_general_dilated` for an HWIO kernel, with zero filters added up to a
  multiple of CHANNEL_MULTIPLE output channels and their outputs sliced off; on CPU
  with `nhwc_conv`'s gradients where it applies."""
  out = rhs.shape[-1]
  extra = -out % CHANNEL_MULTIPLE
  if extra:
    rhs = jnp.pad(rhs, [(0, 0)] * (rhs.ndim - 1) + [(0, extra)])
  on_cpu = jax.default_backend() == "cpu"
  conv_fn = (nhwc_conv if on_cpu and _nhwc_applies(lhs, rhs, *args, **kwargs)
             else jax.lax.conv_general_dilated)
  y = conv_fn(lhs, rhs, *args, **kwargs)
  return y[..., :out] if extra else y


_NHWC = ("NHWC", "HWIO", "NHWC")


def _nhwc_applies(lhs, rhs, window_strides, padding, lhs_dilation=None,
                  rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                  precision=None, out_sharding=None, **others) -> bool:
  """Whether `nhwc_conv` computes this call: a plain 2-D NHWC/HWIO convolution."""
  ones = lambda xs: xs is None or all(x == 1 for x in xs)
  return (lhs.ndim == 4 and not others and out_sharding is None
          and feature_group_count == 1 and ones(window_strides) and ones(lhs_dilation)
          and ones(rhs_dilation)
          and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
          == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers))


def nhwc_conv(lhs, rhs, window_strides, padding, *, precision=None, **unused) -> jax.Array:
  """A stride-1 NHWC/HWIO convolution (`padding` 'SAME', 'VALID' or pairs) whose
  gradients are NHWC/HWIO convolutions too; the other arguments are checked by
  `_nhwc_applies`."""
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides,
                                      padding)
  return _nhwc_conv(lhs, rhs, tuple(map(tuple, padding)), precision)


def _conv_nhwc(x, w, padding, precision):
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _nhwc_conv(x, w, padding, precision):
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


_nhwc_conv.defvjp(_nhwc_conv_fwd, _nhwc_conv_bwd)


def dropout(x: jax.Array, rate: float, key: jax.Array | None, train: bool) -> jax.Array:
  """Inverted dropout driven by an explicit key (see base.py for why not nnx.Dropout)."""
  if not train or rate == 0.0:
    return x
  if key is None:
    raise errors.ConfigError("dropout needs a key in training mode: pass dropout_key=...")
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def layer_key(key: jax.Array | None, index: int) -> jax.Array | None:
  """A distinct key for the index-th dropout layer, so masks are independent."""
  return None if key is None else jax.random.fold_in(key, index)
