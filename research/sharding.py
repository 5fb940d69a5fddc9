"""Data parallelism over every local device with a `jax.sharding` mesh.

The batch is split along its first axis over the mesh axis `data`; parameters, optimiser
state and the device-resident dataset are replicated. The same code runs on one CPU, on
8 simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), on a GPU
and on a TPU.
"""

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from research import errors

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` local devices (0 means all of them)."""
  devices = jax.local_devices()
  if num_devices:
    if num_devices > len(devices):
      raise errors.ConfigError(f"num_devices={num_devices} but only {len(devices)} "
                       f"{devices[0].platform} devices are available.")
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


def describe_devices(mesh: Mesh) -> dict:
  device = mesh.devices.flat[0]
  return {"platform": device.platform, "kind": device.device_kind, "count": mesh.size}
