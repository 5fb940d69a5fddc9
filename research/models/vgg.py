"""The stronger CIFAR CNN of the main job: VGG-style blocks with BatchNorm and dropout.

Each block is [Conv 3x3 (same) -> BatchNorm -> ReLU] * convs_per_block -> MaxPool 2 ->
Dropout; then global average pooling and one Dense head. For capacity sweeps,
`width_multiplier` scales the widths and `depth_multiplier` the convs per block.
`compute_dtype` is the dtype the layers compute in; parameters stay float32.
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from research.models import base
from research.models import layers
from research import errors


class VGG(nnx.Module):

  def __init__(self, *, input_shape, num_classes: int, rngs: nnx.Rngs,
               widths: Sequence[int] = (32, 64, 128), convs_per_block: int = 2,
               batch_norm: bool = True, dropout: float | Sequence[float] = 0.0,
               head_dropout: float = 0.0, width_multiplier: float = 1.0,
               depth_multiplier: int = 1,
               activation: str = "relu", bn_momentum: float = 0.9,
               compute_dtype: str = "float32"):
    self.input_shape = tuple(input_shape)
    self.num_classes = num_classes
    self.act = layers.activation(activation)
    widths = [max(1, round(w * width_multiplier)) for w in widths]
    if min(self.input_shape[:2]) < 2 ** len(widths):
      raise errors.ConfigError(f"input {self.input_shape} is too small for {len(widths)} "
                               "blocks that each halve the height and width")
    if isinstance(dropout, (int, float)):
      dropout = [float(dropout)] * len(widths)
    if len(dropout) != len(widths):
      raise errors.ConfigError(f"dropout {dropout} must have one rate per block {widths}")
    self.block_dropout = tuple(dropout)
    self.head_dropout = head_dropout
    convs_per_block *= depth_multiplier
    self.convs_per_block = convs_per_block
    convs, norms = [], []
    in_ch = input_shape[-1]
    for width in widths:
      for _ in range(convs_per_block):
        convs.append(nnx.Conv(in_ch, width, (3, 3), padding="SAME",
                              use_bias=not batch_norm, dtype=compute_dtype, rngs=rngs))
        if batch_norm:
          norms.append(layers.batch_norm(width, momentum=bn_momentum,
                                         compute_dtype=compute_dtype, rngs=rngs))
        in_ch = width
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.head = nnx.Linear(in_ch, num_classes, dtype=compute_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> jax.Array:
    return self.classify(self.features(x, train=train, dropout_key=dropout_key),
                         train=train, dropout_key=dropout_key)

  def features(self, x: jax.Array, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """The last conv layer's activations (after its BatchNorm and ReLU, before its
    block's pooling), which Grad-CAM weighs (research/interpret.py); `classify` turns
    them into logits. The split adds no state and no operation to the forward pass."""
    base.check_input(x, self.input_shape)
    h = x
    for i, conv in enumerate(self.convs):
      h = conv(h)
      if self.norms:
        h = self.norms[i](h, use_running_average=not train)
      h = self.act(h)
      if (i + 1) % self.convs_per_block == 0 and i + 1 < len(self.convs):
        h = self._end_block(i // self.convs_per_block, h, train, dropout_key)
    return h

  def classify(self, h: jax.Array, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Logits from `features`: the last block's pooling, global average pooling, head."""
    h = self._end_block(len(self.block_dropout) - 1, h, train, dropout_key)
    h = jnp.mean(h, axis=(1, 2))
    h = layers.dropout(h, self.head_dropout,
                       layers.layer_key(dropout_key, len(self.block_dropout)), train)
    logits = self.head(h)
    base.check_logits(logits, h.shape[0], self.num_classes)
    return logits

  def _end_block(self, block: int, h: jax.Array, train: bool,
                 dropout_key: jax.Array | None) -> jax.Array:
    h = nnx.max_pool(h, (2, 2), strides=(2, 2))
    return layers.dropout(h, self.block_dropout[block],
                          layers.layer_key(dropout_key, block), train)
