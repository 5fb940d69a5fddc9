"""Several processes joined through `jax.distributed` (research/runtime.py), as on
several hosts: real processes on this CPU with gloo collectives, each with 4 simulated
devices, against one process with all 8."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
import hooked_run
from test_checkpoint import ARGS, TOTAL, final_params, metrics


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, processes: int, hooks: dict | None = None) -> list[tuple[int, str]]:
  """The same command line in each of `processes` processes that share 8 CPU devices;
  returns each one's (exit code, output)."""
  port = _free_port()
  procs = []
  for pid in range(processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(hooks or {}),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, str(hooked_run.PATH), "--config=experiments/mnist_mlp.py",
         f"--workdir={workdir}", *ARGS], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  results = []
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=300)
      results.append((proc.returncode, out))
  finally:
    for proc in procs:
      proc.kill()
  return results


def _succeeded(results):
  for code, out in results:
    assert code == 0, out[-3000:]


@pytest.fixture(scope="module")
def two_processes(data_dir, tmp_path_factory):
  os.environ["RESEARCH_DATA_DIR"] = str(data_dir)
  workdir = tmp_path_factory.mktemp("distributed") / "run"
  results = launch(workdir, 2)
  _succeeded(results)
  return workdir, results


def test_two_processes_of_four_devices_train_as_one_process_of_eight(two_processes,
                                                                     tmp_path):
  workdir, results = two_processes
  single = tmp_path / "single"
  _succeeded(launch(single, 1))
  for a, b in zip(jax.tree.leaves(final_params(workdir)),
                  jax.tree.leaves(final_params(single))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)   # summed in another order
  history, reference = metrics(workdir), metrics(single)
  assert [(r["step"], r["split"]) for r in history] == [
      (r["step"], r["split"]) for r in reference]   # one writer: no record twice
  np.testing.assert_allclose([r["loss"] for r in history],
                             [r["loss"] for r in reference], rtol=1e-5)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["devices"]["count"] == 8 and summary["devices"]["processes"] == 2
  assert summary["devices"]["xla_flags"] == "--xla_force_host_platform_device_count=4"
  # Process 0 holds the lock and prints the run; process 1 only computes.
  assert "in 2 process(es)" in results[0][1] and "test accuracy" in results[0][1]
  assert "epoch 1" not in results[1][1]


def test_both_processes_killed_then_rerun_resume_exactly(two_processes, tmp_path):
  reference, _ = two_processes
  workdir = tmp_path / "run"
  killed = launch(workdir, 2, hooks={hooked_run.SIGNAL_AT: "11:KILL"})
  assert [code for code, _ in killed] == [-signal.SIGKILL] * 2, killed[0][1][-2000:]
  assert not (workdir / "summary.json").exists()
  results = launch(workdir, 2)
  _succeeded(results)
  assert "resuming from checkpoint step 10 " in results[0][1]
  for a, b in zip(jax.tree.leaves(final_params(workdir, TOTAL)),
                  jax.tree.leaves(final_params(reference, TOTAL))):
    assert a.dtype == b.dtype and np.array_equal(a, b)    # bitwise
  assert metrics(workdir) == metrics(reference)


@pytest.mark.parametrize("env,several", [
    ({}, False),
    ({"SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}, False),   # sbatch, one task
    ({"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4"}, True),    # srun -n 4
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0"}, False),                  # one TPU host
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
])
def test_which_launches_join_a_multi_process_run(env, several):
  from research import runtime
  assert runtime.launched_as_several_processes(env) is several
  assert runtime.initialize_distributed("no", env) is False


def test_a_run_by_hand_without_its_process_id_is_refused():
  from research import errors, runtime
  with pytest.raises(errors.ConfigError, match="JAX_PROCESS_ID=0..N-1"):
    runtime.initialize_distributed("auto", {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1",
                                            "JAX_NUM_PROCESSES": "2"})
