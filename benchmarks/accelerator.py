"""One script for the day an accelerator is lent: the main job and the train step's
speed, measured in one run of under about 8 minutes, into one JSON file.

    python -m benchmarks.accelerator [--out=accelerator.json] [--data_dir=DIR]
        [--budget_s=420] [--parts=...] [--batch_sizes=...] [--repeats=N] [--smoke]

Parts, in this order (benchmarks/accelerator_parts.py):
  matmul_peak     square matmuls in float32 (JAX's default precision: TF32 on recent
                  NVIDIA GPUs) and bfloat16, 8192 a side: GFLOP/s, best of 5
  main_job        experiments/cifar_cnn.py's default config through
                  `research.training.loop.train_and_evaluate` into a temporary workdir:
                  test accuracy, wall time (compilation from an empty cache included, the
                  data read from the decode cache), train time, examples/s
  bfloat16        the VGG's train step (benchmarks/workloads.py, batch 128) with
                  config.compute_dtype float32 against bfloat16; skipped with a note where
                  the config has no such key
  steps_per_call  the same step with 1 against 16 steps per jitted call
  batch_sweep     the same step at batch 32, 128, 512, 2048 and 8192, with FLOPs per image
                  and the share of the float32 matmul peak
  full_variant    cifar_cnn's `full` variant (the paper's widths), as main_job
  full_variant_torch  the same recipe written in PyTorch (benchmarks/torch_airbench.py),
                  on the same data and device, right after: the side-by-side time
The step parts time interleaved repeats of about 0.5 s (benchmarks/common.py) and report
medians, so each ratio comes from candidates measured side by side.

Once --budget_s has passed, no part starts, and a training run stops after its next
epoch's evaluation, keeping what it measured (status 'stopped'). A part that fails is
recorded with its error and the others still run; the exit code is then 1. The JSON
file is rewritten after every part. --smoke shrinks everything (the smoke variant's
images, widths and batch, one epoch; the MLP's step, two tiny batch sizes, 256-sided
matmuls) and keeps JAX's compilation cache, to check the script on a CPU.

Missing packages are named at the start, before any work; docs/performance.md ("On an
accelerator") says which to carry to a lent machine and how to run it there.
"""

import dataclasses
import importlib
import importlib.util
import sys
import time
import traceback

from absl import app
from absl import flags
from absl import logging
import jax

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "accelerator.json", "Where to write the JSON results.")
flags.DEFINE_string("data_dir", "", "Where CIFAR-10 is (config.data_dir); empty: "
                    "$RESEARCH_DATA_DIR.")
flags.DEFINE_float("budget_s", 420.0, "Seconds after which no part starts and a "
                   "training run stops after its next epoch's evaluation.")
flags.DEFINE_list("parts", [], "Parts to run (they run in the docstring's order); "
                  "empty: all.")
flags.DEFINE_list("batch_sizes", [], "Batch sizes of the sweep; empty: the default's.")
flags.DEFINE_integer("repeats", 0, "Timed repeats of each step candidate; 0: the "
                     "default.")
flags.DEFINE_bool("smoke", False, "Shrink every part, to check the script on a CPU in "
                  "under a minute.")

# Imported module -> the distribution that provides it.
REQUIRED = {"ml_collections": "ml-collections", "flax": "flax", "optax": "optax",
            "orbax.checkpoint": "orbax-checkpoint", "chex": "chex", "numpy": "numpy",
            "tqdm": "tqdm", "matplotlib": "matplotlib", "PIL": "pillow", "yaml": "PyYAML"}


def missing_packages() -> list[str]:
  return [dist for module, dist in REQUIRED.items() if not _importable(module)]


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ImportError:   # a missing parent package
    return False


def device_description() -> dict:
  devices = jax.devices()
  info = {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
          "count": len(devices), "jax": jax.__version__}
  try:
    info["memory_bytes"] = (devices[0].memory_stats() or {}).get("bytes_limit")
  except Exception:  # not every backend reports memory
    info["memory_bytes"] = None
  return info


def settings(parts):
  """The parts' sizes (`parts` is benchmarks.accelerator_parts), from the flags."""
  base = parts.SMOKE if FLAGS.smoke else parts.Settings()
  changes = {"data_dir": FLAGS.data_dir}
  if FLAGS.batch_sizes:
    changes["batch_sizes"] = tuple(int(b) for b in FLAGS.batch_sizes)
  if FLAGS.repeats:
    changes["repeats"] = FLAGS.repeats
  if not FLAGS.smoke and jax.default_backend() == "cpu":
    changes["matmul_size"] = 2048   # the CPU benchmarks' size; 8192 takes minutes there
  return dataclasses.replace(base, **changes)


def run_part(name: str, fn, config, deadline: float, skipped: type) -> dict:
  """The part's record with its status and seconds; a failure is recorded, not raised,
  so that one part's error costs a lent machine none of the others."""
  start = time.perf_counter()
  if start > deadline:
    record = {"status": "skipped", "note": "the time budget ran out before it started"}
  else:
    try:
      record = {"status": "ok"} | fn(config, deadline)
    except skipped as e:
      record = {"status": "skipped", "note": str(e)}
    except Exception as e:  # recorded with its traceback, and the exit code is 1
      traceback.print_exc()
      record = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
  record["seconds"] = time.perf_counter() - start
  print(f"{name}: {record['status']} in {record['seconds']:.1f} s", file=sys.stderr,
        flush=True)
  return record


def _rate(record: dict, name: str) -> str:
  return common.fmt(record["images_per_s"][name]["median"]) + " img/s"


