"""Where a run executes: the backend it asked for, several processes joined through
`jax.distributed`, and the description of both that summary.json records.

One process per host (or per GPU under SLURM) runs the same command. After
`initialize_distributed`, `jax.devices()` lists every device of every process, the mesh
spans them all, and process 0 alone writes the run's files (docs/several_hosts.md).
"""

from collections.abc import Mapping
import os
import platform

import jax
import numpy as np

from research import errors

PLATFORMS = ("auto", "cpu", "gpu", "tpu")
DISTRIBUTED = ("auto", "yes", "no")

# How each backend is installed, for the message when JAX is not on the one asked for.
_INSTALL = {"cpu": "pip install jax",
            "gpu": "pip install -U 'jax[cuda12]' (or cuda13, matching the driver)",
            "tpu": "pip install -U 'jax[tpu]'"}


def check_platform(requested: str) -> None:
  """Stops before any work when `config.platform` names a backend JAX is not on, e.g.
  a TPU runtime whose second process could not open the TPU and fell back to the CPU."""
  if requested == "auto":
    return
  actual = jax.default_backend()
  if actual != requested:
    forced = os.environ.get("JAX_PLATFORMS")
    raise errors.ConfigError(
        f"config.platform={requested!r} but JAX is running on {actual!r}"
        + (f" (JAX_PLATFORMS={forced})" if forced else "")
        + f": check that no other process holds the {requested.upper()}, that "
        f"`{_INSTALL[requested]}` is installed, and that JAX_PLATFORMS allows it; or "
        f"pass --config.platform={actual} or auto to run on {actual}.")


def launched_as_several_processes(env: Mapping[str, str] = os.environ) -> bool:
  """True when the environment says this process is one of several: a coordinator given
  by hand (JAX_COORDINATOR_ADDRESS), a SLURM step of several tasks, or a TPU slice of
  several hosts."""
  tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  return bool(env.get("JAX_COORDINATOR_ADDRESS")) or int(tasks) > 1 or len(hosts) > 1


def initialize_distributed(mode: str = "auto", env: Mapping[str, str] = os.environ) -> bool:
  """Joins the processes of a multi-process run (`jax.distributed.initialize`); returns
  whether it did. Must come before anything that starts a JAX backend.

  mode: 'auto' joins when `launched_as_several_processes`; 'yes' always calls
  `jax.distributed.initialize`, which finds its peers on a TPU slice, under SLURM or
  Open MPI; 'no' never does. By hand, set JAX_COORDINATOR_ADDRESS (host:port of process
  0), JAX_NUM_PROCESSES and JAX_PROCESS_ID in each process."""
  if mode not in DISTRIBUTED:
    raise errors.ConfigError(f"--distributed={mode!r} is not one of {list(DISTRIBUTED)}.")
  if mode == "no" or (mode == "auto" and not launched_as_several_processes(env)):
    return False
  by_hand = {}
  if env.get("JAX_NUM_PROCESSES") or env.get("JAX_PROCESS_ID"):
    try:
      by_hand = {"num_processes": int(env["JAX_NUM_PROCESSES"]),
                 "process_id": int(env["JAX_PROCESS_ID"])}
    except (KeyError, ValueError) as e:
      raise errors.ConfigError(
          "a multi-process run by hand needs JAX_COORDINATOR_ADDRESS=host:port, "
          "JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=0..N-1 in every process; got "
          f"JAX_NUM_PROCESSES={env.get('JAX_NUM_PROCESSES')!r}, "
          f"JAX_PROCESS_ID={env.get('JAX_PROCESS_ID')!r}.") from e
  jax.distributed.initialize(**by_hand)
  return True


def is_primary() -> bool:
  """Process 0 writes the run's files; the others only compute and checkpoint."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any, so that all of them stop (and save
  their part of a checkpoint) at the same step. A no-op with one process."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def describe(mesh: jax.sharding.Mesh) -> dict:
  """What summary.json records of where the run executed: the devices, and the host's
  CPU, which sets the speed on a CPU and can change the last bits of the results."""
  device = mesh.devices.flat[0]
  return {"platform": device.platform, "kind": device.device_kind, "count": mesh.size,
          "processes": jax.process_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "host_cpu": host_cpu(), "host_cores": os.cpu_count()}


def host_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host's CPU model, as Linux names it ('AMD EPYC ...'), else the architecture."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()
