"""The train state pytree and the pure model application.

The NNX model is split once into a static graph definition and two pytrees: parameters
and BatchNorm statistics. The jitted step merges them back for a forward pass and splits
the updated statistics out again, so everything jit sees is a pure function of pytrees.
"""

from typing import Any, Callable

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import optax

from research import configs
from research import losses
from research.models import create_model


@struct.dataclass
class TrainState:
  step: jax.Array                 # int32 scalar: optimiser updates done so far
  params: nnx.State
  batch_stats: nnx.State          # empty for models without BatchNorm
  opt_state: Any
  # {'params', 'batch_stats'} averaged over training (training/averaging.py), what the
  # run evaluates and serves; None without weight averaging.
  average: Any
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  model_fn: Callable = struct.field(pytree_node=False)   # call_model, maybe tuned
  # A distillation teacher (research/compression.py), or None; never checkpointed.
  teacher: Any = None


def call_model(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State,
               images: jax.Array, *, train: bool, dropout_key: jax.Array | None):
  """The model's forward pass as a pure function: (logits, updated BatchNorm stats)."""
  # copy=True: fresh Variables at this trace level, which BatchNorm may then update.
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  logits = model(images, train=train, dropout_key=dropout_key)
  _, _, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return logits, batch_stats


def create_run_model(config, image_shape, num_classes: int) -> nnx.Module:
  """The model a run of `config` trains on images of `image_shape` with `num_classes`
  classes (a one-unit head for loss=binary_cross_entropy); training and inference
  (research/inference.py) both build it here."""
  return create_model(config.model, input_shape=image_shape,
                      num_classes=losses.num_outputs(config.loss, num_classes),
                      seed=config.seed, **configs.model_kwargs(config))


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation,
                       wrap_model: Callable = lambda fn: fn,
                       averaged: bool = False) -> TrainState:
  """The state of a fresh run; `wrap_model` (a platform's tuning) wraps `call_model`;
  `averaged`: the state keeps an average of the weights, starting at the initial ones."""
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  average = ({"params": jax.tree.map(jnp.copy, params),
              "batch_stats": jax.tree.map(jnp.copy, batch_stats)} if averaged else None)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=tx.init(params), average=average,
                    graphdef=graphdef, tx=tx, model_fn=wrap_model(call_model))


def apply_model(state: TrainState, params: nnx.State, images: jax.Array, *,
                train: bool, dropout_key: jax.Array | None = None,
                batch_stats: nnx.State | None = None):
  """Returns (float32 logits, updated BatchNorm statistics); the statistics start from
  `batch_stats`, by default the state's. The logits are cast to float32 whatever the
  model computes in, so that the softmax and the loss are float32."""
  batch_stats = state.batch_stats if batch_stats is None else batch_stats
  logits, batch_stats = state.model_fn(state.graphdef, params, batch_stats, images,
                                       train=train, dropout_key=dropout_key)
  return logits.astype(jnp.float32), batch_stats


def evaluated_weights(state: TrainState) -> tuple[nnx.State, nnx.State]:
  """(params, batch_stats) that evaluation uses: the average when the run keeps one."""
  if state.average is None:
    return state.params, state.batch_stats
  return state.average["params"], state.average["batch_stats"]


def count_params(state: TrainState) -> int:
  return sum(x.size for x in jax.tree.leaves(state.params))
