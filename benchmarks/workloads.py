"""The benchmark workloads (the seed models and the main job with their configs), synthetic data
of their input shapes, and our train step built as the train loop builds it; shared by
benchmarks/train_step.py and benchmarks/profile_step.py."""

import dataclasses

import jax
import numpy as np

from experiments import cifar_cnn, mnist_cnn, mnist_mlp
from research import configs, normalization, optim, sharding, tuning
from research.models import create_model
from research.training import jitted
from research.training.state import create_train_state
from research.training.step import StepConfig

POOL = 4096  # distinct synthetic images per (model, batch): the step index wraps around


@dataclasses.dataclass(frozen=True)
class Workload:
  label: str
  input_shape: tuple[int, int, int]
  get_config: object
  peers: tuple[str, ...] = ("torch", "keras")   # the frameworks it has a peer in


WORKLOADS = {
    "s1": Workload("S1 MLP", (28, 28, 1), mnist_mlp.get_config),
    "s2": Workload("S2 MNIST CNN", (28, 28, 1), mnist_cnn.get_config),
    "s4": Workload("S4 LeNet-5", (32, 32, 3), lambda: cifar_cnn.get_config("lenet")),
    "vgg": Workload("VGG 16-32-64 BN", (32, 32, 3), lambda: cifar_cnn.get_config("vgg")),
    "airbench": Workload("airbench 48-96-96 (main job)", (32, 32, 3), cifar_cnn.get_config,
                         peers=("torch",)),
    # The same once config.whiten_bias_epochs has frozen the whitening bias: each side
    # then skips the gradient through the first layer. Frozen from step 1 (the step's
    # epoch is one step here), so that every timed step is; the peer's from the start.
    "airbench_frozen_bias": Workload("airbench 48-96-96, whitening bias frozen", (32, 32, 3),
                                     lambda: _with(cifar_cnn.get_config(),
                                                   whiten_bias_epochs=1),
                                     peers=("torch",)),
}
NUM_CLASSES = 10


def _with(config, **overrides):
  config.update(overrides)
  return config


def synthetic_data(shape, batch: int, seed: int = 0):
  pool = max(1, POOL // batch) * batch
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (pool, *shape), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, pool).astype(np.int32)
  return images, labels, rng.permutation(pool).astype(np.int32)


@dataclasses.dataclass
class OurStep:
  """Our jitted train function with its state and on-device data, as the train loop
  holds them: `config.steps_per_call` steps per call."""
  step_fn: object
  state: object
  arrays: tuple        # (images, labels, permutation) on the device
  num_batches: int
  steps_per_call: int
  one_step_fn: object  # the same step, one per call: for the compiled FLOPs of a step

  def run(self, steps: int) -> None:
    """`steps` steps, the batch index wrapping around (a call ends at the wrap, as the
    loop's end at an epoch's end), blocking at the end."""
    state, metrics, done = self.state, None, 0
    while done < steps:
      index = done % self.num_batches
      count = min(self.steps_per_call, steps - done, self.num_batches - index)
      state, metrics = self.step_fn(state, *self.arrays, index, count)
      done += count
    jax.block_until_ready((state, metrics))
    self.state = state


def build_ours(config, shape, batch, data) -> OurStep:
  images_np, labels_np, perm_np = data
  mesh = sharding.make_mesh()
  model = create_model(config.model, input_shape=shape, num_classes=NUM_CLASSES, seed=0,
                       **configs.model_kwargs(config))
  num_batches = len(labels_np) // batch
  tx, _ = optim.create_optimizer(config, steps_per_epoch=num_batches)
  tuned = tuning.for_mesh(mesh, config)
  state = jax.device_put(create_train_state(model, tx, tuned.model_fn,
                                            config.weight_averaging != "none"),
                         sharding.replicated(mesh))
  arrays = jax.device_put((images_np, labels_np, perm_np), sharding.replicated(mesh))
  # The recipe's micro-batch size (research/configs.py) applies at every batch size
  # that it divides; StepConfig derives the slices from the batch as a run does.
  config.batch_size = batch
  if config.micro_batch_size and batch % config.micro_batch_size:
    config.micro_batch_size = 0
  config = normalization.resolved(config, *normalization.mean_std(config, images_np))
  cfg = dataclasses.replace(StepConfig.from_config(config, mesh.size), augment=())
  return OurStep(jitted.make_train_fn(cfg, mesh, batch, seed=0, steps_per_call=
                                      config.steps_per_call, tuning=tuned),
                 state, arrays, num_batches, config.steps_per_call,
                 jitted.make_train_fn(cfg, mesh, batch, seed=0, tuning=tuned))
