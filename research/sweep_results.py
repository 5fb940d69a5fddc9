"""A sweep's results, gathered from whatever runs have finished:

- results.csv: one row per finished run, its overrides and final metrics;
- results.md: mean ± sample std over seeds (and cross-validation folds) per point, beside
  the published figures, and, when the runs held out a validation split (or folds), the
  point chosen on it with its test accuracy;
- learning_curves.png, test_accuracy.png (or test_error.png) and gap.png.
"""

import csv
import json
import math
import os
from collections.abc import Sequence

from etils import epath
import numpy as np

from research import plots
from research import sweep as sweep_lib

METRICS = ("train_accuracy", "validation_accuracy", "test_accuracy", "generalization_gap",
           "train_loss", "validation_loss", "test_loss", "validation_macro_f1",
           "test_macro_f1", "steps", "epochs", "wall_time_s", "stopped_early")
# (column title, summary key, scale, decimals) of results.md; the validation column only
# when some run has a validation split.
TABLE = (("train acc (%)", "train_accuracy", 100, 2),
         ("val acc (%)", "validation_accuracy", 100, 2),
         ("test acc (%)", "test_accuracy", 100, 2),
         ("gap (points)", "generalization_gap", 100, 2), ("steps", "steps", 1, 0),
         ("wall (s)", "wall_time_s", 1, 0))
CHOOSE_ON = "validation_accuracy"


def rows(jobs: Sequence["sweep_lib.Job"]) -> list[dict]:
  """One dict per finished run (summary.json present)."""
  out = []
  for job in jobs:
    summary = job.summary()
    if summary is None:
      continue
    row = {"point": job.point.label, "seed": job.seed}
    if job.fold is not None:
      row["fold"] = job.fold
    row["workdir"] = str(job.workdir)
    row.update({k: sweep_lib.format_value(v) for k, v in job.point.overrides.items()})
    row.update({k: summary.get(k) for k in METRICS})
    row["train_metrics"] = summary.get("train_metrics", "inference mode")
    out.append(row)
  return out


def write_csv(table: list[dict], path: epath.Path) -> None:
  columns = list(dict.fromkeys(k for row in table for k in row))
  with epath.Path(path).open("w") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(table)


def per_point(sweep: "sweep_lib.Sweep", table: list[dict]) -> list[dict]:
  """For each point: how many runs (seeds x folds) finished, and mean and sample std of
  each metric over them."""
  out = []
  for point in sweep.points:
    mine = [r for r in table if r["point"] == point.label]
    stats = {"point": point, "n": len(mine)}
    for _, key, _, _ in TABLE:
      values = np.array([r[key] for r in mine if r.get(key) is not None], float)
      stats[key] = (values.mean() if len(values) else math.nan,
                    values.std(ddof=1) if len(values) > 1 else math.nan)
    out.append(stats)
  return out


def _cell(mean: float, std: float, scale: float, decimals: int) -> str:
  if math.isnan(mean):
    return "–"
  text = f"{mean * scale:.{decimals}f}"
  return text if math.isnan(std) else f"{text} ± {std * scale:.{decimals}f}"


def mean_std_text(values, scale: float = 1.0, decimals: int = 2) -> str:
  """'mean ± sample std' of the values that are not NaN, times `scale`, as results.md
  writes it: the mean alone for one value, '–' for none."""
  values = np.asarray(values, float)
  values = values[~np.isnan(values)]
  if not len(values):
    return "–"
  return _cell(values.mean(), values.std(ddof=1) if len(values) > 1 else math.nan, scale,
               decimals)


