"""Multi-layer perceptrons: seed S1 (784-64-10) and the MLPs of the overfitting studies."""

from collections.abc import Sequence

from flax import nnx
import jax
import numpy as np

from research.models import base
from research.models import layers


class MLP(nnx.Module):
  """Flatten -> [Dense -> (BatchNorm) -> activation -> dropout] * len(widths) ->
  Dense(num_classes). For capacity sweeps, `width_multiplier` scales the hidden widths
  and `depth_multiplier` repeats each hidden layer (widths (512,) x 3 -> 512-512-512).
  `compute_dtype` is the dtype the layers compute in; parameters stay float32."""

  def __init__(self, *, input_shape, num_classes: int, rngs: nnx.Rngs,
               widths: Sequence[int] = (64,), activation: str = "relu",
               dropout: float = 0.0, input_dropout: float = 0.0,
               width_multiplier: float = 1.0, depth_multiplier: int = 1,
               batch_norm: bool = False,
               bn_momentum: float = 0.9, compute_dtype: str = "float32"):
    self.input_shape = tuple(input_shape)
    self.num_classes = num_classes
    self.act = layers.activation(activation)
    self.dropout_rate = dropout
    self.input_dropout_rate = input_dropout
    widths = [max(1, round(w * width_multiplier)) for w in widths
              for _ in range(depth_multiplier)]
    sizes = [int(np.prod(input_shape)), *widths]
    # BatchNorm's shift replaces the Dense bias, as in VGG.
    self.hidden = nnx.List(
        [nnx.Linear(a, b, use_bias=not batch_norm, dtype=compute_dtype, rngs=rngs)
         for a, b in zip(sizes[:-1], sizes[1:])])
    self.norms = nnx.List([layers.batch_norm(b, momentum=bn_momentum,
                                             compute_dtype=compute_dtype, rngs=rngs)
                           for b in widths] if batch_norm else [])
    self.head = nnx.Linear(sizes[-1], num_classes, dtype=compute_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> jax.Array:
    base.check_input(x, self.input_shape)
    h = base.flatten(x)
    h = layers.dropout(h, self.input_dropout_rate, layers.layer_key(dropout_key, 0), train)
    for i, dense in enumerate(self.hidden):
      h = dense(h)
      if self.norms:
        h = self.norms[i](h, use_running_average=not train)
      h = self.act(h)
      h = layers.dropout(h, self.dropout_rate, layers.layer_key(dropout_key, i + 1), train)
    logits = self.head(h)
    base.check_logits(logits, x.shape[0], self.num_classes)
    return logits
