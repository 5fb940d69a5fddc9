"""The contract every registered model follows.

A model is an `nnx.Module` built as `Model(input_shape=(H, W, C), num_classes=K,
rngs=nnx.Rngs(params=seed), **hyperparameters)` and called as
`model(images, train=bool, dropout_key=key_or_None) -> logits`. Dropout takes its key
as an argument instead of holding an `nnx.Rngs` stream, so the model state holds only
parameters and BatchNorm statistics, and the train step stays a pure function of
(state, batch, key).
"""

import chex
import jax
import jax.numpy as jnp


def check_input(x: jax.Array, input_shape) -> None:
  chex.assert_rank(x, 4)
  chex.assert_shape(x, (None, *input_shape))


def check_logits(logits: jax.Array, batch: int, num_classes: int) -> None:
  chex.assert_shape(logits, (batch, num_classes))


def flatten(x: jax.Array) -> jax.Array:
  return jnp.reshape(x, (x.shape[0], -1))
