"""The airbench recipe (experiments/airbench.py) written as a PyTorch user would write it,
to time against ours on the same accelerator in the same run (benchmarks/accelerator.py,
part `full_variant_torch`).

Everything comes from our config, so the two programs train the same network with the
same hyper-parameters: the frozen 2x2 patch whitening from the same filters
(research/models/airbench.py `whitening_filters`, on the same images), Dirac-initialised
block convs, BatchNorm (PyTorch momentum 1 - flax's) with frozen scales, or trained ones
with `bn_scale` (the main job), GELU (tanh form), global max pool and a bias-free head
times `logit_scale`; Nesterov SGD with the decay added to the kernels' gradients (and
to the biases' with `decay_all_params`), the BatchNorm biases' learning rate times
`bn_bias_lr_multiplier` and the whitening bias frozen after `whiten_bias_epochs`; the
triangular schedule per step; label smoothing; 2-pixel reflect translation and
alternating flips, on the device; Lookahead of the weights and BatchNorm statistics;
and the 6-view test-time augmentation. The random draws are PyTorch's, so the two runs
agree in distribution, not to the bit.
tests/test_benchmarks.py checks the parameter count and, with our weights copied in,
the logits.
"""

import copy
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from benchmarks import torch_peers
from research.models import airbench as ours
from research.training import loop


def gelu(x):
  return F.gelu(x, approximate="tanh")


