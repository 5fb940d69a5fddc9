"""How a platform computes a run, chosen once by setup. Only XLA:CPU is tuned
(research/xla_cpu.py); on GPU and TPU the defaults change nothing."""

import dataclasses
import functools
from typing import Callable

from research import xla_cpu


def _unchanged(fn):
  return fn


def _no_options(rows: int) -> dict:
  del rows
  return {}


@dataclasses.dataclass(frozen=True)
class Tuning:
  # Wraps the model application, before it is differentiated.
  model_fn: Callable = _unchanged
  # `jax.jit` compiler options for a call that holds `rows` rows per device.
  compiler_options: Callable[[int], dict] = _no_options
  # Wraps each jitted call of the train and eval functions.
  dispatch: Callable = _unchanged


def for_platform(platform: str, num_devices: int, cpu_convolutions: str = "auto") -> Tuning:
  """The tuning for `num_devices` devices of `platform` ('cpu', 'gpu', 'tpu')."""
  if platform != "cpu":
    return Tuning()
  return Tuning(
      model_fn=xla_cpu.fast_kernels,
      compiler_options=functools.partial(xla_cpu.compiler_options, cpu_convolutions),
      dispatch=xla_cpu.one_call_at_a_time if num_devices > 1 else _unchanged)


def for_mesh(mesh, config) -> Tuning:
  """The tuning of a run's config on the devices of `mesh`."""
  return for_platform(mesh.devices.flat[0].platform, mesh.size, config.cpu_convolutions)
