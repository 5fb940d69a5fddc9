"""The airbench94 network (Jordan 2024, arXiv 2404.00498): the CIFAR-10 speed-run CNN.

A frozen 2x2 patch-whitening convolution -> GELU -> three blocks of [Conv 3x3 -> MaxPool 2
-> BatchNorm -> GELU -> Conv 3x3 -> BatchNorm -> GELU] -> global max pool -> bias-free
Linear, whose logits are multiplied by `logit_scale` (the paper's 1/9).

The whitening filters come from the data: `init_from_data(images)` sets them from the
eigendecomposition of the 2x2 patch covariance of normalised training images. They are
held in a `FrozenStat`, a kind of `nnx.BatchStat`, so they travel with the BatchNorm
statistics: the optimiser, weight decay and the parameter count never see them, and the
checkpoints save and restore them (training, resuming and inference alike).
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from research import errors
from research.models import base
from research.models import layers

# PyTorch's default conv and linear initialisation (kaiming_uniform with a=sqrt(5)), which
# the paper's hyper-parameters were tuned with.
torch_default_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class FrozenStat(nnx.BatchStat):
  """A non-trainable array computed from data, kept and saved with the BatchNorm
  statistics; BatchNorm never updates it."""


def dirac_init(base_init=torch_default_init):
  """A conv kernel_init (kh, kw, in, out) that makes the layer the identity on its first
  min(in, out) channels, as torch.nn.init.dirac_ on the first `in` output filters; the
  other output channels keep `base_init`."""
  def init(key, shape, dtype=jnp.float32):
    kh, kw, fan_in, fan_out = shape
    kernel = base_init(key, shape, dtype)
    n = min(fan_in, fan_out)
    identity = jnp.zeros((kh, kw, fan_in, n), dtype).at[kh // 2, kw // 2].set(
        jnp.eye(fan_in, n, dtype=dtype))
    return kernel.at[..., :n].set(identity)
  return init


def patch_covariance(images: np.ndarray, chunk: int = 256) -> np.ndarray:
  """The uncentred covariance (4C, 4C) of all 2x2 patches of `images` (N, H, W, C), a
  patch flattened in (row, column, channel) order; in float64, a chunk at a time."""
  n, h, w, c = images.shape
  total, count = np.zeros((4 * c, 4 * c)), 0
  for start in range(0, n, chunk):
    x = np.asarray(images[start:start + chunk], np.float64)
    patches = np.stack([x[:, i:h - 1 + i, j:w - 1 + j] for i in (0, 1) for j in (0, 1)],
                       axis=3).reshape(-1, 4 * c)
    total += patches.T @ patches
    count += len(patches)
  return total / count


def whitening_filters(images: np.ndarray, eps: float = 5e-4) -> np.ndarray:
  """2x2 conv filters (2, 2, C, 8C) that whiten the 2x2 patches of `images` (N, H, W, C,
  normalised): each eigenvector of the patch covariance divided by the square root of
  its eigenvalue (+ eps), then the same filters negated (the paper's +/- pairs, so that
  the GELU after them keeps both signs), largest eigenvalue first."""
  c = images.shape[-1]
  eigenvalues, eigenvectors = np.linalg.eigh(patch_covariance(images))
  order = np.argsort(eigenvalues)[::-1]
  scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)   # (4C, 4C)
  kernel = scaled.reshape(2, 2, c, 4 * c)   # rows in the patches' (row, column, channel)
  return np.concatenate([kernel, -kernel], axis=-1).astype(np.float32)


class ConvBlock(nnx.Module):
  """Conv -> MaxPool 2 -> BatchNorm -> GELU -> Conv -> BatchNorm -> GELU."""

  def __init__(self, in_ch: int, out_ch: int, *, kernel_init, norm, compute_dtype: str,
               rngs: nnx.Rngs):
    conv = lambda i: nnx.Conv(i, out_ch, (3, 3), padding="SAME", use_bias=False,
                              kernel_init=kernel_init, dtype=compute_dtype, rngs=rngs)
    self.conv1, self.conv2 = conv(in_ch), conv(out_ch)
    self.norm1, self.norm2 = norm(out_ch), norm(out_ch)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nnx.max_pool(self.conv1(x), (2, 2), strides=(2, 2))
    x = jax.nn.gelu(self.norm1(x, use_running_average=not train))
    return jax.nn.gelu(self.norm2(self.conv2(x), use_running_average=not train))


class Airbench(nnx.Module):
  """airbench94's network. `bn_momentum` is flax's, the weight of the old running
  average (the paper's BatchNorm(momentum=0.6) hands PyTorch 1-0.6, so it is flax's
  0.6; the default 0.4 is a known difference, docs/airbench.md); `bn_scale=False`
  freezes the BatchNorm scales at 1; `dirac` initialises every block conv as the
  identity on its first channels; `whiten=False` replaces the frozen whitening by a 2x2
  conv of the same shape that trains from PyTorch's default initialisation (the paper's
  baseline, for the ablation)."""

  def __init__(self, *, input_shape, num_classes: int, rngs: nnx.Rngs,
               widths: Sequence[int] = (64, 256, 256), bn_momentum: float = 0.4,
               bn_epsilon: float = 1e-12, bn_scale: bool = False, dirac: bool = True,
               whiten: bool = True, logit_scale: float = 1 / 9, whitening_eps: float = 5e-4,
               compute_dtype: str = "float32"):
    h, w, c = input_shape
    if min(h, w) - 1 < 2 ** len(widths):
      raise errors.ConfigError(f"input {tuple(input_shape)} is too small for "
                               f"{len(widths)} blocks that each halve the size")
    self.input_shape, self.num_classes = tuple(input_shape), num_classes
    self.logit_scale, self.whitening_eps = logit_scale, whitening_eps
    self.compute_dtype = compute_dtype
    if whiten:
      self.whiten_kernel = FrozenStat(jnp.zeros((2, 2, c, 8 * c), jnp.float32))
    else:
      self.whiten_kernel = nnx.Param(torch_default_init(rngs.params(), (2, 2, c, 8 * c)))
    self.whiten_bias = nnx.Param(jnp.zeros((8 * c,), jnp.float32))
    norm = lambda n: layers.batch_norm(n, momentum=bn_momentum, epsilon=bn_epsilon,
                                       use_scale=bn_scale, compute_dtype=compute_dtype,
                                       rngs=rngs)
    kernel_init = dirac_init() if dirac else torch_default_init
    ins = [8 * c, *widths[:-1]]
    self.blocks = nnx.List([ConvBlock(i, o, kernel_init=kernel_init, norm=norm,
                                      compute_dtype=compute_dtype, rngs=rngs)
                            for i, o in zip(ins, widths)])
    self.head = nnx.Linear(widths[-1], num_classes, use_bias=False,
                           kernel_init=torch_default_init, dtype=compute_dtype, rngs=rngs)

  def init_from_data(self, images: np.ndarray) -> None:
    """Sets the whitening filters from normalised training images (N, H, W, C); a
    trained first layer (`whiten=False`) keeps its initialisation."""
    if isinstance(self.whiten_kernel, FrozenStat):
      self.whiten_kernel[...] = jnp.asarray(whitening_filters(images, self.whitening_eps))

  def whiten(self, x: jax.Array) -> jax.Array:
    dtype = self.compute_dtype
    y = jax.lax.conv_general_dilated(x.astype(dtype), self.whiten_kernel[...].astype(dtype),
                                     (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + self.whiten_bias[...].astype(dtype)

  @property
  def convs(self) -> list[nnx.Conv]:
    """The trained conv layers, input first (the frozen whitening is not one of them):
    the layers that research/interpret.py draws, weighs and re-initialises."""
    return [conv for block in self.blocks for conv in (block.conv1, block.conv2)]

  def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """The last block's activations (N, h, w, C), before the global max pool: what
    Grad-CAM weighs (research/interpret.py); `classify` turns them into logits."""
    h = jax.nn.gelu(self.whiten(x))
    for block in self.blocks:
      h = block(h, train)
    return h

  def classify(self, h: jax.Array, *, train: bool = False) -> jax.Array:
    del train   # nothing after the blocks depends on it
    return self.head(jnp.max(h, axis=(1, 2))) * self.logit_scale

  def __call__(self, x: jax.Array, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> jax.Array:
    del dropout_key   # no dropout
    base.check_input(x, self.input_shape)
    logits = self.classify(self.features(x, train=train))
    base.check_logits(logits, x.shape[0], self.num_classes)
    return logits
