"""An experiment's own command line, with hooks (`research.training.loop.Hooks`) that let
tests stop the run at an exact point:

    python tests/hooked_run.py --config=experiments/NAME.py[:VARIANT] [FLAGS ...]

runs what `python -m experiments.NAME --config=... [FLAGS ...]` runs, with the hooks that
these environment variables ask for. (The environment, not flags: it reaches the runs of
a sweep, which are processes started with this script's path and the sweep's flags.)

    HOOKED_RUN_SIGNAL_AT=STEP:NAME  the run sends itself SIGNAME (KILL, TERM) right after
                                    global step STEP
    HOOKED_RUN_SAVE_PAUSE_S=SECONDS every checkpoint, complete in its temporary directory,
                                    waits SECONDS before orbax renames it into place
"""

import asyncio
import os
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # as with -m

import orbax.checkpoint as ocp

from research import cli
from research.training import loop

PATH = pathlib.Path(__file__).resolve()
SIGNAL_AT = "HOOKED_RUN_SIGNAL_AT"
SAVE_PAUSE = "HOOKED_RUN_SAVE_PAUSE_S"


class PausedRename(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's default on a local disk, with a pause between a step written in full to its
  temporary directory and the rename that commits it."""

  async def finalize(self, *args, **kwargs):
    final = self.get_final()
    if final.name.isdigit():  # the step, not one of its items
      seconds = float(os.environ[SAVE_PAUSE])
      print(f"[test hook] save of {final.name} paused for {seconds}s before commit",
            flush=True)
      await asyncio.sleep(seconds)
    return await super().finalize(*args, **kwargs)


def hooks_from_env() -> loop.Hooks:
  at_step = {}
  if os.environ.get(SIGNAL_AT):
    step, name = os.environ[SIGNAL_AT].split(":")
    signum = signal.Signals["SIG" + name]
    at_step[int(step)] = lambda state: os.kill(os.getpid(), signum)
  return loop.Hooks(at_step=at_step, checkpoint_temporary_path=(
      PausedRename if os.environ.get(SAVE_PAUSE) else None))


def config_file(argv: list[str]) -> str:
  for arg in argv:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":", 1)[0]
  raise SystemExit(f"usage: python {sys.argv[0]} --config=experiments/NAME.py ...")


if __name__ == "__main__":
  cli.main(config_file(sys.argv[1:]), hooks_from_env())
