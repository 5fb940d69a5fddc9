"""The command line shared by every experiment module.

    python -m experiments.NAME [--workdir DIR] [--config=experiments/NAME.py:VARIANT]
                               [--config.KEY=VALUE ...]

absl flags with `config_flags`, the JAX convention: the config file is the experiment
module itself, a variant after ':' goes to its `get_config(variant)`, and a `--config.KEY`
that does not exist, or a value of the wrong type, stops the run before any work starts.
"""

import datetime
import functools
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from research import data as data_lib
from research import errors
from research.training import loop

FLAGS = flags.FLAGS


def default_workdir(experiment: str) -> str:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return str(pathlib.Path("runs") / experiment / stamp)


def main(config_file: str) -> None:
  """Entry point for `if __name__ == '__main__': cli.main(__file__)`."""
  experiment = pathlib.Path(config_file).stem
  flags.DEFINE_string("workdir", None,
                      f"Directory for config.json, metrics.jsonl and summary.json "
                      f"(default: runs/{experiment}/<date-time>).")
  config_flags.DEFINE_config_file("config", config_file,
                                  "Experiment config file, optionally with :variant.",
                                  lock_config=True)
  app.run(functools.partial(_run, experiment))


def _run(experiment: str, argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  workdir = FLAGS.workdir or default_workdir(experiment)
  if FLAGS.config.mode == "eval" and not FLAGS.workdir:
    raise app.UsageError("--config.mode=eval needs the --workdir of a run.")
  try:
    summary = loop.train_and_evaluate(FLAGS.config, workdir)
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
