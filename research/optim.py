"""Optimisers and learning-rate schedules from the config, all from optax."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from research import compression
from research import errors
from research.models import is_head, is_kernel, path_names

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adadelta", "muon")
SCHEDULES = ("constant", "step", "exponential", "cosine", "warmup_cosine", "onecycle",
             "triangular")


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Schedules are written in epochs in the config and converted to steps here."""
  lr = config.learning_rate
  total = max(1, config.num_epochs * steps_per_epoch)
  warmup = int(config.warmup_epochs * steps_per_epoch)
  name = config.lr_schedule
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "step":
    boundaries = {int(e * steps_per_epoch): config.lr_decay_factor
                  for e in config.lr_step_epochs}
    return optax.piecewise_constant_schedule(lr, boundaries)
  if name == "exponential":  # x decay_factor per epoch, as in Zhang et al. (0.95)
    return optax.exponential_decay(lr, steps_per_epoch, config.lr_decay_factor)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, warmup), total)
  if name == "onecycle":  # linear up to the peak, then linearly down to zero
    return _up_then_down(lr * 0.1, lr, 0.0, max(1, warmup or total // 5), total)
  if name == "triangular":  # airbench's: start -> peak -> end
    return _up_then_down(lr * config.lr_start_factor, lr, lr * config.lr_end_factor,
                         max(1, int(config.lr_peak_fraction * total)), total)
  raise errors.ConfigError(f"config.lr_schedule={name!r} is unknown; choose one of {SCHEDULES}.")


def _up_then_down(start: float, lr: float, end: float, peak: int, total: int):
  """Linear from `start` to `lr` over the first `peak` steps, then linear to `end` at
  step `total`."""
  return optax.join_schedules(
      [optax.linear_schedule(start, lr, peak),
       optax.linear_schedule(lr, end, max(1, total - peak))], [peak])


def _decay_mask(params):
  """Weight decay applies to kernels, not to biases or BatchNorm scales."""
  return jax.tree.map(is_kernel, params)


def _decayed_weights(config: ml_collections.ConfigDict):
  """Weight decay added to the gradient: on the kernels; with `decay_all_params` on
  every parameter, the BatchNorm biases' divided by `bn_bias_lr_multiplier`, so that
  once their update is scaled up they decay as much per step as the rest (airbench's
  `weight_decay=wd/lr_biases`)."""
  wd = config.weight_decay
  if not config.decay_all_params:
    return optax.add_decayed_weights(wd, mask=_decay_mask)
  others = lambda params: jax.tree.map(lambda b: not b, _batch_norm_bias_mask(params))
  return optax.chain(
      optax.add_decayed_weights(wd, mask=others),
      optax.add_decayed_weights(wd / config.bn_bias_lr_multiplier,
                                mask=_batch_norm_bias_mask))


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Returns (optax transformation, learning-rate schedule).

  `weight_decay` is decoupled for adamw (Loshchilov & Hutter). For every other optimiser
  it is added to the gradient before the update, as PyTorch's `weight_decay` does.
  Keys left at their defaults add nothing to the chain, so the optimiser state of runs
  saved before a key existed is unchanged.
  """
  schedule = create_schedule(config, steps_per_epoch)
  name, wd = config.optimizer, config.weight_decay
  if name == "sgd":
    tx = optax.sgd(schedule)
  elif name == "momentum":
    tx = optax.sgd(schedule, momentum=config.momentum)
  elif name == "nesterov":
    tx = optax.sgd(schedule, momentum=config.momentum, nesterov=True)
  elif name == "adam":
    tx = optax.adam(schedule, b1=config.beta1, b2=config.beta2, eps=config.eps)
  elif name == "adamw":
    # optax.adamw's chain, with the decay's masks and scales of the other optimisers.
    tx = optax.chain(optax.scale_by_adam(b1=config.beta1, b2=config.beta2, eps=config.eps),
                     _decayed_weights(config), optax.scale_by_learning_rate(schedule))
  elif name == "rmsprop":
    tx = optax.rmsprop(schedule, decay=config.rmsprop_decay, eps=config.eps)
  elif name == "adadelta":
    tx = optax.adadelta(schedule, eps=config.eps)
  elif name == "muon":
    tx = _muon_for_conv_kernels(config, schedule)
  else:
    raise errors.ConfigError(f"config.optimizer={name!r} is unknown; choose one of {OPTIMIZERS}.")
  if wd and name != "adamw":
    tx = optax.chain(_decayed_weights(config), tx)
  if config.bn_bias_lr_multiplier != 1:   # after the rest: any optimiser
    tx = optax.chain(tx, optax.masked(optax.scale(config.bn_bias_lr_multiplier),
                                      _batch_norm_bias_mask))
  if config.whiten_bias_epochs:
    tx = optax.chain(tx, _frozen_from(config.whiten_bias_epochs * steps_per_epoch,
                                      _whitening_bias_mask))
  tx = _per_part(config, tx)
  if config.prune_sparsity:   # last, so that nothing before it moves a pruned weight
    tx = optax.chain(tx, compression.hold_pruned())
  return tx, schedule


def _batch_norm_bias_mask(params):
  """The biases of BatchNorm layers, which the models name norm*, norms[i]."""
  def is_bias(path, _):
    names = path_names(path)
    return "bias" in names and any(n.startswith("norm") for n in names)
  return jax.tree_util.tree_map_with_path(is_bias, params)


# The airbench model's whitening bias (research/models/airbench.py), which
# config.whiten_bias_epochs freezes.
WHITENING_BIAS = "whiten_bias"


def _whitening_bias_mask(params):
  """The airbench model's whitening bias (research/models/airbench.py)."""
  if WHITENING_BIAS not in params:
    raise errors.ConfigError("config.whiten_bias_epochs is set, but the model has no "
                             "whitening bias (only model 'airbench' does): leave it at 0.")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path_names(path[:1]) == [WHITENING_BIAS], params)


def _frozen_from(steps: int, mask):
  """No update to the parameters in `mask` from update number `steps` on (counting from
  0): they keep their values from then, as PyTorch's `requires_grad=False` keeps them."""
  return optax.masked(
      optax.scale_by_schedule(lambda count: jnp.where(count < steps, 1.0, 0.0)), mask)


def _muon_for_conv_kernels(config, schedule):
  """Muon (optax.contrib.muon) on the conv kernels, each orthogonalised as a (kh*kw*in,
  out) matrix, with the learning rate `config.muon_learning_rate` on the schedule's shape;
  Nesterov SGD on every other parameter."""
  ratio = config.muon_learning_rate / config.learning_rate
  muon = optax.contrib.muon(
      lambda step: schedule(step) * ratio, beta=config.momentum, nesterov=True,
      muon_weight_dimension_numbers=optax.contrib.MuonDimensionNumbers((0, 1, 2), 3))
  labels = lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 4 else "sgd", params)
  return optax.multi_transform(
      {"muon": muon, "sgd": optax.sgd(schedule, momentum=config.momentum, nesterov=True)},
      labels)


def _part(params):
  """'head' or 'backbone' for each parameter (research/models HEAD)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "head" if is_head(path) else "backbone", params)


def _per_part(config: ml_collections.ConfigDict, tx: optax.GradientTransformation):
  """`tx` for the head; for the backbone, no update (freeze=backbone) or `tx`'s update
  scaled by backbone_lr_multiplier, which is the learning rate scaled for every
  optimiser here. Without either, `tx` itself, so that the optimiser state of runs
  saved before these keys is unchanged."""
  if config.freeze == "backbone":
    backbone = optax.set_to_zero()
  elif config.backbone_lr_multiplier != 1:
    backbone = optax.chain(tx, optax.scale(config.backbone_lr_multiplier))
  else:
    return tx
  return optax.multi_transform({"head": tx, "backbone": backbone}, _part)
