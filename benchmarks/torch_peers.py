"""PyTorch peers of the project's models and recipes, written the way a PyTorch user
would write them: NCHW tensors, `nn.Conv2d`/`nn.MaxPool2d`, eager `loss.backward()` and
`torch.optim`, default thread count and default initialisation.

Each peer has the same layers and parameter shapes as the registered model it mirrors
(tests/test_benchmarks.py checks parameter counts and, with weights copied over by
`copy_weights`, equal logits). Models:

    s1   mlp        Flatten - Dense 64 ReLU - Dense 10
    s2   mnist_cnn  Conv32 3x3 - pool - Conv64 3x3 - pool - Dense128 - Dense10 (valid convs)
    s4   lenet5     Conv6 5x5 - pool - Conv16 5x5 - pool - FC120 - FC84 - FC10
    vgg  vgg        [Conv3x3 same, no bias - BatchNorm - ReLU] x2 per block - pool, GAP, FC

Needs the `bench` extra (`pip install torch==2.13.0`).
"""

from collections.abc import Sequence
import math
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from research import normalization


def _side_after(size: int, kernels: Sequence[int]) -> int:
  for k in kernels:
    size = (size - k + 1) // 2
  return size


class MLP(nn.Module):
  """Flatten -> [Linear -> ReLU] * len(widths) -> Linear."""

  def __init__(self, input_shape, num_classes: int, widths: Sequence[int] = (64,)):
    super().__init__()
    h, w, c = input_shape
    self.flatten_chw = (c, h, w)   # torch flattens NCHW as (C, H, W)
    sizes = [h * w * c, *widths]
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    self.head = nn.Linear(sizes[-1], num_classes)

  def forward(self, x):
    h = torch.flatten(x, 1)
    for layer in self.hidden:
      h = F.relu(layer(h))
    return self.head(h)


class ConvPoolNet(nn.Module):
  """[Conv(k, valid) -> ReLU -> MaxPool 2] per stage -> Flatten -> [Linear -> ReLU] ->
  Linear: the seed CNNs S2-S6."""

  def __init__(self, input_shape, num_classes: int, channels: Sequence[int],
               kernels: Sequence[int], dense: Sequence[int] = ()):
    super().__init__()
    h, w, c = input_shape
    ins = [c, *channels[:-1]]
    self.convs = nn.ModuleList(nn.Conv2d(i, o, k) for i, o, k in zip(ins, channels, kernels))
    self.pool = nn.MaxPool2d(2)
    self.flatten_chw = (channels[-1], _side_after(h, kernels), _side_after(w, kernels))
    sizes = [math.prod(self.flatten_chw), *dense]
    self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    self.head = nn.Linear(sizes[-1], num_classes)

  def forward(self, x):
    h = x
    for conv in self.convs:
      h = self.pool(F.relu(conv(h)))
    h = torch.flatten(h, 1)
    for layer in self.dense:
      h = F.relu(layer(h))
    return self.head(h)


class VGG(nn.Module):
  """[Conv 3x3 same (no bias) -> BatchNorm -> ReLU] * convs_per_block -> MaxPool 2 per
  block; global average pooling; Linear. BatchNorm as flax's: momentum 0.9 there is 0.1
  here, epsilon 1e-5 in both."""

  def __init__(self, input_shape, num_classes: int, widths: Sequence[int] = (16, 32, 64),
               convs_per_block: int = 2):
    super().__init__()
    convs, norms, in_ch = [], [], input_shape[-1]
    for width in widths:
      for _ in range(convs_per_block):
        convs.append(nn.Conv2d(in_ch, width, 3, padding=1, bias=False))
        norms.append(nn.BatchNorm2d(width, eps=1e-5, momentum=0.1))
        in_ch = width
    self.convs_per_block = convs_per_block
    self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
    self.pool = nn.MaxPool2d(2)
    self.head = nn.Linear(in_ch, num_classes)

  def forward(self, x):
    h = x
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      h = F.relu(norm(conv(h)))
      if (i + 1) % self.convs_per_block == 0:
        h = self.pool(h)
    return self.head(h.mean(dim=(2, 3)))


