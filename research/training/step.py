"""The jitted train and eval steps.

`train_step(state, batch, key) -> (state, metrics)` is a pure function: augmentation and
dropout draw from `key`, which the loop derives from (seed, step) alone, so a run is
reproducible and resumes exactly without saving any random state.
"""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections

from research import errors
from research import losses
from research import optim
from research import preprocess
from research.models import is_kernel, path_names
from research.training import averaging
from research.training.state import TrainState, apply_model, evaluated_weights


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the step needs from the run config, as hashable static values. Fields named
  like a config key take its value (`from_config`)."""
  loss: str = "cross_entropy"
  label_smoothing: float = 0.0
  normalize_mean: tuple[float, ...] = (0.0,)
  normalize_std: tuple[float, ...] = (1.0,)
  augment: tuple[str, ...] = ()
  crop_padding: int = 4
  cutout_size: int = 8
  rotate_degrees: float = 0.0
  scale_range: tuple[float, ...] = (1.0, 1.0)
  l1: float = 0.0
  l2: float = 0.0
  max_norm: float = 0.0
  micro_batches: int = 1   # gradients accumulated over this many slices of each shard
  data_shards: int = 1     # devices the batch is split over (slices keep rows on them)
  compute_dtype: str = "float32"   # of the images; the model's layers are built with it
  class_weights: tuple[float, ...] = ()   # of the train loss, per class; () = none
  crop_fill: str = "zero"
  tta: str = "none"
  weight_averaging: str = "none"
  averaging_every: int = 5
  averaging_decay: float = 0.0
  averaging_decay_power: float = 0.0
  total_steps: int = 1     # of the run: the averaging's decay schedule
  distill_temperature: float = 4.0   # with a teacher in the state (config.distill_from)
  distill_alpha: float = 0.9
  # backbone: the forward pass of training runs in inference mode, so that a frozen
  # backbone's BatchNorm statistics stay fixed and its features are the ones evaluated.
  freeze: str = "none"
  # Top-level parameters that the optimiser stops updating from step `frozen_from_step`
  # on (config.whiten_bias_epochs): from then the step takes no gradient for them.
  frozen_params: tuple[str, ...] = ()
  frozen_from_step: int = 0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, num_devices: int = 1,
                  class_weights: tuple[float, ...] = (),
                  steps_per_epoch: int = 1) -> "StepConfig":
    """`class_weights`: config.class_weights resolved against the training labels
    (losses.class_weights)."""
    frozen = (optim.WHITENING_BIAS,) if config.whiten_bias_epochs else ()
    derived = {"augment": preprocess.parse_augment(config.augment),
               "micro_batches": micro_batches(config, num_devices),
               "data_shards": num_devices, "class_weights": tuple(class_weights),
               "total_steps": steps_per_epoch * config.num_epochs,
               "frozen_params": frozen,
               "frozen_from_step": steps_per_epoch * config.whiten_bias_epochs}
    taken = {f.name: _typed(f.default, config[f.name]) for f in dataclasses.fields(cls)
             if f.name not in derived}
    return cls(**taken, **derived)


def _typed(default, value):
  """`value` with the type of the field's default: config.json holds tuples as lists."""
  return tuple(value) if isinstance(default, tuple) else type(default)(value)


def micro_batches(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """Slices per device shard of the batch: config.micro_batch_size rows each, or the
  whole shard when it is no larger than that (e.g. batch 64 over 8 devices)."""
  shard = config.batch_size // num_devices
  size = config.micro_batch_size
  if not size or size >= shard:
    return 1
  if shard % size:
    raise errors.ConfigError(
        f"config.micro_batch_size={size} must divide the batch each device gets "
        f"(config.batch_size={config.batch_size} over {num_devices} device(s): {shard}).")
  return shard // size


# The metrics train_step returns, each a float32 scalar.
STEP_METRICS = ("loss", "accuracy")


def _kernels(params) -> list[jax.Array]:
  """Weight matrices and conv kernels; biases and BatchNorm scales are not penalised."""
  return [p for p in jax.tree.leaves(params) if is_kernel(p)]


def penalty(params, l1: float, l2: float) -> jax.Array:
  """l1 * sum|w| + l2 * sum(w^2) over kernels (Keras' convention, no 1/2)."""
  total = jnp.zeros((), jnp.float32)
  for w in _kernels(params):
    if l1:
      total += l1 * jnp.sum(jnp.abs(w))
    if l2:
      total += l2 * jnp.sum(jnp.square(w))
  return total


def max_norm_project(params, max_norm: float):
  """Rescales each unit's incoming weight vector to L2 norm <= max_norm. A kernel's last
  axis indexes its output units, so the norm runs over every other axis: axis 0 of a
  Dense (in, out) kernel, axes (0, 1, 2) of a Conv (kh, kw, in, out) kernel."""
  def project(w):
    if w.ndim < 2:
      return w
    norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=tuple(range(w.ndim - 1)), keepdims=True))
    return jnp.where(norm > max_norm, w * (max_norm / jnp.maximum(norm, 1e-12)), w)
  return jax.tree.map(project, params)


