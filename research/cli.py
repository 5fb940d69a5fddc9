"""The command line shared by every experiment module.

    python -m experiments.NAME [--workdir DIR] [--config=experiments/NAME.py:VARIANT]
                               [--config.KEY=VALUE ...]
    python -m experiments.NAME --workdir DIR [--seeds N] [--parallel N]
                               [--grid='{"KEY": [V1, V2]}'] [--cv_folds K]
                               [--print-commands] [--aggregate-only]

absl flags with `config_flags`, the JAX convention: the config file is the experiment
module itself, a variant after ':' goes to its `get_config(variant)`, and a `--config.KEY`
that does not exist, or a value of the wrong type, stops the run before any work starts.

A module with a `get_sweep(variant)` runs its sweep (research/sweep.py), as does any
module given --grid, --seeds or --cv_folds; --nosweep runs the single config.
"""

import datetime
import functools
import importlib.util
import pathlib
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from research import data as data_lib
from research import errors
from research import outputs
from research import runtime
from research import sweep as sweep_lib
from research import sweep_results
from research.training import loop
from research.training import preflight

FLAGS = flags.FLAGS


def default_workdir(experiment: str) -> str:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return str(pathlib.Path("runs") / experiment / stamp)


def main(config_file: str, hooks: loop.Hooks | None = None) -> None:
  """Entry point for `if __name__ == '__main__': cli.main(__file__)`. `hooks` go to a
  single run in this process; the runs of a sweep are processes of their own."""
  experiment = pathlib.Path(config_file).stem
  flags.DEFINE_string("workdir", None,
                      f"Directory for config.json, metrics.jsonl and summary.json "
                      f"(default: runs/{experiment}/<date-time>).")
  config_flags.DEFINE_config_file("config", config_file,
                                  "Experiment config file, optionally with :variant.",
                                  lock_config=True)
  flags.DEFINE_bool("sweep", None, "Run the config module's get_sweep() (the default when "
                    "it has one, or with --grid or --seeds); --nosweep runs one config.")
  flags.DEFINE_integer("seeds", None, "Sweeps: seeds per point (config.seed, +1, ...); "
                       "default: the sweep's own.", lower_bound=1)
  flags.DEFINE_integer("cv_folds", None, "Sweeps: K-fold cross-validation, K runs per "
                       "point and seed, each validating on its own stratified fold of the "
                       "training split (config.cv_fold); results are mean ± std over "
                       "them. Give it again with --print-commands and --aggregate-only.",
                       lower_bound=2)
  flags.DEFINE_string("grid", None, "Sweeps: a grid of overrides as JSON, e.g. "
                      '\'{"weight_decay": [0, 0.0005]}\'; replaces get_sweep()\'s points.')
  flags.DEFINE_integer("parallel", 1, "Sweeps: runs at a time, each its own process. With "
                       "GPUs, each run gets one (CUDA_VISIBLE_DEVICES) and at most one run "
                       "per GPU goes at once; on a TPU host, runs go one at a time over "
                       "every chip. The log says when this caps N.", lower_bound=1)
  flags.DEFINE_bool("print-commands", False, "Sweeps: print one command line per run not "
                    "yet finished (for GNU parallel, SLURM, ...) and exit.")
  flags.DEFINE_enum("distributed", "auto", runtime.DISTRIBUTED,
                    "Join the other processes of a multi-process run through "
                    "jax.distributed: auto (when JAX_COORDINATOR_ADDRESS is set, under "
                    "SLURM with several tasks, or on a TPU slice of several hosts), yes "
                    "(always; JAX finds its peers), or no. docs/several_hosts.md.")
  flags.DEFINE_bool("aggregate-only", False, "Sweeps: only gather finished runs into "
                    "results.csv, results.md and the plots.")
  app.run(functools.partial(_run, experiment, hooks))