def write_markdown(sweep: "sweep_lib.Sweep", stats: list[dict], num_seeds: int,
                   path: epath.Path, cv_folds: int = 0,
                   train_metrics: Sequence[str] = ("inference mode",)) -> None:
  """results.md's table; `train_metrics`: how the runs measured their train accuracy."""
  published = [k for k in ("train_accuracy", "test_accuracy")
               if any(k in s["point"].published for s in stats)]
  chosen = chosen_on_validation(stats)
  columns = [c for c in TABLE if c[1] != CHOOSE_ON or chosen]
  header = ["point", "runs" if cv_folds else "seeds", *(t for t, _, _, _ in columns),
            *(f"published {k.split('_')[0]} (%)" for k in published)]
  asked = f"{num_seeds} seed(s) x {cv_folds} folds" if cv_folds else num_seeds
  lines = [f"# {sweep.title or 'Sweep results'}", "",
           f"Mean ± sample standard deviation over the finished {header[1]} (of {asked} "
           "asked). " + (
               "Train accuracy is measured in inference mode on the training split as "
               "trained on (corrupted labels included)"
               if set(train_metrics) <= {"inference mode"} else
               f"Train accuracy is the {' / '.join(sorted(set(train_metrics)))}, as the "
               "runs' summaries say (config.final_train_eval=False)")
           + "; gap = train - test accuracy.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for s in stats:
    cells = [s["point"].label, str(s["n"])]
    cells += [_cell(*s[key], scale, dec) for _, key, scale, dec in columns]
    cells += [f"{100 * s['point'].published[k]:.2f}" if k in s["point"].published else "–"
              for k in published]
    lines.append("| " + " | ".join(cells) + " |")
  if chosen:
    lines += ["", f"Chosen on validation accuracy: **{chosen['point'].label}** (validation "
              f"{_cell(*chosen[CHOOSE_ON], 100, 2)}%). Its test accuracy, "
              f"{_cell(*chosen['test_accuracy'], 100, 2)}%, is the one to report for this "
              "sweep; choosing on the test column would overstate it."]
  if sweep.published_source:
    lines += ["", f"Published figures: {sweep.published_source}."]
  path.write_text("\n".join(lines) + "\n")


def chosen_on_validation(stats: list[dict]) -> dict | None:
  """The point with the best mean validation accuracy; None if no run held one out."""
  measured = [s for s in stats if not math.isnan(s[CHOOSE_ON][0])]
  return max(measured, key=lambda s: s[CHOOSE_ON][0]) if measured else None


def x_value(point: "sweep_lib.Point", key: str) -> float:
  value = point.overrides[key]
  return float(value[0] if isinstance(value, (tuple, list)) else value)


def _mean_curves(jobs: Sequence["sweep_lib.Job"], splits: Sequence[str]) -> dict:
  """{split: (epochs, accuracy %)}, averaged over the seeds that logged each epoch. A
  split that a run did not log falls back on its running train records."""
  by_epoch = {split: {} for split in splits}
  for job in jobs:
    if not (job.workdir / "metrics.jsonl").exists():
      continue
    records = plots.read_metrics(job.workdir)
    logged = {r["split"] for r in records}
    for split in splits:
      chosen = split if split in logged else "train"
      for r in records:
        if r["split"] == chosen:
          by_epoch[split].setdefault(round(r["epoch"], 6), []).append(100 * r["accuracy"])
  return {split: (sorted(points), [float(np.mean(points[e])) for e in sorted(points)])
          for split, points in by_epoch.items()}


def plot_learning_curves(sweep, jobs, path: epath.Path) -> None:
  """Train (left) and test (right) accuracy against epoch, one line per point."""
  plt = plots.pyplot()
  fig, (ax_train, ax_test) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  n = len(sweep.points)  # distinct hues while they last, then a sequential map
  colors = plt.cm.tab10(np.arange(n)) if n <= 10 else plt.cm.viridis(np.linspace(0, 0.9, n))
  for point, color in zip(sweep.points, colors):
    curves = _mean_curves([j for j in jobs if j.point.label == point.label],
                          ("train_eval", "test"))
    for ax, split in ((ax_train, "train_eval"), (ax_test, "test")):
      epochs, acc = curves[split]
      if epochs:
        ax.plot(epochs, acc, "-", color=color, label=point.label, linewidth=1.5)
  ax_train.set(xlabel="epoch", ylabel="accuracy (%)",
               title="train (inference mode; running average if not logged)")
  ax_test.set(xlabel="epoch", title="test")
  for ax in (ax_train, ax_test):
    ax.grid(alpha=0.3)
  ax_test.legend(fontsize=7, loc="best")
  fig.suptitle(f"{sweep.title}: mean over seeds" if sweep.title else "mean over seeds")
  fig.tight_layout()
  plots.save_png(fig, path)
  plt.close(fig)


def plot_summary(sweep, stats: list[dict], key: str, path: epath.Path,
                 ylabel: str, error: bool = False) -> None:
  """One metric per point with sample-std error bars: a curve against `sweep.x` if it
  is set, else bars. The curve is one line per `Point.series`, or, without series, the
  test metric with the train metric beside it; points that do not set `sweep.x` (e.g.
  a pre-training run) are left out of it. Published figures, where given, are drawn as
  crosses."""
  plt = plots.pyplot()
  curves = bool(sweep.x)
  if curves:
    stats = [s for s in stats if sweep.x in s["point"].overrides]
  fig, ax = plt.subplots(figsize=(7, 4.5) if curves else (max(6, 0.9 * len(stats) + 2), 4.5))
  to_y = (lambda v: 100 - 100 * v) if error else (lambda v: 100 * v)

  def mean_std(metric):
    means = np.array([to_y(s[metric][0]) for s in stats])
    stds = np.array([100 * s[metric][1] for s in stats])
    return means, np.where(np.isnan(stds), 0, stds)

  means, stds = mean_std(key)
  published = [(i, to_y(s["point"].published[key])) for i, s in enumerate(stats)
               if key in s["point"].published]
  if curves:
    positions = np.array([x_value(s["point"], sweep.x) for s in stats])
    series = list(dict.fromkeys(s["point"].series for s in stats))
    for name in series:
      mine = [i for i, s in enumerate(stats) if s["point"].series == name]
      order = np.array(mine)[np.argsort(positions[mine])]
      ax.errorbar(positions[order], means[order], yerr=stds[order], fmt="o-", capsize=3,
                  label=name or key.split("_")[0])
    if key == "test_accuracy" and series == [""]:
      order = np.argsort(positions)
      train_means, train_stds = mean_std("train_accuracy")
      ax.errorbar(positions[order], train_means[order], yerr=train_stds[order], fmt="s--",
                  capsize=3, color="tab:gray", label="train")
    ax.set_xlabel(sweep.x_label or sweep.x)
    if sweep.x_log:
      ax.set_xscale("log")
  else:
    positions = np.arange(len(stats))
    ax.bar(positions, means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8,
           label="this codebase")
    ax.set_xticks(positions, [s["point"].label for s in stats], rotation=30, ha="right",
                  fontsize=8)
  if published:
    ax.plot([positions[i] for i, _ in published], [v for _, v in published], "x",
            color="tab:red", markersize=9, mew=2, label="published")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(sweep.title)
  fig.tight_layout()
  plots.save_png(fig, path)
  plt.close(fig)


def aggregate(sweep: "sweep_lib.Sweep", jobs: Sequence["sweep_lib.Job"],
              sweep_dir: str | os.PathLike, num_seeds: int) -> list[epath.Path]:
  """Writes the results files of whatever has finished; returns their paths."""
  sweep_dir = epath.Path(sweep_dir)
  table = rows(jobs)
  stats = per_point(sweep, table)
  written = [sweep_dir / "results.csv", sweep_dir / "results.md"]
  write_csv(table, written[0])
  folds = {job.fold for job in jobs if job.fold is not None}
  write_markdown(sweep, stats, num_seeds, written[1], cv_folds=len(folds),
                 train_metrics=[r["train_metrics"] for r in table])
  if not table:
    return written
  if sweep.analysis:
    markdown, paths = sweep.analysis([j for j in jobs if j.summary() is not None], sweep_dir)
    written[1].write_text(written[1].read_text() + "\n" + markdown)
    written += paths
  test_name = "test_error" if sweep.plot_error else "test_accuracy"
  figures = {"learning_curves.png": None,
             f"{test_name}.png": ("test_accuracy",
                                  ("" if sweep.x else "test ")  # curves show train too
                                  + ("error (%)" if sweep.plot_error else "accuracy (%)"),
                                  sweep.plot_error),
             "gap.png": ("generalization_gap", "train - test accuracy (points)", False)}
  for name, spec in figures.items():
    path = sweep_dir / name
    if spec is None:
      plot_learning_curves(sweep, jobs, path)
    else:
      plot_summary(sweep, stats, spec[0], path, spec[1], spec[2])
    written.append(path)
  return written


def write_plan(sweep: "sweep_lib.Sweep", jobs: Sequence["sweep_lib.Job"],
               sweep_dir: str | os.PathLike) -> None:
  """sweep.json: the points, seeds and commands, saved beside the results."""
  plan = {"title": sweep.title, "x": sweep.x, "published_source": sweep.published_source,
          "points": [{"name": p.label, "overrides": {k: sweep_lib.format_value(v)
                                                    for k, v in p.overrides.items()},
                      "published": dict(p.published)} for p in sweep.points],
          "runs": [{"point": j.point.label, "seed": j.seed, "workdir": str(j.workdir),
                    "command": j.argv} for j in jobs]}
  path = epath.Path(sweep_dir) / "sweep.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(plan, indent=2) + "\n")
