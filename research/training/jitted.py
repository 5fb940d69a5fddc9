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

from research import errors
from research import preprocess
from research import sharding
from research.training.step import StepConfig, eval_step, train_step

# Independent random streams, each folded with the step or epoch.
_STEP_STREAM, _SHUFFLE_STREAM = 0, 1


def step_config(config: ml_collections.ConfigDict, num_devices: int = 1) -> StepConfig:
  return StepConfig(loss=config.loss, label_smoothing=float(config.label_smoothing),
                    mean=tuple(config.normalize_mean), std=tuple(config.normalize_std),
                    augment=preprocess.parse_augment(config.augment),
                    crop_padding=int(config.crop_padding),
                    cutout_size=int(config.cutout_size), l1=float(config.l1),
                    l2=float(config.l2), max_norm=float(config.max_norm),
                    micro_batches=micro_batches(config, num_devices),
                    data_shards=num_devices)


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

  return one_at_a_time_on_cpu(train_on_batch, mesh)


def one_at_a_time_on_cpu(fn, mesh):
  """`fn`, waiting for each call's result when the mesh has several CPU devices.

  XLA:CPU runs every device's share of a program on one thread pool as large as the
  machine's cores. With several devices and the next step already queued, the threads
  can all be taken by devices waiting in the gradient all-reduce for a device that has
  no thread left: the process hangs, then aborts after 40 s (jax 0.10.2, 2 cores, 2 to 8
  simulated devices; tests/test_cli.py runs the README's 8-device command). One program in flight at a time avoids
  it, at little cost: a CPU device computes while it waits anyway."""
  if mesh.size == 1 or mesh.devices.flat[0].platform != "cpu":
    return fn

  @functools.wraps(fn)
  def waiting(*args):
    return jax.block_until_ready(fn(*args))

  return waiting


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

  eval_batch = one_at_a_time_on_cpu(eval_batch, mesh)

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
