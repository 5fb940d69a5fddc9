"""airbench's own ablation, re-measured: the recipe with one trick turned off at a time.

    python -m experiments.airbench_ablation --workdir DIR [--seeds N] [--parallel N]
    python -m experiments.airbench_ablation --config=experiments/airbench_ablation.py:smoke --workdir DIR

The recipe is the paper's at experiments/airbench.py's `cpu` widths (about 20 minutes on
this project's 2-core CPU): the main job with BatchNorm scales frozen, as the paper has
them, so that its point `bn_scales_trained` is the main job, as it was when the study
began: with the whitening bias trained throughout (whiten_bias_epochs=0; since 2026-12-05
the recipe freezes it after 3 epochs, for faster steps: docs/airbench.md). Each point below
overrides the config keys of one trick (docs/airbench.md lists them), 3 seeds each.
results.md gives test accuracy, mean ± std, one row per point; the row `recipe` has
every trick on. Test-time augmentation changes no weight, so its two rows train nothing:
they re-evaluate the recipe's runs with less of it (`--config.mode=eval
--config.tta=...`), which scores exactly as a run trained with that `tta` would
(tests/test_airbench.py), and saves 2 runs in 12. The paper measures each trick by the
epochs it saves to reach 94% at full width; results.md's last table sets those figures
beside the accuracy each trick is worth here, and points_lost.png draws that.

Variants:
  default  the paper's recipe at the `cpu` widths, 3 seeds.
  smoke    airbench's smoke variant (tiny widths, 512 images), two points, 1 seed.
"""

import json

from etils import epath
import ml_collections
import numpy as np

from experiments import airbench
from research import outputs
from research import plots
from research import sweep as sweep_lib
from research import sweep_results
from research.training import loop

# One trick off per point: its config keys as the recipe would have them without it.
ABLATIONS = {
    "recipe": {},
    "no_whitening": {"model_kwargs.whiten": False},
    "no_dirac_init": {"model_kwargs.dirac": False},
    "bn_scales_trained": {"model_kwargs.bn_scale": True},
    "bn_bias_lr_x1": {"bn_bias_lr_multiplier": 1.0},
    "no_label_smoothing": {"label_smoothing": 0.0},
    "random_flips": {"augment": "crop,flip"},
    "no_translation": {"augment": "alternating_flip"},
    "zero_padding": {"crop_fill": "zero"},
    "no_lookahead": {"weight_averaging": "none"},
}
# The rows that re-evaluate the recipe's runs: their `tta`.
TTA_ABLATIONS = {"tta_flip_only": "flip", "no_tta": "none"}

# The paper's figures (Jordan 2024, arXiv 2404.00498; airbench94 at widths 64-256-256 on an
# A100): the epochs it needs to reach 94% mean test accuracy with the point's trick
# removed, 9.9 with every trick (the data of its "speedup by feature" figure, in
# KellerJordan/cifar10-zoo, airbench/ablations/make_figures.py) ...
PAPER_EPOCHS_TO_94 = {"recipe": 9.9, "no_whitening": 22, "no_dirac_init": 12.7,
                      "bn_bias_lr_x1": 14.2, "no_lookahead": 10.7, "tta_flip_only": 11.2,
                      "random_flips": 10.8}
# ... and the test accuracy it loses at a fixed budget, in points, where it gives one:
# Table 1 (alternating flips 94.01%, random 93.92%), Table 4 (with TTA 94.01%, none 93.25%).
PAPER_POINTS_LOST = {"random_flips": 0.09, "no_tta": 0.76}


def get_config(variant: str | None = None):
  if variant in (None, "", "default"):
    c = airbench.get_config("cpu")
    c.model_kwargs.bn_scale = False      # the paper's recipe; the main job trains them
    c.whiten_bias_epochs = 0             # as the study's runs were made
    return c
  if variant == "smoke":
    return airbench.get_config("smoke")
  raise ValueError(f"Unknown variant {variant!r} of airbench_ablation; use 'smoke' or none.")


def get_sweep(variant: str | None = None) -> sweep_lib.Sweep:
  names = ("recipe", "no_lookahead") if variant == "smoke" else tuple(ABLATIONS)
  return sweep_lib.Sweep([sweep_lib.Point(ABLATIONS[n], name=n) for n in names],
                         seeds=1 if variant == "smoke" else 3,
                         title="airbench's tricks, one at a time turned off (CIFAR-10)",
                         analysis=analyse)


def re_evaluate(jobs, tta: str) -> list[dict]:
  """The test metrics of each finished run of the point `recipe`, with `tta` instead.

  Each run keeps its scores in tta_TTA.json, so that the table can be gathered again
  (`--aggregate-only`) from runs whose checkpoints are gone, as when the sweep's runs
  were done on several machines."""
  summaries = []
  for job in jobs:
    if job.point.label != "recipe":
      continue
    saved = job.workdir / f"tta_{tta}.json"
    if not saved.exists():
      config = ml_collections.ConfigDict(job.config.to_dict())
      config.mode, config.tta, config.final_train_eval = "eval", tta, False
      summary = loop.train_and_evaluate(config, str(job.workdir))
      outputs.RunDir(job.workdir).write_json(saved.name, {
          "tta": tta, **{k: summary[k] for k in ("checkpoint_step", "test_accuracy",
                                                  "test_loss")}})
    summaries.append(json.loads(saved.read_text()))
  return summaries


