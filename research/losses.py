"""Per-example losses on logits, selected by `config.loss`."""

import jax
import jax.numpy as jnp
import optax

from research import errors

LOSSES = ("cross_entropy", "mse")


def per_example_loss(name: str, logits: jax.Array, labels: jax.Array,
                     label_smoothing: float = 0.0) -> jax.Array:
  """cross_entropy: softmax cross-entropy, optionally with label smoothing.
  mse: mean squared error between the softmax probabilities and the one-hot targets
  (Keras' `loss='mse'` on a softmax output)."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if name == "cross_entropy":
    if label_smoothing:
      targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)
  if name == "mse":
    return jnp.mean(jnp.square(jax.nn.softmax(logits) - targets), axis=-1)
  raise errors.ConfigError(f"config.loss={name!r} is unknown; choose one of {LOSSES}.")
