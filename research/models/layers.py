"""Layers shared by the model zoo.

`max_pool` is written as reshape + max rather than `flax.nnx.max_pool`: the gradient of
`lax.reduce_window` max is a select-and-scatter, which XLA:CPU runs several times slower
than the gradient of a plain reduction (measured in issue 5: the S2 CNN went from 1.5k to
2.5k images/s). For non-overlapping windows both give the same outputs, and the same
gradients wherever the maximum in a window is unique.
"""

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
  x = x[:, :h_out * window, :w_out * window, :]
  x = x.reshape(n, h_out, window, w_out, window, c)
  return x.max(axis=(2, 4))


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
