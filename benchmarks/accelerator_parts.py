"""The measurements of benchmarks/accelerator.py. Each part is a function of
(settings, deadline) that returns its record, a dict of numbers; it raises `Skipped`
when it cannot run here, and stops or leaves out work once `time.perf_counter()` passes
`deadline`."""

import dataclasses
import os
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import workloads
from experiments import cifar_cnn
from research import compilation_cache
from research import plots
from research.training import inputs
from research.training import loop
from research.training import preflight


class Skipped(Exception):
  """A part that cannot run here; its message says why."""


class OutOfBudget(Exception):
  """Raised inside a training run, after an epoch, once the deadline has passed."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The sizes of every part: the accelerator's, or --smoke's for a CPU."""
  smoke: bool = False
  data_dir: str = ""
  step_model: str = "vgg"          # benchmarks/workloads.py: cifar_cnn.py:vgg
  step_batch: int = 128            # the VGG's batch size
  batch_sizes: tuple[int, ...] = (32, 128, 512, 2048, 8192)
  fused_steps: int = 16            # the default config.steps_per_call
  repeats: int = 5
  target_s: float = 0.5            # seconds per timed repeat
  matmul_size: int = 8192


SMOKE = Settings(smoke=True, step_model="s1", step_batch=32, batch_sizes=(8, 32),
                 repeats=2, target_s=0.05, matmul_size=256)


def use_compilation_cache(settings: Settings) -> None:
  """Measurements compile from scratch, as a first run does. A smoke check keeps JAX's
  persistent cache (research/compilation_cache.py), so that a repeated check is quick."""
  if settings.smoke:
    compilation_cache.enable()
  else:
    jax.config.update("jax_enable_compilation_cache", False)


# --- The matmul peak.

def matmul_peak(settings: Settings, deadline: float) -> dict:
  """Square matmuls in float32 (JAX's default precision, which lets recent NVIDIA GPUs
  use TF32) and bfloat16: the practical compute peak."""
  del deadline
  n = settings.matmul_size
  return {"size": n, "float32_gflops": common.matmul_peak_jax(n),
          "bfloat16_gflops": common.matmul_peak_jax(n, dtype=jnp.bfloat16),
          "default_matmul_precision": str(jax.config.jax_default_matmul_precision)}


# --- Whole runs.

def run_config(variant: str, settings: Settings):
  """cifar_cnn's config of `variant`, shrunk with --smoke to the smoke variant's data and
  widths, (at most) its batch, and one epoch, reading from settings.data_dir when set."""
  config = cifar_cnn.get_config(variant)
  if settings.smoke:
    smoke = cifar_cnn.get_config("smoke")
    for key in ("train_subset", "test_subset", "log_every_steps", "warmup_epochs"):
      config[key] = smoke[key]
    if config.model == smoke.model:
      config.model_kwargs = smoke.model_kwargs
    config.num_epochs = 1
    for key in ("batch_size", "eval_batch_size", "whitening_examples"):   # at most
      config[key] = min(config[key], smoke[key])
  config.progress = False
  if settings.data_dir:
    config.data_dir = settings.data_dir
  return config


def budget_hooks(deadline: float, steps_per_epoch: int, num_epochs: int) -> loop.Hooks:
  """Hooks that stop a run past the deadline at the step after an epoch's end, so that
  the epoch's evaluation is logged."""
  def check(state):
    if time.perf_counter() > deadline:
      raise OutOfBudget(f"stopped after step {int(state.step)} of "
                        f"{steps_per_epoch * num_epochs}: the time budget ran out")
  return loop.Hooks(at_step={e * steps_per_epoch + 1: check
                             for e in range(1, num_epochs)})