def train_step(state: TrainState, batch: dict, key: jax.Array, cfg: StepConfig):
  """One optimiser update on `batch = {'image': NHWC uint8 (or float32), 'label': int32 N}`
  (and 'flip', bool N, with alternating_flip: preprocess.alternating_flips). The forward
  and backward passes run in `cfg.compute_dtype`; the loss, the gradients and the update
  are in the parameters' dtype (float32)."""
  augment_key, dropout_key = jax.random.split(key)
  images = _normalize(batch["image"], cfg)
  if cfg.augment:
    images = preprocess.augment(augment_key, images, cfg.augment, cfg.crop_padding,
                                cfg.cutout_size, cfg.rotate_degrees, cfg.scale_range,
                                cfg.crop_fill, batch.get("flip"))

  def loss_fn(params, images, labels, dropout_key, batch_stats, frozen=False):
    if frozen:
      params = jax.tree_util.tree_map_with_path(
          lambda path, p: (jax.lax.stop_gradient(p)
                           if path_names(path[:1])[0] in cfg.frozen_params else p), params)
    logits, batch_stats = apply_model(state, params, images, train=cfg.freeze == "none",
                                      dropout_key=dropout_key, batch_stats=batch_stats)
    loss = losses.per_example_loss(cfg.loss, logits, labels, cfg.label_smoothing,
                                   cfg.class_weights)
    if state.teacher is not None:
      loss = losses.distillation(logits, state.teacher.logits(images), loss,
                                 cfg.distill_temperature, cfg.distill_alpha)
    loss = loss.mean()
    if cfg.l1 or cfg.l2:
      loss = loss + penalty(params, cfg.l1, cfg.l2)
    chex.assert_type([logits, loss], jnp.float32)
    return loss, (logits, batch_stats)

  def gradients(frozen: bool):
    return in_slices(jax.value_and_grad(functools.partial(loss_fn, frozen=frozen),
                                        has_aux=True), cfg.micro_batches, cfg.data_shards)

  args = (state.params, images, batch["label"], dropout_key, state.batch_stats)
  if cfg.frozen_params:
    # Once they are frozen, no gradient flows to them, so that XLA drops the backward
    # pass's work that only they need: for airbench's whitening bias, the gradient
    # through the first layer (docs/performance.md). Only the taken branch runs.
    (loss, (logits, batch_stats)), grads = jax.lax.cond(
        state.step >= cfg.frozen_from_step, gradients(True), gradients(False), *args)
  else:
    (loss, (logits, batch_stats)), grads = gradients(False)(*args)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = jax.tree.map(lambda p, u: p + u, state.params, updates)
  if cfg.max_norm:
    params = max_norm_project(params, cfg.max_norm)
  # Mixed precision must not leak into what is stored: the checkpoints stay float32.
  chex.assert_trees_all_equal_dtypes(grads, params, state.params)
  chex.assert_trees_all_equal_dtypes(opt_state, state.opt_state)
  chex.assert_trees_all_equal_dtypes(batch_stats, state.batch_stats)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  if cfg.weight_averaging != "none":
    new_state = averaging.update(new_state, cfg.weight_averaging, cfg.averaging_every,
                                 cfg.averaging_decay, cfg.averaging_decay_power,
                                 cfg.total_steps)
  metrics = {"loss": loss,
             "accuracy": jnp.mean(losses.predictions(cfg.loss, logits) == batch["label"])}
  return new_state, metrics


def in_slices(grad_fn, micro_batches: int, data_shards: int):
  """`grad_fn(params, images, labels, dropout_key, batch_stats) -> ((loss, (logits,
  batch_stats)), grads)` computed over `micro_batches` slices of the batch and averaged:
  the same numbers up to float rounding for models without BatchNorm. With BatchNorm
  each slice is normalised with its own statistics ('ghost batch norm'), and the running
  averages are updated slice after slice. Slice i takes rows i*s..(i+1)*s of every
  device's shard, so that no slice moves data between devices. Unrolled, so that each
  slice's convolutions are as small as the slice (docs/performance.md)."""
  if micro_batches == 1:
    return grad_fn

  def part(x, i):
    x = x.reshape((data_shards, micro_batches, -1) + x.shape[1:])[:, i]
    return x.reshape((-1,) + x.shape[2:])

  def sliced(params, images, labels, dropout_key, batch_stats):
    loss, grads, logits = 0.0, None, [None] * micro_batches
    for i in range(micro_batches):
      (part_loss, (logits[i], batch_stats)), part_grads = grad_fn(
          params, part(images, i), part(labels, i),
          None if dropout_key is None else jax.random.fold_in(dropout_key, i), batch_stats)
      loss = loss + part_loss
      grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
    # Back to the batch's row order: (slice, shard, row) -> (shard, slice, row).
    logits = jnp.stack(logits).reshape((micro_batches, data_shards, -1,
                                        logits[0].shape[-1]))
    logits = logits.transpose(1, 0, 2, 3).reshape(labels.shape + logits.shape[-1:])
    scale = 1.0 / micro_batches
    return (loss * scale, (logits, batch_stats)), jax.tree.map(lambda g: g * scale, grads)

  return sliced


def eval_step(state: TrainState, batch: dict, cfg: StepConfig):
  """Per-example losses (unweighted), predicted classes and class probabilities (N,
  classes), in inference mode: of the averaged weights if the run keeps them, from the
  logits averaged over the test-time views of `cfg.tta`."""
  params, batch_stats = evaluated_weights(state)
  views = preprocess.test_time_views(_normalize(batch["image"], cfg), cfg.tta)
  logits = sum(weight * apply_model(state, params, view, train=False,
                                    batch_stats=batch_stats)[0] for weight, view in views)
  loss = losses.per_example_loss(cfg.loss, logits, batch["label"], 0.0)
  return (loss, losses.predictions(cfg.loss, logits),
          losses.probabilities(cfg.loss, logits))


def _normalize(images: jax.Array, cfg: StepConfig) -> jax.Array:
  """The batch's images, normalised straight into the compute dtype."""
  images = preprocess.normalize(images, cfg.normalize_mean, cfg.normalize_std,
                                cfg.compute_dtype)
  chex.assert_type(images, jnp.dtype(cfg.compute_dtype))
  return images