def _peak_row(r: dict) -> str:
  return (f"{r['size']}x{r['size']}: float32 {common.fmt(r['float32_gflops'])}, "
          f"bfloat16 {common.fmt(r['bfloat16_gflops'])} GFLOP/s")


def _run_row(r: dict) -> str:
  accuracy = r.get("test_accuracy", r["last_test_accuracy"])
  return (f"{r['epochs_done']:.0f}/{r['epochs_planned']} epochs, test "
          f"{common.fmt(100 * accuracy if accuracy is not None else None, '.2f')}%, "
          f"wall {r['wall_time_s']:.1f} s, "
          f"train {common.fmt(r.get('train_time_s'), '.1f')} s, "
          f"{common.fmt(r.get('examples_per_s'))} ex/s "
          f"({common.fmt(r['examples_per_s_after_first_log'])} after the first log)")


def _bfloat16_row(r: dict) -> str:
  return (f"{common.fmt(r['bfloat16_over_float32'], '.2f')}x: bfloat16 "
          f"{_rate(r, 'bfloat16')}, float32 {_rate(r, 'float32')}")


def _steps_per_call_row(r: dict) -> str:
  fused = next(k for k in r["images_per_s"] if k != "1")
  return (f"{common.fmt(r['fused_over_one'], '.2f')}x: {fused} per call "
          f"{_rate(r, fused)}, 1 per call {_rate(r, '1')}")


def _sweep_row(r: dict) -> str:
  return "; ".join(f"batch {b}: {_rate(r, b)}" for b in r["images_per_s"])


def _torch_row(r: dict) -> str:
  return (f"test {100 * r['test_accuracy']:.2f}%, wall {r['wall_time_s']:.1f} s on "
          f"{r['device']} (torch {r['torch']})")


ROWS = {"matmul_peak": _peak_row, "main_job": _run_row, "bfloat16": _bfloat16_row,
        "steps_per_call": _steps_per_call_row, "batch_sweep": _sweep_row,
        "full_variant": _run_row, "full_variant_torch": _torch_row}


def summary_row(name: str, r: dict) -> str:
  """One line of numbers for a part's record, or why it has none."""
  if r["status"] in ("skipped", "failed"):
    return r.get("note") or r.get("error", "")
  return ROWS[name](r)


def sweep_table(sweep: dict, peak_gflops: float | None) -> str:
  per_image = sweep.get("flops_per_image")
  rows = []
  for batch, rate in sweep["images_per_s"].items():
    gflops = rate["median"] * per_image / 1e9 if per_image else None
    rows.append([batch, common.fmt(rate["median"]), common.fmt(gflops, ".1f"),
                 common.fmt(100 * gflops / peak_gflops if gflops and peak_gflops
                            else None, ".2f")])
  return common.markdown_table(["batch", "img/s", "GFLOP/s", "% f32 matmul peak"], rows)


def report(result: dict) -> str:
  d = result["device"]
  lines = [f"{d['count']} x {d['device_kind']} ({d['platform']}), jax {d['jax']}; "
           f"budget {result['budget_s']:.0f} s, used {result['elapsed_s']:.0f} s", ""]
  parts = result["parts"]
  lines.append(common.markdown_table(
      ["part", "status", "s", "numbers"],
      [[name, r["status"], f"{r['seconds']:.1f}", summary_row(name, r)]
       for name, r in parts.items()]))
  ours, theirs = parts.get("full_variant", {}), parts.get("full_variant_torch", {})
  if ours.get("status") == theirs.get("status") == "ok":
    lines += ["", f"The full recipe: ours {ours['wall_time_s']:.1f} s, PyTorch "
              f"{theirs['wall_time_s']:.1f} s; ours faster by "
              f"{common.fmt(common.ratio(theirs['wall_time_s'], ours['wall_time_s']), '.2f')}x"]
  sweep = parts.get("batch_sweep", {})
  if sweep.get("status") == "ok":
    peak = parts.get("matmul_peak", {}).get("float32_gflops")
    lines += ["", f"batch sweep of {sweep['model']}'s step:", sweep_table(sweep, peak)]
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO
  start = time.perf_counter()
  missing = missing_packages()
  if missing:
    sys.exit(f"missing packages: {', '.join(missing)}. Install them, or carry their "
             "wheels to the lent machine (docs/performance.md, 'On an accelerator').")
  # Imported only now, so that a missing package is named above rather than raised.
  parts = importlib.import_module("benchmarks.accelerator_parts")
  unknown = set(FLAGS.parts) - set(parts.PARTS)
  if unknown:
    raise app.UsageError(f"unknown part(s) {sorted(unknown)}; choose from "
                         f"{list(parts.PARTS)}")
  config, deadline = settings(parts), start + FLAGS.budget_s
  parts.use_compilation_cache(config)
  result = {"benchmark": "accelerator", "smoke": FLAGS.smoke, "budget_s": FLAGS.budget_s,
            "device": device_description(), "machine": common.machine_description(),
            "settings": dataclasses.asdict(config), "parts": {}}
  print(common.describe(result["machine"]), flush=True)
  for name, fn in parts.PARTS.items():
    if FLAGS.parts and name not in FLAGS.parts:
      continue
    result["parts"][name] = run_part(name, fn, config, deadline, parts.Skipped)
    result["elapsed_s"] = time.perf_counter() - start
    common.write_json(FLAGS.out, result)
  print()
  print(report(result))
  print(f"wrote {FLAGS.out}")
  if any(r["status"] == "failed" for r in result["parts"].values()):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