def create_peer(model: str, input_shape, num_classes: int = 10, **kwargs) -> nn.Module:
  """The peer of a registered model name, with the same hyperparameters."""
  if model == "mlp":
    return MLP(input_shape, num_classes, widths=tuple(kwargs.get("widths", (64,))))
  if model == "mnist_cnn":
    return ConvPoolNet(input_shape, num_classes, (32, 64), (3, 3), (128,))
  if model == "lenet5":
    return ConvPoolNet(input_shape, num_classes, (6, 16), (5, 5), (120, 84))
  if model == "vgg":
    return VGG(input_shape, num_classes, widths=tuple(kwargs.get("widths", (16, 32, 64))),
               convs_per_block=int(kwargs.get("convs_per_block", 2)))
  if model == "airbench":   # its own module, which builds on this one
    from benchmarks import torch_airbench
    return torch_airbench.Airbench(input_shape, num_classes, **kwargs)
  raise ValueError(f"no PyTorch peer for model {model!r}")


def count_params(module: nn.Module) -> int:
  """Trained parameters (frozen ones, such as airbench's whitening, are not)."""
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


def to_nchw(images_nhwc: np.ndarray) -> torch.Tensor:
  """NHWC numpy -> a contiguous NCHW tensor (the layout a PyTorch user has)."""
  return torch.from_numpy(np.array(np.transpose(images_nhwc, (0, 3, 1, 2)), order="C"))


def normalize(images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
  """uint8 NCHW -> float32 ((x / 255) - mean) / std per channel, as research.preprocess."""
  shape = (1, -1, 1, 1)
  x = images_uint8.float().div_(255.0)
  return (x - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


# --- Copying the project's weights into a peer (to prove the architectures are the same).

def as_array(variable) -> np.ndarray:
  return np.asarray(variable[...], dtype=np.float32)


def _linear_weight(kernel: np.ndarray, flatten_chw=None) -> np.ndarray:
  """flax (in, out) -> torch (out, in). If the layer reads a flattened feature map, its
  rows are in (H, W, C) order in flax and must be put in torch's (C, H, W) order."""
  if flatten_chw is not None:
    c, h, w = flatten_chw
    kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
  return kernel.T


def conv_weight(kernel: np.ndarray) -> np.ndarray:
  """flax (kh, kw, in, out) -> torch (out, in, kh, kw)."""
  return kernel.transpose(3, 2, 0, 1)


@torch.no_grad()
def copy_weights(ours, peer: nn.Module) -> None:
  """Sets the peer's parameters (and BatchNorm statistics) to those of our nnx model."""
  def set_(param, value):
    value = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))
    if tuple(param.shape) != tuple(value.shape):
      raise ValueError(f"shape mismatch: peer {tuple(param.shape)}, ours {tuple(value.shape)}")
    param.copy_(value)

  def set_linear(theirs, mine, flatten_chw=None):
    set_(theirs.weight, _linear_weight(as_array(mine.kernel), flatten_chw))
    if theirs.bias is not None:
      set_(theirs.bias, as_array(mine.bias))

  for theirs, mine in zip(getattr(peer, "convs", []), getattr(ours, "convs", [])):
    set_(theirs.weight, conv_weight(as_array(mine.kernel)))
    if theirs.bias is not None:
      set_(theirs.bias, as_array(mine.bias))
  for theirs, mine in zip(getattr(peer, "norms", []), getattr(ours, "norms", [])):
    set_(theirs.weight, as_array(mine.scale))
    set_(theirs.bias, as_array(mine.bias))
    set_(theirs.running_mean, as_array(mine.mean))
    set_(theirs.running_var, as_array(mine.var))
  hidden = [*getattr(peer, "hidden", []), *getattr(peer, "dense", [])]
  mine_hidden = [*getattr(ours, "hidden", []), *getattr(ours, "dense", [])]
  flatten_chw = getattr(peer, "flatten_chw", None)
  for i, (theirs, mine) in enumerate(zip(hidden, mine_hidden)):
    set_linear(theirs, mine, flatten_chw if i == 0 else None)
  set_linear(peer.head, ours.head, flatten_chw if not hidden and flatten_chw else None)


