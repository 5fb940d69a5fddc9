"""End to end: the seed recipes S2 and S4 run to completion by each framework, one after
another on the same machine, with wall time (compilation included) and test accuracy.

    python -m benchmarks.end_to_end [--recipes=s2,s4] [--frameworks=ours,torch,keras]
        [--repeats=N] [--epochs=N] [--train_subset=N] [--test_subset=N] [--json_out=PATH]
    python -m benchmarks.end_to_end --epochs=1 --train_subset=512 --test_subset=256  # smoke

Recipes (../shared/reference/seed-recipes.md):
  s2  MNIST CNN, pixels / 255, Adam lr 1e-3 eps 1e-7, batch 64, 10 epochs, trained on the
      48,000 images left after holding out 20% (research.data's seeded split, the same for
      every framework).
  s4  CIFAR-10 LeNet-5, inputs normalised with mean 0.5 and std 0.5, SGD lr 0.001 momentum
      0.9, batch 32, 2 epochs; the PyTorch peer is the tutorial's DataLoader loop.

The data is loaded once (research.data, the shipped archives) and handed to every
framework as the same uint8 arrays; loading is timed separately and is in no wall time.
Wall time runs from building the model to the test accuracy:
- ours:  `research.training.loop.train_and_evaluate` with the experiment's config, as a
         user runs it (outputs, the final checkpoint and the plot included; compiled from
         scratch unless --warm_cache), but with the
         test set evaluated only at the end (`eval_every_epochs=0`) and no final
         re-evaluation of the train split, as the peers do;
- torch: benchmarks/torch_peers.py `train_recipe`: eager PyTorch, default threads;
- keras: benchmarks/keras_peers.py `train_recipe`: `fit`, then `evaluate` (JAX backend).
Each framework initialises its model its own way (flax lecun-normal, torch kaiming-
uniform, Keras glorot-uniform), so accuracies differ by a seed's worth of noise.
With --repeats=N the frameworks take turns N times, the order rotated each time (ours
compiling from scratch every time), and the table reports each framework's median run:
PyTorch's time varies between single runs. Measured results: docs/performance.md.
"""

import os
import shutil
import sys
import tempfile
import time
from unittest import mock

from absl import app
from absl import flags
from absl import logging
import jax

from benchmarks import common
from experiments import cifar_cnn, mnist_cnn
from research.training import inputs
from research.training import loop

FLAGS = flags.FLAGS
flags.DEFINE_list("recipes", ["s2", "s4"], "Recipes: s2, s4.")
flags.DEFINE_list("frameworks", ["ours", "torch", "keras"],
                  "Frameworks; by default ours and the installed peers.")
flags.DEFINE_integer("epochs", 0, "Epochs (0 = the recipe's).")
flags.DEFINE_integer("train_subset", 0, "Train on this many images (0 = all).")
flags.DEFINE_integer("test_subset", 0, "Test on this many images (0 = all).")
flags.DEFINE_integer("seed", 0, "Seed of every framework's initialisation and order.")
flags.DEFINE_integer("repeats", 1, "Runs of each framework per recipe, interleaved with the "
                     "order rotated; the table shows the median wall time (the peers' "
                     "times vary by up to 1.5x from run to run here).")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0 = torch's default).")
flags.DEFINE_string("json_out", "", "Also write the results as JSON to this path.")
flags.DEFINE_bool("warm_cache", False, "Let ours load compiled programs from the persistent "
                  "compilation cache (research/compilation_cache.py), as a repeated run "
                  "does; by default it compiles from scratch, as a first run does.")

RECIPES = {
    "s2": ("S2 MNIST CNN", mnist_cnn.get_config),
    "s4": ("S4 LeNet-5 CIFAR-10", lambda: cifar_cnn.get_config("lenet")),
}
FRAMEWORKS = ("ours", "torch", "keras")


def recipe_config(key: str):
  config = RECIPES[key][1]()
  if FLAGS.epochs:
    config.num_epochs = FLAGS.epochs
  config.train_subset, config.test_subset = FLAGS.train_subset, FLAGS.test_subset
  config.seed = FLAGS.seed
  # The same evaluation work as the peers: the test set once, at the end.
  config.progress, config.eval_every_epochs, config.final_train_eval = False, 0, False
  return config


def run_ours(config, dataset) -> dict:
  if not FLAGS.warm_cache:
    jax.clear_caches()   # a repeat would otherwise reuse this process's compiled programs
  workdir = tempfile.mkdtemp(prefix="bench_e2e_")
  try:
    # train_and_evaluate loads its data through inputs.load_full; hand it the arrays
    # already loaded, so that the wall time excludes loading as for the peers.
    with mock.patch.object(inputs, "load_full", lambda _config: dataset):
      start = time.perf_counter()
      summary = loop.train_and_evaluate(config, os.path.join(workdir, "run"))
      wall = time.perf_counter() - start
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return {"test_accuracy": summary["test_accuracy"], "wall_time_s": wall,
          "train_time_s": summary["train_time_s"]}


