"""Activations, dropout and BatchNorm shared by the model zoo."""

from flax import nnx
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


def batch_norm(features: int, *, momentum: float, compute_dtype: str,
               rngs: nnx.Rngs, epsilon: float = 1e-5,
               use_scale: bool = True) -> nnx.BatchNorm:
  """nnx.BatchNorm that normalises in float32 and returns `compute_dtype`. Flax computes
  the batch statistics in at least float32 but casts the running averages, scale and
  bias to the layer's dtype; here they stay float32, so that inference in bfloat16 does
  not normalise with rounded statistics. `use_scale=False` freezes the scale at 1."""
  return nnx.BatchNorm(features, momentum=momentum, epsilon=epsilon, use_scale=use_scale,
                       dtype=compute_dtype, promote_dtype=_keep_dtypes, rngs=rngs)


def _keep_dtypes(args: tuple, /, *, dtype=None, inexact=True) -> tuple:
  """BatchNorm's `promote_dtype`: the input (already in the compute dtype) and the
  float32 statistics and parameters as they are; arithmetic on them is float32."""
  del dtype, inexact
  return args
