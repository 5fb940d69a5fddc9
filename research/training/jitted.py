"""The jitted functions of a run, built from its config.

Host work per step is small: the whole dataset sits on the device, each call gathers its
own batches from an on-device permutation and runs `config.steps_per_call` steps in a
`lax.fori_loop`, and metrics stay on the device until a log step fetches them. A
platform's `Tuning` (research/tuning.py) may add compiler options and wrap each call.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research import preprocess
from research import sharding
from research.training.step import STEP_METRICS, StepConfig, eval_step, train_step
from research.tuning import Tuning

# Independent random streams, each folded with the step or epoch.
_STEP_STREAM, _SHUFFLE_STREAM, _FLIP_STREAM = 0, 1, 2


def rows_per_call(cfg: StepConfig, batch_size: int) -> int:
  """The rows of one micro-batch slice of one device's shard: what each call of the
  model holds."""
  return batch_size // (cfg.data_shards * cfg.micro_batches)


def make_train_fn(cfg: StepConfig, mesh, batch_size: int, seed: int,
                  steps_per_call: int = 1, tuning: Tuning = Tuning()):
  """A jitted (state, images, labels, perm, index, count) -> (state, metrics) that runs
  `count` train steps, count <= steps_per_call, on batches index, index + 1, ... of the
  permutation `perm`. Each metric is an array of steps_per_call entries, the first
  `count` of them the steps' own. One program serves every count."""
  step_key = jax.random.fold_in(jax.random.key(seed), _STEP_STREAM)
  flip_key = jax.random.fold_in(jax.random.key(seed), _FLIP_STREAM)
  batch_sharding = sharding.batch_sharded(mesh)

  def train_on_batch(state, images, labels, perm, index):
    idx = jax.lax.dynamic_slice_in_dim(perm, index * batch_size, batch_size)
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    batch = {"image": images[idx], "label": labels[idx]}
    if "alternating_flip" in cfg.augment:   # by image, not by position in the batch
      epoch = state.step // (perm.shape[0] // batch_size)
      batch["flip"] = preprocess.alternating_flips(flip_key, perm.shape[0], epoch)[idx]
    return train_step(state, batch, jax.random.fold_in(step_key, state.step), cfg)

  options = tuning.compiler_options(rows_per_call(cfg, batch_size))

  @functools.partial(jax.jit, donate_argnums=0, compiler_options=options)
  def train_on_batches(state, images, labels, perm, index, count):
    if steps_per_call == 1:
      state, metrics = train_on_batch(state, images, labels, perm, index)
      return state, jax.tree.map(lambda m: m[None], metrics)

    def one_step(i, carry):
      state, metrics = carry
      state, step_metrics = train_on_batch(state, images, labels, perm, index + i)
      return state, jax.tree.map(lambda a, m: a.at[i].set(m), metrics, step_metrics)

    metrics = {name: jnp.zeros(steps_per_call, jnp.float32) for name in STEP_METRICS}
    return jax.lax.fori_loop(0, count, one_step, (state, metrics))

  return tuning.dispatch(train_on_batches)


def epoch_permutation(seed: int, epoch: int, size: int) -> jax.Array:
  """The data order of an epoch is a function of (seed, epoch) only."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SHUFFLE_STREAM), epoch)
  return _permutation(key, size)


@functools.partial(jax.jit, static_argnums=1)
def _permutation(key, size):
  return jax.random.permutation(key, size)


def make_eval_fn(cfg: StepConfig, mesh, batch_size: int, tuning: Tuning = Tuning()):
  batch_sharding = sharding.batch_sharded(mesh)

  # Replicated results: every process of a multi-process run can fetch them.
  @functools.partial(jax.jit, static_argnums=3, out_shardings=sharding.replicated(mesh),
                     compiler_options=tuning.compiler_options(batch_size // mesh.size))
  def eval_batch(state, images, labels, size, index):
    # The last batch wraps around to the start; its extra rows are dropped below.
    idx = (index * batch_size + jnp.arange(batch_size, dtype=jnp.int32)) % size
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    return eval_step(state, {"image": images[idx], "label": labels[idx]}, cfg)

  eval_batch = tuning.dispatch(eval_batch)

  def evaluate(state, images, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example losses, predictions and class probabilities for the whole split,
    fetched once."""
    size = labels.shape[0]
    results = jax.device_get([eval_batch(state, images, labels, size, i)
                              for i in range(-(-size // batch_size))])
    return tuple(np.concatenate([r[k] for r in results])[:size] for k in range(3))

  return evaluate
