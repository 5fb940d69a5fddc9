"""Making a trained network small: magnitude pruning, int8 post-training quantisation and
a teacher for knowledge distillation (docs/compression.md).

- Pruning (Han et al. 2015): one global threshold over every conv and dense kernel
  (`research.models.is_kernel`, as for weight decay); biases and BatchNorm are never pruned.
  `hold_pruned()`, the optimiser's last transform, zeroes the updates of pruned weights,
  after weight decay and momentum, so that nothing moves them; its mask lives in the
  optimiser state and is checkpointed with it.
- Quantisation (Jacob et al. 2018, weights only): each kernel as int8 with a float32
  scale per output channel (its last axis), symmetric (q in [-127, 127], zero exact);
  runs evaluate the dequantised weights, q * scale.
- Distillation (Hinton et al. 2015): `Teacher` holds a finished run's weights; the train
  step computes its eval-mode logits on the student's augmented batch, and the loss is
  `losses.distillation`.
"""

from typing import Any, NamedTuple

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research import errors
from research.models import is_kernel
from research.training import state as train_state

INT8_MAX = 127


def magnitude_mask(params: Any, sparsity: float) -> Any:
  """1.0 for the weights to keep, 0.0 for the round(sparsity * n) smallest |w| among all
  n kernel weights (one global ranking, ties broken by position); non-kernels get 1.0."""
  kernels = [p for p in jax.tree.leaves(params) if is_kernel(p)]
  magnitudes = jnp.concatenate([jnp.abs(p).ravel() for p in kernels])
  pruned = jnp.argsort(magnitudes, stable=True)[:round(sparsity * magnitudes.size)]
  flat_keep = jnp.ones(magnitudes.size, jnp.float32).at[pruned].set(0.0)
  sizes = np.cumsum([p.size for p in kernels])[:-1]
  keep = iter(jnp.split(flat_keep, sizes))
  return jax.tree.map(lambda p: next(keep).reshape(p.shape).astype(p.dtype) if is_kernel(p)
                      else jnp.ones_like(p), params)


def prune(params: Any, sparsity: float) -> Any:
  """`params` with the global magnitude mask applied."""
  return jax.tree.map(jnp.multiply, params, magnitude_mask(params, sparsity))


class PruningMaskState(NamedTuple):
  """Per kernel, 1 where the weight trains and 0 where it was pruned; a scalar 1 for the
  other parameters."""
  mask: Any


def hold_pruned() -> optax.GradientTransformation:
  """Zeroes the updates of the kernel weights that are exactly zero when the optimiser is
  initialised: initialise it on the pruned parameters. Chained last, after weight decay
  and momentum, it keeps a pruned weight at exactly zero whatever the optimiser does."""

  def init(params):
    return PruningMaskState(jax.tree.map(
        lambda p: (p != 0).astype(p.dtype) if is_kernel(p) else jnp.ones((), p.dtype),
        params))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(jnp.multiply, updates, state.mask), state

  return optax.GradientTransformation(init, update)


