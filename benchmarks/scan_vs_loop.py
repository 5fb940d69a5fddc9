"""A Python loop over one train step per call against several steps per call
(`config.steps_per_call`: a `lax.fori_loop` over the steps), with the library's
convolutions and with autodiff's.

    python -m benchmarks.scan_vs_loop [--model=s2] [--batch_size=64] [--steps_per_call=16]

Our train step as the loop builds it for a seed recipe (benchmarks/workloads.py), the
same steps in each variant, interleaved, with repeats and medians; images/s and the
ratio to the Python loop. For each variant it also prints, from the optimised HLO, the
convolutions left in a dimension order other than NHWC/HWIO -> NHWC ("b01f_01io->b01f").

Why that matters: XLA:CPU's library kernels (Eigen, YNNPACK) take only that order, and
its ConvCanonicalization pass, which transposes the operands into it, visits the entry
computation only (openxla/xla xla/service/cpu/conv_canonicalization.cc). Autodiff writes
a kernel gradient as a convolution over the batch ("f01b_i01o->01bf") and an input
gradient with the kernel's channel axes swapped ("b01f_01oi->b01f"). With one step per
call both are canonicalised; inside a while loop they stay as they are and run as XLA's
generic emitted loops, many times slower. On CPU the library's convolutions write their
own gradients in the canonical order, which makes several steps per call faster than the
Python loop. Measured results: docs/performance.md.
"""

import contextlib
import statistics
import time
from unittest import mock

from absl import app
from absl import flags
import jax

from benchmarks import common
from benchmarks import workloads
from research import xla_cpu

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "s2", "Workload (benchmarks/workloads.py): s1, s2, s4, vgg; "
                    "the recipe's config, micro-batches included.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps_per_call", 16, "Steps per call of the fused variants.")
flags.DEFINE_integer("steps", 64, "Steps per timed repeat.")
flags.DEFINE_integer("repeats", 5, "Timed repeats of each variant (interleaved).")
flags.DEFINE_list("variants", ["loop", "fused", "autodiff"],
                  "loop: one step per call; fused: --steps_per_call; autodiff: the same "
                  "with autodiff's convolution gradients (very slow for large models).")

LABELS = {"loop": "python loop", "fused": "fused steps",
          "autodiff": "fused, autodiff convs"}


def autodiff_convolutions():
  """While tracing: the models' convolutions without their own gradients."""
  return mock.patch.object(xla_cpu, "_nhwc_applies", lambda *args: False)


def main(_):
  if FLAGS.model not in workloads.WORKLOADS:
    raise app.UsageError(f"unknown model {FLAGS.model!r}; choose from "
                         f"{sorted(workloads.WORKLOADS)}")
  work = workloads.WORKLOADS[FLAGS.model]
  data = workloads.synthetic_data(work.input_shape, FLAGS.batch_size)
  unknown = set(FLAGS.variants) - set(LABELS)
  if unknown or "loop" not in FLAGS.variants:
    raise app.UsageError(f"--variants must include loop, from {sorted(LABELS)}")
  variants = {"loop": (1, contextlib.nullcontext),
              "fused": (FLAGS.steps_per_call, contextlib.nullcontext),
              "autodiff": (FLAGS.steps_per_call, autodiff_convolutions)}
  runs, hlo = {}, {}
  for name in FLAGS.variants:
    per_call, tracing = variants[name]
    config = work.get_config()
    config.steps_per_call = per_call
    step = workloads.build_ours(config, work.input_shape, FLAGS.batch_size, data)
    with tracing():
      lowered = step.step_fn.lower(step.state, *step.arrays, 0, per_call)
      hlo[name] = lowered.compile().as_text()
      step.run(per_call)   # compiles, under the same tracing

    def run(step=step) -> float:
      start = time.perf_counter()
      step.run(FLAGS.steps)
      return time.perf_counter() - start

    runs[name] = run
  times = common.interleaved(runs, FLAGS.repeats)
  rates = {name: FLAGS.steps * FLAGS.batch_size / statistics.median(t)
           for name, t in times.items()}
  print(f"{work.label}, batch {FLAGS.batch_size}, {FLAGS.steps} steps, "
        f"{FLAGS.steps_per_call} per fused call, {jax.devices()[0].platform}:")
  for name, rate in rates.items():
    odd = common.non_canonical_convolutions(hlo[name])
    print(f"  {LABELS[name]:22s} {rate:10,.0f} images/s ({rate / rates['loop']:5.2f} of "
          f"the loop); "
          f"convolutions not in NHWC/HWIO order: {len(odd)} {sorted(set(odd))}")


if __name__ == "__main__":
  app.run(main)
