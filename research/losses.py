"""Per-example losses on logits, selected by `config.loss`, and what a head's logits mean
for each: the predicted class and the class probabilities.

`binary_cross_entropy` is the Keras `Dense(1, activation='sigmoid')` head: one logit per
example, the probability of class 1, and class 1 predicted where the logit is > 0. The
other losses take one logit per class.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import errors

LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")
BINARY = "binary_cross_entropy"


def num_outputs(name: str, num_classes: int) -> int:
  """The width of the model's head: one unit for the binary loss, else one per class."""
  return 1 if name == BINARY else num_classes


def per_example_loss(name: str, logits: jax.Array, labels: jax.Array,
                     label_smoothing: float = 0.0,
                     class_weights: tuple[float, ...] = ()) -> jax.Array:
  """cross_entropy: softmax cross-entropy, optionally with label smoothing.
  binary_cross_entropy: sigmoid cross-entropy of the single logit against label 0 or 1,
  smoothed as Keras does (targets y (1 - s) + s / 2, the two-class case of the above).
  mse: mean squared error between the softmax probabilities and the one-hot targets
  (Keras' `loss='mse'` on a softmax output).
  With `class_weights`, each example's loss is multiplied by its class's weight (Keras'
  `class_weight`: the batch mean is then over examples, not over the weights' sum)."""
  loss = _unweighted(name, logits, labels, label_smoothing)
  if class_weights:
    loss = loss * jnp.asarray(class_weights, loss.dtype)[labels]
  return loss


def _unweighted(name, logits, labels, label_smoothing):
  if name == BINARY:
    targets = labels.astype(logits.dtype)
    if label_smoothing:
      targets = targets * (1 - label_smoothing) + label_smoothing / 2
    return optax.sigmoid_binary_cross_entropy(logits[..., 0], targets)
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if name == "cross_entropy":
    if label_smoothing:
      targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)
  if name == "mse":
    return jnp.mean(jnp.square(jax.nn.softmax(logits) - targets), axis=-1)
  raise errors.ConfigError(f"config.loss={name!r} is unknown; choose one of {LOSSES}.")


def distillation(logits: jax.Array, teacher_logits: jax.Array, hard_loss: jax.Array,
                 temperature: float, alpha: float) -> jax.Array:
  """Hinton et al. (2015), per example: alpha * T^2 * KL(softmax(t / T) || softmax(s / T))
  + (1 - alpha) * hard_loss, where hard_loss is the loss on the labels. The T^2 keeps the
  soft term's gradients on the scale of the hard one's as T changes."""
  soft = optax.kl_divergence(jax.nn.log_softmax(logits / temperature),
                             jax.nn.softmax(teacher_logits / temperature))
  return alpha * temperature**2 * soft + (1 - alpha) * hard_loss


def predictions(name: str, logits: jax.Array) -> jax.Array:
  """The predicted class of each example (int32)."""
  if name == BINARY:
    return (logits[..., 0] > 0).astype(jnp.int32)
  return jnp.argmax(logits, -1).astype(jnp.int32)


def probabilities(name: str, logits: jax.Array) -> jax.Array:
  """(N, classes) class probabilities: a softmax over the logits; for the one-unit head,
  sigmoid(z) for class 1 and sigmoid(-z) (that is 1 - sigmoid(z), without the rounding)
  for class 0."""
  if name == BINARY:
    z = logits[..., 0]
    return jnp.stack([jax.nn.sigmoid(-z), jax.nn.sigmoid(z)], axis=-1)
  return jax.nn.softmax(logits, axis=-1)


def class_weights(spec: str, labels: np.ndarray, num_classes: int) -> tuple[float, ...]:
  """config.class_weights as one weight per class: '' -> () (none); 'balanced' ->
  n_samples / (n_classes * count) over `labels` (scikit-learn's formula: the weights
  average 1 over the examples, so the loss keeps its scale); '1,4.5' -> as given."""
  if not spec:
    return ()
  if spec == "balanced":
    counts = np.bincount(labels, minlength=num_classes)
    return tuple(float(len(labels) / (num_classes * max(c, 1))) for c in counts)
  weights = parse_class_weights(spec)
  if len(weights) != num_classes:
    raise errors.ConfigError(f"config.class_weights={spec!r} gives {len(weights)} weights "
                             f"for {num_classes} classes: give one per class.")
  return weights


def parse_class_weights(spec: str) -> tuple[float, ...]:
  """'1,4.5' -> (1.0, 4.5); refuses anything but non-negative numbers with one > 0."""
  try:
    weights = tuple(float(w) for w in spec.split(","))
  except ValueError:
    weights = ()
  if not weights or min(weights) < 0 or max(weights) == 0 or not all(
      np.isfinite(weights)):
    raise errors.ConfigError(
        f"config.class_weights={spec!r} must be '' (none), 'balanced', or one "
        "non-negative number per class, comma-separated (e.g. '1,4.5').")
  return weights