# --- Optimisers and the train step.

def create_optimizer(config, model: nn.Module) -> torch.optim.Optimizer:
  """The run config's optimiser in torch.optim terms (constant learning rate). Weight
  decay, as in research.optim, is added to the gradients of kernels only."""
  decay = [p for p in model.parameters() if p.ndim > 1]
  rest = [p for p in model.parameters() if p.ndim <= 1]
  groups = [{"params": decay, "weight_decay": float(config.weight_decay)},
            {"params": rest, "weight_decay": 0.0}]
  lr = float(config.learning_rate)
  if config.optimizer == "adam":
    return torch.optim.Adam(groups, lr=lr, betas=(config.beta1, config.beta2),
                            eps=float(config.eps))
  if config.optimizer in ("sgd", "momentum", "nesterov"):
    momentum = 0.0 if config.optimizer == "sgd" else float(config.momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum,
                           nesterov=config.optimizer == "nesterov")
  raise ValueError(f"no torch optimiser for config.optimizer={config.optimizer!r}")


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                    mean: Sequence[float], std: Sequence[float],
                    label_smoothing: float = 0.0):
  """step(images_uint8_nchw, labels) -> loss tensor: normalise, forward, cross-entropy,
  backward, optimiser update: the work of the project's train step."""
  model.train()

  def step(images, labels):
    x = normalize(images, mean, std)
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), labels, label_smoothing=label_smoothing)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             mean, std, batch_size: int = 1000) -> float:
  """Test accuracy in inference mode."""
  model.eval()
  correct = 0
  for start in range(0, len(labels), batch_size):
    logits = model(normalize(images[start:start + batch_size], mean, std))
    correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
  model.train()
  return correct / len(labels)


# --- End to end: the seed recipes as their PyTorch programs run them.

def train_recipe(recipe: str, config, dataset, seed: int = 0) -> dict:
  """Trains the recipe's model on `dataset` (research.data arrays, already split and
  subset) and returns test accuracy and times. Nothing is read from disk here: the
  caller times data loading separately.

  s2: in-memory tensors, a fresh random permutation per epoch, Adam (lr 1e-3, eps 1e-7),
      batch 64, pixels / 255.
  s4: the PyTorch CIFAR-10 tutorial's loop: a DataLoader over in-memory tensors with
      shuffle=True, SGD lr 0.001 momentum 0.9, batch 32, inputs normalised with mean 0.5
      and std 0.5 (done once here, not per sample).
  """
  start = time.perf_counter()
  torch.manual_seed(seed)
  shape = dataset.train.images.shape[1:]
  model = create_peer(config.model, shape, dataset.num_classes)
  optimizer = create_optimizer(config, model)
  mean, std = normalization.mean_std(config, dataset.train.images)
  train_x, train_y = to_nchw(dataset.train.images), torch.from_numpy(
      dataset.train.labels.astype(np.int64))
  test_x, test_y = to_nchw(dataset.test.images), torch.from_numpy(
      dataset.test.labels.astype(np.int64))
  batch, epochs = int(config.batch_size), int(config.num_epochs)
  model.train()
  if recipe == "s4":
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(normalize(train_x, mean, std), train_y),
        batch_size=batch, shuffle=True)
    for _ in range(epochs):
      for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
  else:
    step = make_train_step(model, optimizer, mean, std)
    n = len(train_y)
    for _ in range(epochs):
      order = torch.randperm(n)
      for i in range(n // batch):   # full batches, as the project's loop
        idx = order[i * batch:(i + 1) * batch]
        step(train_x[idx], train_y[idx])
  train_s = time.perf_counter() - start
  accuracy = evaluate(model, test_x, test_y, mean, std)
  return {"test_accuracy": accuracy, "wall_time_s": time.perf_counter() - start,
          "train_time_s": train_s, "threads": torch.get_num_threads()}