def analyse(jobs, sweep_dir) -> tuple[str, list]:
  """results.md's last two tables: the test-time augmentation rows, and every row's
  accuracy lost beside the paper's figures; and points_lost.png, that table drawn."""
  accuracies = {name: [] for name in ABLATIONS}
  for job in jobs:    # each summary.json read once
    accuracies[job.point.label].append(job.summary()["test_accuracy"])
  for name, tta in TTA_ABLATIONS.items():
    accuracies[name] = [s["test_accuracy"] for s in re_evaluate(jobs, tta)]
  figure = epath.Path(sweep_dir) / "points_lost.png"
  plot_points_lost(accuracies, figure)
  markdown = (tta_table(accuracies) + "\n" + paper_table(accuracies)
              + f"\n![points lost per trick]({figure.name})\n")
  return markdown, [figure]


def tta_table(accuracies: dict[str, list[float]]) -> str:
  lines = ["## Test-time augmentation, re-evaluated on the recipe's runs", "",
           "The recipe's runs scored again with less test-time augmentation "
           "(`--config.mode=eval --config.tta=...`); the recipe uses `flip_translate`. "
           "Mean ± sample std over the runs.", "",
           "| point | tta | runs | test accuracy (%) |", "|---|---|---|---|"]
  for name, tta in TTA_ABLATIONS.items():
    lines.append(f"| {name} | {tta} | {len(accuracies[name])} | "
                 f"{sweep_results.mean_std_text(accuracies[name], scale=100)} |")
  return "\n".join(lines) + "\n"


def points_lost(recipe: list[float], point: list[float],
                paired: bool) -> tuple[float, float]:
  """The recipe's mean test accuracy minus the point's, in points, and the standard
  error of that difference (nan unless both have 2 runs or more): of the runs'
  differences when they are `paired` (the same runs, scored two ways), else of two
  independent means."""
  lost = 100 * (np.mean(recipe) - np.mean(point))
  if min(len(recipe), len(point)) < 2:
    return lost, float("nan")
  if paired:
    variance = np.var(np.subtract(recipe, point), ddof=1) / len(point)
  else:
    variance = np.var(recipe, ddof=1) / len(recipe) + np.var(point, ddof=1) / len(point)
  return lost, 100 * float(np.sqrt(variance))


def points_lost_per_row(accuracies: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
  """`points_lost` of every row with runs but the recipe, when the recipe has runs."""
  if not accuracies["recipe"]:
    return {}
  return {name: points_lost(accuracies["recipe"], mine, paired=name in TTA_ABLATIONS)
          for name, mine in accuracies.items() if mine and name != "recipe"}


def lost_text(lost: float, error: float) -> str:
  return f"{lost:+.2f}" if np.isnan(error) else f"{lost:+.2f} ± {error:.2f}"


def paper_table(accuracies: dict[str, list[float]]) -> str:
  lines = ["## Beside the paper's figures", "",
           "Points lost: the recipe's mean test accuracy minus the row's, ± the standard "
           "error of that difference (negative: the row scores higher; the TTA rows "
           "re-score the recipe's own runs, so theirs is of the runs' differences). The "
           "paper measures airbench94 (widths 64-256-256, an A100) by the epochs it "
           "needs to reach 94% with the trick removed, 9.9 with every trick, and gives "
           "the points lost at a fixed budget for two tricks; – where it gives no "
           "figure.", "",
           "| point | runs | points lost here | paper: epochs to 94% | paper: points lost |",
           "|---|---|---|---|---|"]
  lost_here = points_lost_per_row(accuracies)
  for name, mine in accuracies.items():
    if not mine:
      continue
    epochs = PAPER_EPOCHS_TO_94.get(name)
    lost = PAPER_POINTS_LOST.get(name)
    here = ("reference" if name == "recipe" else "–" if name not in lost_here else
            lost_text(*lost_here[name]))
    lines.append(f"| {name} | {len(mine)} | {here} | "
                 f"{'–' if epochs is None else epochs} | "
                 f"{'–' if lost is None else f'{lost:.2f}'} |")
  return "\n".join(lines) + "\n"


def plot_points_lost(accuracies: dict[str, list[float]], path: epath.Path) -> None:
  """The paper table drawn: each row's points lost with bars of ± 2 standard errors,
  where a bar clear of zero is a cost (right) or a gain (left) beyond the seeds' noise;
  the paper's points lost at a fixed budget as crosses."""
  plt = plots.pyplot()
  rows = points_lost_per_row(accuracies)
  names = list(rows)[::-1]     # the table's order, top to bottom
  lost = np.array([rows[n][0] for n in names])
  errors = np.array([2 * rows[n][1] for n in names])
  fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.5))
  ax.axvline(0, color="tab:gray", lw=1)
  ax.errorbar(lost, np.arange(len(names)), xerr=np.nan_to_num(errors), fmt="o",
              capsize=3, label="here, ± 2 standard errors")
  published = [(i, PAPER_POINTS_LOST[n]) for i, n in enumerate(names)
               if n in PAPER_POINTS_LOST]
  if published:
    ax.plot([v for _, v in published], [i for i, _ in published], "x", color="tab:red",
            markersize=9, mew=2, label="paper, at a fixed budget")
  ax.set_yticks(np.arange(len(names)), names, fontsize=8)
  ax.set_xlabel("test accuracy points lost without the trick (the recipe's mean minus "
                "the row's)")
  ax.grid(alpha=0.3, axis="x")
  ax.legend(fontsize=8)
  ax.set_title("airbench's tricks: the test accuracy each is worth")
  fig.tight_layout()
  plots.save_png(fig, path)
  plt.close(fig)


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
