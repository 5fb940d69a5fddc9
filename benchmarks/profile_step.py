"""Where our train step's time goes: a `jax.profiler` trace of a few steps, summed per
XLA operation.

    python -m benchmarks.profile_step [--model=s4] [--batch_size=32] [--steps=50]
        [--top=15] [--trace_dir=DIR]

The step is the one benchmarks/train_step.py times (benchmarks/workloads.py: the loop's
own `make_train_fn`, the recipe's optimiser and micro-batches, synthetic data on the
device), one step per call. The trace is kept in
--trace_dir (open it with Perfetto or TensorBoard's profile plugin); the table sums the
trace's events per instruction of the optimised HLO, and groups the instructions that do
the same work on different micro-batch slices: same kind, shape and source operation,
where `jvp` is the forward pass and `transpose(jvp)` the backward pass.

It found the convolution channel padding of docs/performance.md ("Tuning for XLA:CPU"),
where the measurements are logged.
"""

import collections
import dataclasses
import glob
import gzip
import json
import re
import tempfile
import time

from absl import app
from absl import flags
import jax

from benchmarks import common
from benchmarks import workloads

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "s4", "Model: s1, s2, s4, vgg.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("steps", 50, "Steps traced (after a warm-up).")
flags.DEFINE_integer("top", 15, "Rows of the table.")
flags.DEFINE_string("trace_dir", "", "Where to keep the trace (default: a temporary "
                    "directory, printed).")

# `%name = f32[16,28,28,6]{3,2,1,0} convolution(...), ..., op_name="jit(f)/jvp()/conv..."`
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>\S+) "
                          r"(?P<opcode>[\w\-]+)\((?P<rest>.*)$")
_OP_NAME = re.compile(r'op_name="(?:jit\([^)]*\)/)?(?P<op>[^"]*)"')


@dataclasses.dataclass(frozen=True)
class Instruction:
  kind: str     # opcode, or the fusion kind (loop fusion, ynn_fusion, ...)
  shape: str
  source: str   # the jax operation it came from, with its transformation path


def instructions(hlo_text: str) -> dict[str, Instruction]:
  """The instructions of every computation, by name: the entry's, and those of the
  branches it calls (a `lax.cond` puts the whole step in one). Fused computations'
  instructions are parsed too, but run inside their fusion, so no trace event names
  them."""
  found = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match or match["opcode"] in ("parameter", "constant", "tuple",
                                        "get-tuple-element", "bitcast"):
      continue
    op = _OP_NAME.search(match["rest"])
    kind = re.sub(r"\.\d+$", "", match["name"]) if match["opcode"] == "fusion" else (
        match["opcode"])
    found[match["name"]] = Instruction(kind, re.sub(r"\{[^}]*\}", "", match["shape"]),
                                       op["op"] if op else "")
  return found


def op_durations(trace_dir: str) -> collections.Counter:
  """Total microseconds per event name in the Perfetto trace that jax.profiler wrote.

  XLA:CPU marks an operation's start with an event of its name and, when the work runs
  on the thread pool, its completion with an event 'end: NAME'; the time between them
  is the operation's time. Operations without an end mark count their event's length."""
  (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  events = sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"])
  started, totals = collections.defaultdict(collections.deque), collections.Counter()
  for event in events:
    name = event["name"]
    if name.startswith("end: "):
      if started[name[5:]]:
        begin = started[name[5:]].popleft()
        totals[name[5:]] += event["ts"] + event.get("dur", 0) - begin["ts"]
    else:
      started[name].append(event)
  for name, pending in started.items():   # no end marks: the events' own lengths
    totals[name] += sum(e.get("dur", 0) for e in pending)
  return totals


def grouped(durations: collections.Counter, hlo: dict[str, Instruction], steps: int):
  """[(Instruction, instances per step, ms per step)], slowest first."""
  total, count = collections.Counter(), collections.Counter()
  for name, micros in durations.items():
    if name in hlo:
      total[hlo[name]] += micros / 1000 / steps
      count[hlo[name]] += 1
  return [(ins, count[ins], ms) for ins, ms in total.most_common()]


def table(rows, wall_ms: float, top: int) -> str:
  headers = ["kind", "shape", "source op", "per step", "ms/step", "% of step"]
  body = [[ins.kind, ins.shape, ins.source or "-", str(n), f"{ms:.3f}",
           f"{100 * ms / wall_ms:.1f}"] for ins, n, ms in rows[:top]]
  return common.markdown_table(headers, body)


def main(argv):
  del argv
  if FLAGS.model not in workloads.WORKLOADS:
    raise app.UsageError(f"unknown model {FLAGS.model!r}; choose from "
                         f"{sorted(workloads.WORKLOADS)}")
  work = workloads.WORKLOADS[FLAGS.model]
  config = work.get_config()
  config.steps_per_call = 1   # the table reads the entry computation, not a loop's body
  step = workloads.build_ours(config, work.input_shape, FLAGS.batch_size,
                              workloads.synthetic_data(work.input_shape, FLAGS.batch_size))
  lowered = step.step_fn.lower(step.state, *step.arrays, 0, 1)
  hlo = instructions(lowered.compile().as_text())
  step.run(5)   # compile, thread pools, allocator
  trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix="profile_step_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    start = time.perf_counter()
    step.run(FLAGS.steps)
    wall_ms = (time.perf_counter() - start) * 1000 / FLAGS.steps
  rows = grouped(op_durations(trace_dir), hlo, FLAGS.steps)
  if not rows:
    raise RuntimeError(f"no XLA operation of the step was found in the trace in "
                       f"{trace_dir}; this jax version may name trace events differently")
  print(common.describe(common.machine_description()))
  print(f"\n{work.label}, batch {FLAGS.batch_size}, {FLAGS.steps} traced steps: "
        f"{wall_ms:.2f} ms per step under the profiler "
        f"({FLAGS.batch_size / wall_ms * 1000:,.0f} images/s), {len(rows)} kinds of XLA "
        f"operation. Independent operations (e.g. of different micro-batch slices) run "
        f"at the same time on the thread pool, so the times can add up to more than the "
        f"step. Trace: {trace_dir}\n")
  print(table(rows, wall_ms, FLAGS.top))


if __name__ == "__main__":
  app.run(main)
