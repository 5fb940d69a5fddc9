"""The jitted functions of a run, built from its config.

Host work per step is one jitted call: the whole dataset sits on the device, the step
gathers its own batch from an on-device permutation, and metrics stay on the device until
a log step fetches them. On XLA:CPU a Python loop over one jitted step ran 8x faster than
`lax.scan` over the same steps (S2 CNN, batch 64, 2-core AMD EPYC, jax 0.10.2: 3,013
against 370 images/s, `python -m benchmarks.scan_vs_loop`), so the loop over steps stays
in Python. GPU and TPU have not been measured; re-run the benchmark there before fusing.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import preprocess
from research import sharding
from research.training.step import StepConfig, eval_step, train_step

# Independent random streams, each folded with the step or epoch.
_STEP_STREAM, _SHUFFLE_STREAM = 0, 1


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
  return StepConfig(loss=config.loss, label_smoothing=float(config.label_smoothing),
                    mean=tuple(config.normalize_mean), std=tuple(config.normalize_std),
                    augment=preprocess.parse_augment(config.augment),
                    crop_padding=int(config.crop_padding),
                    cutout_size=int(config.cutout_size), l1=float(config.l1),
                    l2=float(config.l2), max_norm=float(config.max_norm),
                    micro_batches=(config.batch_size // config.micro_batch_size
                                   if config.micro_batch_size else 1))


def make_train_fn(cfg: StepConfig, mesh, batch_size: int, seed: int):
  """A jitted (state, images, labels, perm, index) -> (state, metrics) that trains on
  batch `index` of the permutation `perm`."""
  step_key = jax.random.fold_in(jax.random.key(seed), _STEP_STREAM)
  batch_sharding = sharding.batch_sharded(mesh)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_on_batch(state, images, labels, perm, index):
    idx = jax.lax.dynamic_slice_in_dim(perm, index * batch_size, batch_size)
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    batch = {"image": images[idx], "label": labels[idx]}
    return train_step(state, batch, jax.random.fold_in(step_key, state.step), cfg)

  return train_on_batch


def epoch_permutation(seed: int, epoch: int, size: int) -> jax.Array:
  """The data order of an epoch is a function of (seed, epoch) only."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SHUFFLE_STREAM), epoch)
  return _permutation(key, size)


@functools.partial(jax.jit, static_argnums=1)
def _permutation(key, size):
  return jax.random.permutation(key, size)


def make_eval_fn(cfg: StepConfig, mesh, batch_size: int):
  batch_sharding = sharding.batch_sharded(mesh)

  @jax.jit
  def eval_batch(state, images, labels, order, index):
    idx = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    return eval_step(state, {"image": images[idx], "label": labels[idx]}, cfg)

  def evaluate(state, images, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per-example losses and predictions for the whole split, fetched once."""
    size = labels.shape[0]
    num_batches = -(-size // batch_size)
    # The last batch wraps around to the start; its extra rows are dropped below.
    order = jnp.arange(num_batches * batch_size, dtype=jnp.int32) % size
    results = [eval_batch(state, images, labels, order, i) for i in range(num_batches)]
    losses, preds = jax.device_get((jnp.concatenate([r[0] for r in results]),
                                    jnp.concatenate([r[1] for r in results])))
    return losses[:size], preds[:size]

  return evaluate