def run_framework(name: str, recipe: str, config, dataset) -> dict:
  if name == "ours":
    return run_ours(config, dataset)
  if name == "torch":
    from benchmarks import torch_peers
    return torch_peers.train_recipe(recipe, config, dataset, seed=FLAGS.seed)
  from benchmarks import keras_peers
  return keras_peers.train_recipe(recipe, config, dataset, seed=FLAGS.seed)


def available(frameworks: list[str], explicit: bool) -> list[str]:
  chosen = []
  for name in frameworks:
    if name not in FRAMEWORKS:
      raise app.UsageError(f"unknown framework {name!r}; choose from {FRAMEWORKS}")
    if name == "ours":
      chosen.append(name)
      continue
    try:
      __import__("torch" if name == "torch" else "benchmarks.keras_peers")
      chosen.append(name)
    except ImportError as e:
      if explicit:
        raise app.UsageError(f"--frameworks={name} but it cannot be imported ({e}); "
                             "install the bench extra: pip install -e '.[bench]'") from e
      print(f"note: {name} is not installed ({e}); skipping it.")
  return chosen


def median_run(runs: list[dict]) -> dict:
  """The run with the median wall time (the lower middle one for an even count), with
  every run's wall time beside it."""
  ordered = sorted(runs, key=lambda r: r["wall_time_s"])
  return ordered[(len(ordered) - 1) // 2] | {
      "wall_times_s": [r["wall_time_s"] for r in runs]}


def table(rows: list[dict]) -> str:
  headers = ["recipe", "framework", "epochs", "train images", "wall s", "all runs' wall s",
             "train s", "test acc", "ours faster by"]
  out = []
  for r in rows:
    ours = next((o for o in rows if o["recipe"] == r["recipe"] and o["framework"] == "ours"),
                None)
    speedup = common.ratio(r["wall_time_s"], ours["wall_time_s"]) if ours else None
    out.append([r["label"], r["framework"], str(r["epochs"]), f"{r['train_images']:,}",
                common.fmt(r["wall_time_s"], ".1f"),
                ", ".join(f"{t:.1f}" for t in r["wall_times_s"]),
                common.fmt(r["train_time_s"], ".1f"),
                f"{100 * r['test_accuracy']:.2f}%",
                common.fmt(speedup, ".2f") + ("x" if speedup else "")])
  return common.markdown_table(headers, out)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO
  if not FLAGS.warm_cache:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = ""  # compile included, as in a first run
  unknown = [r for r in FLAGS.recipes if r not in RECIPES]
  if unknown:
    raise app.UsageError(f"unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")
  frameworks = available(FLAGS.frameworks, explicit=FLAGS["frameworks"].present)
  if "torch" in frameworks and FLAGS.torch_threads:
    import torch
    torch.set_num_threads(FLAGS.torch_threads)
  machine = common.machine_description()
  print(common.describe(machine))
  rows, loads = [], {}
  for recipe in FLAGS.recipes:
    label = RECIPES[recipe][0]
    config = recipe_config(recipe)
    start = time.perf_counter()
    dataset = inputs.load_data(config)
    loads[recipe] = time.perf_counter() - start
    print(f"{label}: data loaded in {loads[recipe]:.1f} s ({len(dataset.train.labels):,} "
          f"train, {len(dataset.test.labels):,} test images; not in the wall times)",
          file=sys.stderr, flush=True)
    runs = {name: [] for name in frameworks}
    for repeat in range(FLAGS.repeats):
      for i in range(len(frameworks)):   # the order rotates with the repeat
        name = frameworks[(i + repeat) % len(frameworks)]
        result = run_framework(name, recipe, config, dataset)
        runs[name].append(result)
        print(f"  {name}: {result['wall_time_s']:.1f} s, test accuracy "
              f"{result['test_accuracy']:.2%}", file=sys.stderr, flush=True)
    for name in frameworks:
      rows.append(median_run(runs[name]) | dict(
          recipe=recipe, label=label, framework=name, epochs=config.num_epochs,
          train_images=len(dataset.train.labels), test_images=len(dataset.test.labels)))
  print()
  print(f"End to end, run one after another, {FLAGS.repeats} run(s) each; wall s: model "
        "built to test accuracy, compilation included, data loading excluded (the median "
        "run's; train s and test acc are that run's); train s: the training loop alone "
        "(for ours, from its summary); ours faster by: their wall / our wall.")
  print()
  print(table(rows))
  print()
  print("data loading (shared, excluded): " + ", ".join(
      f"{RECIPES[k][0]} {v:.1f} s" for k, v in loads.items()))
  end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  if end_load is not None:
    print(f"1-min load average at the end: {end_load:.2f}")
  if FLAGS.json_out:
    common.write_json(FLAGS.json_out, {
        "benchmark": "end_to_end", "machine": machine, "end_load_average": end_load,
        "data_load_s": loads, "results": rows})
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
  app.run(main)
