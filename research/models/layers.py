"""Activations and dropout shared by the model zoo."""

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
