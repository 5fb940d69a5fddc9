"""Layers shared by the model zoo.

`max_pool` is written with strided slices and its own gradient rather than as
`flax.nnx.max_pool`: the gradient of `lax.reduce_window` max is a select-and-scatter,
which XLA:CPU runs several times slower (issue 5: the S2 CNN went from 1.5k to 2.5k
images/s without it). The plain alternative, reshape + max, is as fast but splits the
gradient among tied maxima (equal values on flat image regions); ours sends it to the
first maximum of each window, as select-and-scatter does, with elementwise ops only, at
the same speed as reshape + max (S2 and S4 train steps, batch 128, within noise).
Outputs and gradients equal nnx.max_pool's bitwise, ties included (tests/test_models.py).
"""

import functools

import jax
import jax.numpy as jnp

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