def train_run(config, deadline: float) -> dict:
  """`config` trained and tested by `loop.train_and_evaluate`, compiled from scratch,
  with the data read from the decode cache as a repeated run reads it."""
  load_s, train_images = preload(config)
  hooks = budget_hooks(deadline, train_images // config.batch_size, config.num_epochs)
  jax.clear_caches()   # no program compiled by an earlier part is reused
  summary, note, record = train_in_tempdir(config, hooks)
  record |= {"data_load_before_s": load_s, "train_images": train_images,
             "epochs_planned": config.num_epochs}
  if note:
    return record | {"status": "stopped", "note": note}
  return record | {k: summary[k] for k in ("test_accuracy", "train_time_s",
                                           "examples_per_s", "steps", "epochs")}


def preload(config) -> tuple[float, int]:
  """(seconds to load the data, decoding it into the decode cache the first time;
  training images in the run)."""
  start = time.perf_counter()
  dataset = inputs.load_full(config)
  return time.perf_counter() - start, len(inputs.select(config, dataset).train.labels)


def train_in_tempdir(config, hooks: loop.Hooks) -> tuple[dict | None, str | None, dict]:
  """(the run's summary, or None if it ran out of time; why it stopped; its wall time
  and what metrics.jsonl says), from a temporary workdir that is then removed."""
  workdir = tempfile.mkdtemp(prefix="bench_accel_")
  try:
    start, summary, note = time.perf_counter(), None, None
    try:
      summary = loop.train_and_evaluate(config, os.path.join(workdir, "run"), hooks)
    except OutOfBudget as e:
      note = str(e)
    wall = time.perf_counter() - start
    return summary, note, {"wall_time_s": wall,
                           **logged_rates(os.path.join(workdir, "run"))}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def logged_rates(workdir: str) -> dict:
  """From metrics.jsonl: epochs trained, the last test accuracy, and the median
  examples/s of the train log windows after the first (which holds the compilation)."""
  records = plots.read_metrics(workdir)
  train = [r for r in records if r["split"] == "train"]
  tests = [r for r in records if r["split"] == "test"]
  return {"epochs_done": train[-1]["epoch"] if train else 0.0,
          "last_test_accuracy": tests[-1]["accuracy"] if tests else None,
          "examples_per_s_after_first_log": (
              statistics.median(r["examples_per_s"] for r in train[1:])
              if len(train) > 1 else None)}


def main_job(settings: Settings, deadline: float) -> dict:
  return train_run(run_config("default", settings), deadline)


def full_variant(settings: Settings, deadline: float) -> dict:
  return train_run(run_config("full", settings), deadline)


def full_variant_torch(settings: Settings, deadline: float) -> dict:
  """The same config trained by the PyTorch program of benchmarks/torch_airbench.py on
  this machine's GPU (else its CPU), right after ours: wall time from building the model
  to the test accuracy, with the data already on the device."""
  del deadline   # at the full recipe's size it takes seconds on a GPU
  try:
    import torch
    from benchmarks import torch_airbench
  except ImportError as e:
    raise Skipped(f"PyTorch is not importable ({e})") from None
  config, dataset = preflight.load_for_run(run_config("full", settings))
  device = "cuda" if torch.cuda.is_available() else "cpu"
  return torch_airbench.train_recipe(config, dataset, device) | {
      "torch": torch.__version__, "train_images": len(dataset.train.labels)}


# --- The train step.

def build_step(key: str, batch: int, **settings) -> workloads.OurStep:
  """Our jitted step for workload `key` at `batch`, its config overridden by
  `settings`, on synthetic data (benchmarks/workloads.py)."""
  work = workloads.WORKLOADS[key]
  config = work.get_config()
  for name, value in settings.items():
    config[name] = value
  data = workloads.synthetic_data(work.input_shape, batch)
  return workloads.build_ours(config, work.input_shape, batch, data)


def time_steps(steps: dict[str, workloads.OurStep], batch: dict[str, int],
               settings: Settings) -> dict:
  """Images/s of each step (median, min, max over interleaved repeats)."""
  counts, times = common.measure({name: common.timed(step.run)
                                  for name, step in steps.items()},
                                 settings.repeats, settings.target_s)
  return {name: common.summary(times[name], counts[name] * batch[name]) | {
      "steps_per_repeat": counts[name]} for name in steps}


def computes_in_bfloat16(step: workloads.OurStep) -> bool:
  """Whether the traced train program holds any bfloat16 value."""
  jaxpr = jax.make_jaxpr(step.step_fn)(step.state, *step.arrays, 0, step.steps_per_call)
  return "bf16[" in str(jaxpr)


def _check_time(deadline: float, what: str) -> None:
  if time.perf_counter() > deadline:
    raise Skipped(f"the time budget ran out before {what}")


def bfloat16(settings: Settings, deadline: float) -> dict:
  """The step with config.compute_dtype float32 against bfloat16, interleaved."""
  if "compute_dtype" not in workloads.WORKLOADS[settings.step_model].get_config():
    raise Skipped("this checkout's config has no compute_dtype key")
  steps = {}
  for dtype in ("float32", "bfloat16"):
    _check_time(deadline, f"building the {dtype} step")
    steps[dtype] = build_step(settings.step_model, settings.step_batch,
                              compute_dtype=dtype)
  in_bf16 = {name: computes_in_bfloat16(step) for name, step in steps.items()}
  if in_bf16 != {"float32": False, "bfloat16": True}:
    raise RuntimeError(f"bfloat16 values in each traced step: {in_bf16}; "
                       "workloads.build_ours does not apply config.compute_dtype")
  rates = time_steps(steps, dict.fromkeys(steps, settings.step_batch), settings)
  return {"model": settings.step_model, "batch_size": settings.step_batch,
          "images_per_s": rates, "bfloat16_over_float32": common.ratio(
              rates["bfloat16"]["median"], rates["float32"]["median"])}


def steps_per_call(settings: Settings, deadline: float) -> dict:
  """The step with one step per jitted call against `fused_steps`, interleaved."""
  counts = {"1": 1, str(settings.fused_steps): settings.fused_steps}
  steps = {}
  for name, count in counts.items():
    _check_time(deadline, f"building the step with {count} per call")
    steps[name] = build_step(settings.step_model, settings.step_batch,
                             steps_per_call=count)
  rates = time_steps(steps, dict.fromkeys(steps, settings.step_batch), settings)
  fused = str(settings.fused_steps)
  return {"model": settings.step_model, "batch_size": settings.step_batch,
          "images_per_s": rates,
          "fused_over_one": common.ratio(rates[fused]["median"], rates["1"]["median"])}


def batch_sweep(settings: Settings, deadline: float) -> dict:
  """The step (default steps_per_call) at each batch size, interleaved, with FLOPs per
  image from XLA's count of the one-step program at the smallest batch."""
  steps, left_out = {}, []
  for batch in settings.batch_sizes:
    if time.perf_counter() > deadline:
      left_out.append(batch)
      continue
    steps[str(batch)] = build_step(settings.step_model, batch)
  if not steps:
    raise Skipped("the time budget ran out before the first batch size")
  first = next(iter(steps.values()))
  flops = common.compiled_flops(first.one_step_fn, first.state, *first.arrays, 0, 1)
  rates = time_steps(steps, {name: int(name) for name in steps}, settings)
  return {"model": settings.step_model, "images_per_s": rates,
          "flops_per_image": flops / int(next(iter(steps))) if flops else None,
          "left_out_for_time": left_out}


PARTS = {"matmul_peak": matmul_peak, "main_job": main_job, "bfloat16": bfloat16,
         "steps_per_call": steps_per_call, "batch_sweep": batch_sweep,
         "full_variant": full_variant, "full_variant_torch": full_variant_torch}
