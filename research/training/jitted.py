"""The jitted functions of a run, built from its config.

Host work per step is small: the whole dataset sits on the device, each call gathers its
own batches from an on-device permutation and runs `config.steps_per_call` steps in a
`lax.fori_loop`, and metrics stay on the device until a log step fetches them.

Several steps per call became possible on XLA:CPU only with the models' own convolution
gradients (research/models/layers.py): XLA:CPU puts convolutions into the order its fast
kernels take only in a program's entry computation, so autodiff's gradient convolutions
inside a loop run as generic loops (S2's step 11x slower, benchmarks/scan_vs_loop.py).
With them, 16 steps per call against 1 ran S1 at batch 128 1.47x faster, S2 at 64
1.07x, S4 at 32 1.08x, the VGG at 128 1.14x (2-core Xeon, jax 0.10.2; README). GPU and
TPU have not been measured.
"""

import functools

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import errors
from research import preprocess
from research import sharding
from research.training.step import STEP_METRICS, StepConfig, eval_step, train_step

# Independent random streams, each folded with the step or epoch.
_STEP_STREAM, _SHUFFLE_STREAM = 0, 1

CPU_CONVOLUTIONS = ("auto", "ynnpack", "eigen")
# 'auto' picks Eigen from this many rows per device and call (one micro-batch slice).
EIGEN_FROM_ROWS = 64


def step_config(config: ml_collections.ConfigDict, num_devices: int = 1) -> StepConfig:
  return StepConfig(loss=config.loss, label_smoothing=float(config.label_smoothing),
                    mean=tuple(config.normalize_mean), std=tuple(config.normalize_std),
                    augment=preprocess.parse_augment(config.augment),
                    crop_padding=int(config.crop_padding),
                    cutout_size=int(config.cutout_size), l1=float(config.l1),
                    l2=float(config.l2), max_norm=float(config.max_norm),
                    micro_batches=micro_batches(config, num_devices),
                    data_shards=num_devices, cpu_convolutions=config.cpu_convolutions)


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


def cpu_compiler_options(choice: str, rows: int, mesh) -> dict:
  """`jax.jit` compiler options that give XLA:CPU's convolutions to YNNPACK (XLA's
  default in jax 0.10.2) or to XLA's Eigen kernels; `rows` is what each device's call
  holds. Measured on a 2-core Xeon (AVX-512), interleaved repeats of our train step
  (benchmarks/train_step.py's), Eigen against YNNPACK:
  - VGG (cifar_cnn's default), whole batch: 0.86x at 32 rows, 1.39x at 64, 1.45x at 128,
    1.58x at 512;
  - inference at batch 1000: VGG 1.39x, S2 2.25x, S4 1.00x;
  - S4 LeNet-5, whole batch: 1.22x at 32, 1.54x at 64, 1.79x at 128, 3.75x at 512;
  - S2 with slices of 16 or 32 rows: 0.64x to 0.94x; S4 with slices of 16: 0.97x-1.01x.
  YNNPACK's kernel gradients got slower per image as the rows grew (S4's first layer,
  128 images: 13 ms against Eigen's 3.2 ms), and Eigen's did not. Dots stay on YNNPACK
  either way. The two differ in float rounding only. Other platforms ignore this."""
  if mesh.devices.flat[0].platform != "cpu":
    return {}
  if choice == "auto":
    choice = "eigen" if rows >= EIGEN_FROM_ROWS else "ynnpack"
  if choice == "ynnpack" or not _eigen_option_accepted():
    return {}
  return dict(_EIGEN_CONVOLUTIONS)


# XLA's default list of YNNPACK fusions without the convolutions: the optimised HLO equals
# that of XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution.
_EIGEN_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                       "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def _eigen_option_accepted() -> bool:
  """Whether this jaxlib takes the option: it is experimental and may be renamed."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=_EIGEN_CONVOLUTIONS).lower(
        jnp.zeros(())).compile()
  except jax.errors.JaxRuntimeError as e:
    logging.warning("config.cpu_convolutions: this jaxlib does not take %s (%s); "
                    "XLA's default convolutions are used.", _EIGEN_CONVOLUTIONS, e)
    return False
  return True


def train_compiler_options(cfg: StepConfig, mesh, batch_size: int) -> dict:
  """The train step's compiler options: each convolution call holds one micro-batch
  slice of one device's shard."""
  rows = batch_size // (cfg.data_shards * cfg.micro_batches)
  return cpu_compiler_options(cfg.cpu_convolutions, rows, mesh)


def make_train_fn(cfg: StepConfig, mesh, batch_size: int, seed: int,
                  steps_per_call: int = 1):
  """A jitted (state, images, labels, perm, index, count) -> (state, metrics) that runs
  `count` train steps, count <= steps_per_call, on batches index, index + 1, ... of the
  permutation `perm`. Each metric is an array of steps_per_call entries, the first
  `count` of them the steps' own. One program serves every count."""
  step_key = jax.random.fold_in(jax.random.key(seed), _STEP_STREAM)
  batch_sharding = sharding.batch_sharded(mesh)

  def train_on_batch(state, images, labels, perm, index):
    idx = jax.lax.dynamic_slice_in_dim(perm, index * batch_size, batch_size)
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    batch = {"image": images[idx], "label": labels[idx]}
    return train_step(state, batch, jax.random.fold_in(step_key, state.step), cfg)

  @functools.partial(jax.jit, donate_argnums=0,
                     compiler_options=train_compiler_options(cfg, mesh, batch_size))
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

  return one_at_a_time_on_cpu(train_on_batches, mesh)


def one_at_a_time_on_cpu(fn, mesh):
  """`fn`, waiting for each call's result when the mesh has several CPU devices.

  XLA:CPU runs every device's share of a program on one thread pool as large as the
  machine's cores. With several devices and the next call already queued, the threads
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

  @functools.partial(jax.jit, compiler_options=cpu_compiler_options(
      cfg.cpu_convolutions, batch_size // mesh.size, mesh))
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
