"""Our train step as another checkout of this project builds it, as a peer of
benchmarks/train_step.py (`--baseline=PATH`): before-and-after numbers of a change,
interleaved in one run on one machine.

    git worktree add /tmp/before main
    python -m benchmarks.train_step --baseline=/tmp/before --peers=

The baseline runs in a worker process that imports `research` and `benchmarks` from
PATH and builds the step with that checkout's `benchmarks.workloads.build_ours`; the
worker times each repeat itself, so process overheads are not counted. It also writes
its step's optimised HLO, so that the table can say whether the two programs are the
same.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

_WORKER = """
import json, sys, time
from benchmarks import workloads
from research.training.state import count_params
key, batch, hlo_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
work = workloads.WORKLOADS[key]
step = workloads.build_ours(work.get_config(), work.input_shape, batch,
                            workloads.synthetic_data(work.input_shape, batch))
with open(hlo_path, "w") as f:
  f.write(step.step_fn.lower(step.state, *step.arrays, 0, step.steps_per_call)
          .compile().as_text())
print(json.dumps(count_params(step.state)), flush=True)
for line in sys.stdin:
  start = time.perf_counter()
  step.run(int(line))
  print(json.dumps(time.perf_counter() - start), flush=True)
"""


class BaselineStep:
  """`run(steps) -> seconds` of the baseline checkout's step for one workload."""

  def __init__(self, checkout: str, key: str, batch: int):
    self.checkout = pathlib.Path(checkout).resolve()
    if not (self.checkout / "research").is_dir():
      raise ValueError(f"--baseline={checkout} is not a checkout of this project "
                       "(no research/ in it)")
    self._hlo = tempfile.NamedTemporaryFile(suffix=".hlo", delete=False)
    env = dict(os.environ, PYTHONPATH=str(self.checkout))
    self._proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, key, str(batch), self._hlo.name],
        cwd=self.checkout, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    self.params = self._read()

  def _read(self):
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the baseline worker in {self.checkout} stopped (exit code "
                         f"{self._proc.wait()}); see its messages above")
    return json.loads(line)

  def run(self, steps: int) -> float:
    self._proc.stdin.write(f"{steps}\n")
    self._proc.stdin.flush()
    return self._read()

  def hlo(self) -> str:
    return pathlib.Path(self._hlo.name).read_text()

  def close(self) -> None:
    self._proc.stdin.close()
    self._proc.wait()
    os.unlink(self._hlo.name)


def same_program(hlo_a: str, hlo_b: str) -> bool:
  """Whether two optimised HLO modules are the same program, ignoring source locations
  and names of files, which differ between checkouts."""
  return _program(hlo_a) == _program(hlo_b)


def _program(hlo: str) -> str:
  lines = [line for line in hlo.splitlines() if not re.match(r"^\d+ ", line)]
  text = "\n".join(lines[1:])   # the first line names the module
  text = re.sub(r", metadata=\{[^}]*\}", "", text)
  return re.sub(r",? ?stack_frame_id=\d+", "", text)