class ConvBlock(nn.Module):
  """Conv -> MaxPool 2 -> BatchNorm -> GELU -> Conv -> BatchNorm -> GELU."""

  def __init__(self, in_ch: int, out_ch: int, momentum: float, eps: float, dirac: bool,
               scale: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
    self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
    self.norm1 = nn.BatchNorm2d(out_ch, eps=eps, momentum=momentum)
    self.norm2 = nn.BatchNorm2d(out_ch, eps=eps, momentum=momentum)
    for norm in (self.norm1, self.norm2):
      norm.weight.requires_grad = scale      # frozen at 1 unless bn_scale
    if dirac:
      for conv in (self.conv1, self.conv2):
        n = min(conv.in_channels, conv.out_channels)
        with torch.no_grad():
          nn.init.dirac_(conv.weight[:n])

  def forward(self, x):
    x = gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
    return gelu(self.norm2(self.conv2(x)))


class Airbench(nn.Module):
  """airbench94's network at `widths`, with our model's keyword arguments."""

  def __init__(self, input_shape, num_classes: int, widths=(64, 256, 256),
               bn_momentum: float = 0.4, bn_epsilon: float = 1e-12, bn_scale: bool = False,
               dirac: bool = True, whiten: bool = True, logit_scale: float = 1 / 9,
               whitening_eps: float = 5e-4, compute_dtype: str = "float32"):
    super().__init__()
    if not whiten or compute_dtype != "float32":
      raise ValueError("the PyTorch airbench mirrors the recipe: whitening, float32")
    c = input_shape[-1]
    self.whiten = nn.Conv2d(c, 8 * c, 2, bias=True)
    self.whiten.weight.requires_grad = False
    nn.init.zeros_(self.whiten.bias)
    self.logit_scale, self.whitening_eps = logit_scale, whitening_eps
    ins = [8 * c, *widths[:-1]]
    self.blocks = nn.ModuleList(ConvBlock(i, o, 1 - bn_momentum, bn_epsilon, dirac, bn_scale)
                                for i, o in zip(ins, widths))
    self.head = nn.Linear(widths[-1], num_classes, bias=False)
    # NHWC, as the paper's code: the layout of PyTorch's fast convolutions (oneDNN on a
    # CPU, where NCHW trained 0.7x as fast, docs/performance.md; cuDNN's on a GPU).
    self.to(memory_format=torch.channels_last)

  def init_from_data(self, images_nhwc: np.ndarray) -> None:
    """The whitening filters of our model, from normalised images (N, H, W, C)."""
    kernel = ours.whitening_filters(images_nhwc, self.whitening_eps)   # HWIO
    with torch.no_grad():
      self.whiten.weight.copy_(torch.from_numpy(kernel).permute(3, 2, 0, 1))

  def forward(self, x):
    h = gelu(self.whiten(x.contiguous(memory_format=torch.channels_last)))
    for block in self.blocks:
      h = block(h)
    return self.head(torch.amax(h, dim=(2, 3))) * self.logit_scale


def copy_weights(model, peer: Airbench) -> None:
  """Our nnx airbench model's weights and BatchNorm statistics into `peer`."""
  as_torch = lambda variable: torch.tensor(torch_peers.as_array(variable))
  conv = lambda kernel: torch.tensor(torch_peers.conv_weight(torch_peers.as_array(kernel)))
  with torch.no_grad():
    peer.whiten.weight.copy_(conv(model.whiten_kernel))
    peer.whiten.bias.copy_(as_torch(model.whiten_bias))
    for block, theirs in zip(model.blocks, peer.blocks):
      for name in ("1", "2"):
        getattr(theirs, "conv" + name).weight.copy_(conv(getattr(block, "conv" + name).kernel))
        norm, their_norm = getattr(block, "norm" + name), getattr(theirs, "norm" + name)
        their_norm.bias.copy_(as_torch(norm.bias))
        if norm.scale is not None:
          their_norm.weight.copy_(as_torch(norm.scale))
        their_norm.running_mean.copy_(as_torch(norm.mean))
        their_norm.running_var.copy_(as_torch(norm.var))
    peer.head.weight.copy_(as_torch(model.head.kernel).T)


def param_groups(model: Airbench, config) -> list[dict]:
  """Kernels with the decay; BatchNorm biases at the multiplied rate; the whitening bias.
  With `decay_all_params` the biases decay as much per step as the kernels."""
  lr, wd = config.learning_rate, config.weight_decay
  bias_wd = wd if config.decay_all_params else 0.0
  kernels = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
  norm_biases = [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  return [{"params": kernels, "lr": lr, "weight_decay": wd},
          {"params": norm_biases, "lr": lr * config.bn_bias_lr_multiplier,
           "weight_decay": bias_wd / config.bn_bias_lr_multiplier},
          {"params": [model.whiten.bias], "lr": lr, "weight_decay": bias_wd}]


def triangular(config, total: int):
  """The learning-rate factor at each step: start -> 1 at the peak -> end, linearly."""
  peak = max(1, int(config.lr_peak_fraction * total))
  def factor(step):
    if step < peak:
      return config.lr_start_factor + (1 - config.lr_start_factor) * step / peak
    return 1 + (config.lr_end_factor - 1) * min(1.0, (step - peak) / max(1, total - peak))
  return factor


def translate(images, padding: int, generator):
  """Each image shifted by up to `padding` pixels, its border reflected."""
  n, _, h, w = images.shape
  padded = F.pad(images, (padding,) * 4, mode="reflect")
  rows = torch.randint(0, 2 * padding + 1, (n, 1), device=images.device, generator=generator)
  cols = torch.randint(0, 2 * padding + 1, (n, 1), device=images.device, generator=generator)
  r = (rows + torch.arange(h, device=images.device))[:, None, :, None]
  c = (cols + torch.arange(w, device=images.device))[:, None, None, :]
  n_idx = torch.arange(n, device=images.device)[:, None, None, None]
  ch = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
  return padded[n_idx, ch, r, c]


def test_time_logits(model, images):
  """Our `flip_translate` views and weights: the images and mirrors 1/4 each, the
  1-pixel shifts up-left and down-right and their mirrors 1/8 each."""
  h, w = images.shape[2:]
  padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
  shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
  views = [(0.25, images), (0.25, images.flip(3))]
  views += [(0.125, v) for v in shifted] + [(0.125, v.flip(3)) for v in shifted]
  return sum(weight * model(view) for weight, view in views)


def lookahead(model, average: dict, step: int, total: int, config) -> None:
  """Every `averaging_every` steps: the average moves towards the weights and the
  BatchNorm statistics, and the model takes the average."""
  if step % config.averaging_every:
    return
  d = config.averaging_decay * (step / total) ** config.averaging_decay_power
  with torch.no_grad():
    for name, value in model.state_dict().items():
      if value.dtype.is_floating_point:
        average[name].lerp_(value, 1 - d)
        value.copy_(average[name])


def train_recipe(config, dataset, device: str = "cpu") -> dict:
  """Trains the recipe on `dataset` (research.data arrays, already selected) on
  `device`; returns test accuracy and times. The data goes to the device first, outside
  the timed part, as ours is read from its decode cache."""
  torch.manual_seed(config.seed)
  generator = torch.Generator(device=device).manual_seed(config.seed)
  prepare = lambda split: (
      torch_peers.normalize(torch_peers.to_nchw(split.images), config.normalize_mean,
                            config.normalize_std).to(device),
      torch.from_numpy(split.labels.astype(np.int64)).to(device))
  (train_x, train_y), (test_x, test_y) = prepare(dataset.train), prepare(dataset.test)
  if device.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.cuda.synchronize()

  start = time.perf_counter()
  model = Airbench(dataset.train.images.shape[1:], dataset.num_classes,
                   **config.model_kwargs).to(device)
  model.init_from_data(loop.data_init_images(config, dataset))
  optimizer = torch.optim.SGD(param_groups(model, config), lr=config.learning_rate,
                              momentum=config.momentum, nesterov=True)
  n, batch = len(train_y), config.batch_size
  total = config.num_epochs * (n // batch)
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, triangular(config, total))
  average = copy.deepcopy(model.state_dict())
  flips = torch.rand(n, device=device, generator=generator) < 0.5
  step = 0
  model.train()
  for epoch in range(config.num_epochs):
    if config.whiten_bias_epochs:   # no gradient, so SGD leaves it as it is
      model.whiten.bias.requires_grad = epoch < config.whiten_bias_epochs
    order = torch.randperm(n, device=device, generator=generator)
    for i in range(n // batch):
      idx = order[i * batch:(i + 1) * batch]
      x = translate(train_x[idx], config.crop_padding, generator)
      x = torch.where((flips[idx] ^ (epoch % 2 == 1))[:, None, None, None], x.flip(3), x)
      loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=config.label_smoothing)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      scheduler.step()
      step += 1
      lookahead(model, average, step, total, config)
  model.load_state_dict(average)
  model.eval()
  with torch.no_grad():
    correct = sum(int((test_time_logits(model, test_x[i:i + 2000]).argmax(1)
                       == test_y[i:i + 2000]).sum()) for i in range(0, len(test_y), 2000))
  if device.startswith("cuda"):
    torch.cuda.synchronize()
  return {"test_accuracy": correct / len(test_y), "wall_time_s": time.perf_counter() - start,
          "steps": step, "device": device}
