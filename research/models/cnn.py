"""The seed CNNs S2-S6, exactly as the seed recipes give them (valid convolutions, as in
Keras' and PyTorch's defaults), plus an optional dropout before the head for the
regularisation studies."""

from collections.abc import Sequence

from flax import nnx
import jax

from research.models import base
from research.models import layers
from research import errors


def _spatial_after(size: int, convs: Sequence[int]) -> int:
  """Side length after each (valid conv of kernel k, then 2x2 pool) stage."""
  for k in convs:
    size = (size - k + 1) // 2
  return size


class ConvPoolNet(nnx.Module):
  """[Conv(k) -> act -> MaxPool 2] per stage -> Flatten -> [Dense -> act] -> Dense.

  Seeds S2-S6 are all this shape; they differ only in channels, kernels and widths.
  For the studies, `width_multiplier` scales channels and hidden dense widths, and
  `batch_norm` adds BatchNorm before each hidden activation (conv and dense).
  `compute_dtype` is the dtype the layers compute in; parameters stay float32.
  """

  def __init__(self, *, input_shape, num_classes: int, rngs: nnx.Rngs,
               channels: Sequence[int], kernels: Sequence[int],
               dense: Sequence[int] = (), activation: str = "relu",
               dropout: float = 0.0, width_multiplier: float = 1.0,
               batch_norm: bool = False, bn_momentum: float = 0.9,
               compute_dtype: str = "float32"):
    if len(channels) != len(kernels):
      raise errors.ConfigError(f"channels {channels} and kernels {kernels} differ in length")
    channels = [max(1, round(x * width_multiplier)) for x in channels]
    dense = [max(1, round(x * width_multiplier)) for x in dense]
    h, w, c = input_shape
    side_h, side_w = _spatial_after(h, kernels), _spatial_after(w, kernels)
    if min(side_h, side_w) < 1:
      raise errors.ConfigError(f"input {input_shape} is too small for kernels {kernels}")
    self.input_shape = tuple(input_shape)
    self.num_classes = num_classes
    self.act = layers.activation(activation)
    self.dropout_rate = dropout
    ins = [c, *channels[:-1]]
    self.convs = nnx.List([
        nnx.Conv(i, o, (k, k), padding="VALID", use_bias=not batch_norm,
                 dtype=compute_dtype, rngs=rngs)
        for i, o, k in zip(ins, channels, kernels)])
    sizes = [side_h * side_w * channels[-1], *dense]
    self.dense = nnx.List(
        [nnx.Linear(a, b, use_bias=not batch_norm, dtype=compute_dtype, rngs=rngs)
         for a, b in zip(sizes[:-1], sizes[1:])])
    self.norms = nnx.List([layers.batch_norm(n, momentum=bn_momentum,
                                             compute_dtype=compute_dtype, rngs=rngs)
                           for n in [*channels, *dense]] if batch_norm else [])
    self.head = nnx.Linear(sizes[-1], num_classes, dtype=compute_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> jax.Array:
    return self.classify(self.features(x, train=train), train=train,
                         dropout_key=dropout_key)

  def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """The last conv layer's activations (before its pooling), which Grad-CAM weighs
    (research/interpret.py); `classify` turns them into logits. The split adds no state
    and no operation to the forward pass."""
    base.check_input(x, self.input_shape)
    h = x
    for layer, conv in enumerate(self.convs):
      if layer:
        h = nnx.max_pool(h, (2, 2), strides=(2, 2))
      h = self.act(self._norm(layer, conv(h), train))
    return h

  def classify(self, h: jax.Array, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Logits from `features`: the last pooling, the hidden dense layers and the head."""
    h = base.flatten(nnx.max_pool(h, (2, 2), strides=(2, 2)))
    for layer, dense in enumerate(self.dense, start=len(self.convs)):
      h = self.act(self._norm(layer, dense(h), train))
    h = layers.dropout(h, self.dropout_rate, dropout_key, train)
    logits = self.head(h)
    base.check_logits(logits, h.shape[0], self.num_classes)
    return logits

  def _norm(self, layer: int, h: jax.Array, train: bool) -> jax.Array:
    if not self.norms:
      return h
    return self.norms[layer](h, use_running_average=not train)


def mnist_cnn(**kw):
  """S2: Conv32 3x3 - pool - Conv64 3x3 - pool - Dense128 - Dense(classes)."""
  return ConvPoolNet(channels=(32, 64), kernels=(3, 3), dense=(128,), **kw)


def minimal_cnn(**kw):
  """S3: Conv32 3x3 - pool - Dense(classes)."""
  return ConvPoolNet(channels=(32,), kernels=(3,), dense=(), **kw)


def lenet5(**kw):
  """S4: Conv6 5x5 - pool - Conv16 5x5 - pool - FC120 - FC84 - FC(classes)."""
  return ConvPoolNet(channels=(6, 16), kernels=(5, 5), dense=(120, 84), **kw)


def cnn32(**kw):
  """S5: Conv32 3x3 - pool - Conv64 3x3 - pool - Dense64 - Dense(classes)."""
  return ConvPoolNet(channels=(32, 64), kernels=(3, 3), dense=(64,), **kw)


def dropout_cnn(dropout: float = 0.2, **kw):
  """S6: Conv64 5x5 - pool - Conv128 5x5 - pool - FC1024 - Dropout 0.2 - FC(classes)."""
  return ConvPoolNet(channels=(64, 128), kernels=(5, 5), dense=(1024,), dropout=dropout,
                     **kw)
