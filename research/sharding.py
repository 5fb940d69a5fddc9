"""Data parallelism over every device with a `jax.sharding` mesh.

The batch is split along its first axis over the mesh axis `data`; parameters, optimiser
state and the device-resident dataset are replicated. The same code runs on one CPU, on
8 simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), on a GPU,
on a TPU, and over the devices of several processes (research/runtime.py).
"""

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from research import errors

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (0 means all of them). With several
  processes it spans every process's devices, and must take them all."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise errors.ConfigError(f"config.num_devices={num_devices} but only {len(devices)} "
                               f"{devices[0].platform} devices are available.")
    if jax.process_count() > 1 and num_devices != len(devices):
      raise errors.ConfigError(
          f"config.num_devices={num_devices}: a run of {jax.process_count()} processes "
          f"uses all {len(devices)} devices; set config.num_devices=0.")
    devices = devices[:num_devices]
  # Auto axes keep the classic GSPMD propagation: we only pin inputs and outputs.
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "batch_size") -> None:
  if batch_size % mesh.size:
    raise errors.ConfigError(
        f"config.{key}={batch_size} must be divisible by the number of devices "
        f"({mesh.size}); pick a multiple of {mesh.size} or set config.num_devices.")