def quantize_int8(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(q int8 with w's shape, float32 scale per output channel): symmetric, scale =
  max|w| / 127 over every axis but the last, q = round(w / scale). An all-zero channel
  gets scale 1."""
  amax = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)))
  scale = jnp.where(amax > 0, amax / INT8_MAX, 1.0).astype(jnp.float32)
  q = jnp.clip(jnp.round(w / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
  return q, scale


def dequantize_int8(q: jax.Array, scale: jax.Array) -> jax.Array:
  return q.astype(jnp.float32) * scale


def quantize_params(params: Any) -> Any:
  """Every kernel replaced by its int8 round trip, dequantize(quantize(w)); the other
  parameters unchanged."""
  return jax.tree.map(lambda p: dequantize_int8(*quantize_int8(p)).astype(p.dtype)
                      if is_kernel(p) else p, params)


def size_report(params: Any, batch_stats: Any, quantize: str) -> dict:
  """The parameter counts and the bytes that inference needs, BatchNorm statistics
  included: model_bytes stores kernels dense (int8 plus a float32 scale per output
  channel with quantize='int8', else float32); sparse_model_bytes stores each kernel as a
  bitmap of its nonzero weights plus their values. Everything else is float32."""
  kernels = [p for p in jax.tree.leaves(params) if is_kernel(p)]
  biases = sum(p.size for p in jax.tree.leaves(params) if not is_kernel(p))
  rest = 4 * (biases + sum(p.size for p in jax.tree.leaves(batch_stats)))
  count = sum(k.size for k in kernels)
  nonzero = sum(int(jnp.count_nonzero(k)) for k in kernels)
  int8 = quantize == "int8"
  value_bytes = 1 if int8 else 4
  scales = 4 * sum(k.shape[-1] for k in kernels) if int8 else 0   # float32 per channel
  bitmaps = sum(-(-k.size // 8) for k in kernels)
  return {"kernel_weights": count, "nonzero_kernel_weights": nonzero,
          "nonzero_params": nonzero + biases,
          "model_bytes": value_bytes * count + scales + rest,
          "sparse_model_bytes": bitmaps + value_bytes * nonzero + scales + rest}


@struct.dataclass
class Teacher:
  """A finished run's model in inference mode, fed the student's normalised images: the
  affine map `scale * x + shift` (per channel) turns them into the teacher's own
  normalisation."""
  params: nnx.State
  batch_stats: nnx.State
  scale: jax.Array
  shift: jax.Array
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)

  def logits(self, images: jax.Array) -> jax.Array:
    """float32 logits, constants to the student's gradient."""
    x = images.astype(jnp.float32) * self.scale + self.shift
    logits, _ = train_state.call_model(self.graphdef, self.params, self.batch_stats, x,
                                       train=False, dropout_key=None)
    return jax.lax.stop_gradient(logits.astype(jnp.float32))


def load_teacher(config: ml_collections.ConfigDict, class_names, image_shape) -> Teacher:
  """The teacher of `config.distill_from`: a finished run on the same classes and image
  shape as this one. Raises a ConfigError naming the workdir otherwise."""
  # Imported here: research.inference imports the train state, which reaches this module
  # through configs and optim.
  from research import inference   # pylint: disable=import-outside-toplevel
  workdir = config.distill_from
  model = inference.restore_finished("distill_from", workdir)
  if (tuple(model.class_names) != tuple(class_names)
      or tuple(model.image_shape) != tuple(image_shape)):
    raise errors.ConfigError(
        f"config.distill_from={workdir!r}: the teacher was trained on classes "
        f"{list(model.class_names)} with images {model.image_shape}, this run has "
        f"{list(class_names)} with images {tuple(image_shape)}; they must match.")
  mean_s, std_s = (np.asarray(config[k], np.float32) for k in ("normalize_mean",
                                                                 "normalize_std"))
  mean_t, std_t = (np.asarray(model.config[k], np.float32) for k in ("normalize_mean",
                                                                       "normalize_std"))
  return Teacher(params=model.params, batch_stats=model.batch_stats,
                 scale=jnp.asarray(std_s / std_t), shift=jnp.asarray((mean_s - mean_t) / std_t),
                 graphdef=model.graphdef)


def start_state(state, config: ml_collections.ConfigDict, class_names,
                image_shape) -> tuple[Any, list[str]]:
  """A fresh run's state with config's compression applied: the weights pruned (and the
  optimiser, with its mask, initialised on them) or quantised, and the teacher attached.
  Returns it with what was done, for the log. A resumed run then restores its
  checkpoint over it (the teacher stays)."""
  notes = []
  if config.prune_sparsity:
    params = prune(state.params, config.prune_sparsity)
    state = state.replace(params=params, opt_state=state.tx.init(params))
    report = size_report(params, state.batch_stats, "none")
    notes.append(f"pruned {config.prune_sparsity:.0%} of the kernel weights by global "
                 f"magnitude: {report['nonzero_kernel_weights']:,} of "
                 f"{report['kernel_weights']:,} left; they stay zero (hold_pruned)")
  if config.quantize == "int8":
    state = state.replace(params=quantize_params(state.params))
    notes.append("kernels quantised to int8 per output channel (evaluated dequantised)")
  if config.distill_from:
    state = state.replace(teacher=load_teacher(config, class_names, image_shape))
    notes.append(f"distilling from {config.distill_from} at temperature "
                 f"{config.distill_temperature}, alpha {config.distill_alpha}")
  return state, notes