def _run(experiment: str, hooks: loop.Hooks | None, argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  config_arg = config_flags.get_config_filename(FLAGS["config"])
  module = _config_module(config_arg)
  sweeping = FLAGS.sweep
  if sweeping is None:
    sweeping = bool(hasattr(module, "get_sweep") or FLAGS.grid or FLAGS.seeds
                    or FLAGS.cv_folds)
  if sweeping:
    try:
      sys.exit(_run_sweep(experiment, module, config_arg))
    except (errors.UserError, data_lib.DataError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  workdir = FLAGS.workdir or default_workdir(experiment)
  if FLAGS.config.mode == "eval" and not FLAGS.workdir:
    raise app.UsageError("--config.mode=eval needs the --workdir of a run.")
  try:
    runtime.initialize_distributed(FLAGS.distributed)
    summary = loop.train_and_evaluate(FLAGS.config, workdir, hooks)
  except (errors.UserError, data_lib.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except errors.Interrupted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    sys.exit(errors.Interrupted.EXIT_CODE)
  if FLAGS.config.mode == "eval":
    print(f"checkpoint step {summary['checkpoint_step']}: test accuracy "
          f"{summary['test_accuracy']:.2%} (loss {summary['test_loss']:.4f}), macro F1 "
          f"{summary['test_macro_f1']:.4f}")
    return
  print(f"test accuracy {summary['test_accuracy']:.2%} (loss {summary['test_loss']:.4f}), "
        f"train accuracy {summary['train_accuracy']:.2%}, "
        f"{summary['wall_time_s']:.0f}s; results in {workdir}")


def _config_module(config_arg: str):
  """The module that --config names (its get_sweep lives beside get_config)."""
  path = config_arg.split(":", 1)[0]
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _this_command() -> list[str]:
  """How to start this experiment again: `python -m experiments.NAME` when run that way."""
  spec = getattr(sys.modules["__main__"], "__spec__", None)
  if spec is not None and spec.name:
    return [sys.executable, "-m", spec.name]
  return [sys.executable, sys.argv[0]]


def _run_sweep(experiment: str, module, config_arg: str) -> int:
  """Plans, runs (or prints) and aggregates a sweep; returns the exit code."""
  # This process only plans and checks shapes. On the CPU, it holds no GPU memory and no
  # TPU chip (which serves one process) while its runs need them.
  jax.config.update("jax_platforms", "cpu")
  variant = config_arg.split(":", 1)[1] if ":" in config_arg else None
  if FLAGS.grid:
    sweep = sweep_lib.Sweep(sweep_lib.parse_grid(FLAGS.grid), title=experiment)
  elif hasattr(module, "get_sweep"):
    sweep = module.get_sweep(variant)
  else:
    sweep = sweep_lib.Sweep([sweep_lib.Point({})], title=experiment)
  num_seeds = FLAGS.seeds or sweep.seeds
  sweep_dir = FLAGS.workdir or str(pathlib.Path("runs") / experiment /
                                   f"sweep-{variant or 'default'}")
  if not (FLAGS["print-commands"].value or FLAGS["aggregate-only"].value):
    sweep_lib.check_can_execute(sweep_dir)
  sweep_dir = outputs.workdir_path(sweep_dir)   # each run checks orbax's needs itself
  jobs = sweep_lib.plan(sweep, FLAGS.config, sweep_dir, num_seeds, _this_command(),
                        config_arg, config_flags.get_override_values(FLAGS["config"]),
                        FLAGS.cv_folds or 0)
  if not FLAGS["aggregate-only"].value:
    preflight.check_jobs(jobs)   # every point against its data, before the first run
  sweep_lib.check_existing(jobs)
  if FLAGS["print-commands"].value:
    # Piped into `head` or a scheduler that stops reading: end quietly, like a shell tool.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sweep_lib.print_commands(jobs)
    return 0
  sweep_results.write_plan(sweep, jobs, sweep_dir)
  code = 0
  if not FLAGS["aggregate-only"].value:
    folds = f" x {FLAGS.cv_folds} folds" if FLAGS.cv_folds else ""
    print(f"sweep: {len(sweep.points)} point(s) x {num_seeds} seed(s){folds} = "
          f"{len(jobs)} runs in {sweep_dir}, {FLAGS.parallel} at a time", flush=True)
    outcome = sweep_lib.execute(jobs, FLAGS.parallel,
                                log=functools.partial(print, flush=True))
    if outcome.interrupted:
      code = errors.Interrupted.EXIT_CODE
    elif outcome.failed:
      code = 1
  written = sweep_results.aggregate(sweep, jobs, sweep_dir, num_seeds)
  print((sweep_dir / "results.md").read_text())
  print("wrote " + ", ".join(str(p) for p in written))
  if code == errors.Interrupted.EXIT_CODE:
    print("interrupted: run the same command again to finish the sweep", file=sys.stderr)
  elif code:
    print("some runs failed (see above); the others are in the results", file=sys.stderr)
  return code
