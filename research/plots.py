"""Plots of a run, written beside its metrics: people would rather look than read.

Workdirs may be URLs (research/outputs.py), so files are read and written through
`etils.epath`."""

import json
import os

from etils import epath
import numpy as np


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  path = epath.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pyplot():
  """matplotlib.pyplot without a display: plots are written on servers and in CI."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_png(fig, path: str | os.PathLike) -> None:
  """Through a file object: matplotlib would take a URL for a local file name."""
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=100)


def plot_learning_curves(workdir: str | os.PathLike, title: str = "") -> epath.Path:
  """curves.png: loss and accuracy against epochs, one line per split."""
  plt = pyplot()
  records = read_metrics(workdir)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  # Train points are running averages over each log window, in training mode (dropout,
  # augmentation, label smoothing), so they are not directly comparable to test points.
  labels = {"train": "train (running, training mode)",
            "train_eval": "train (inference mode)", "validation": "validation",
            "test": "test"}
  for split in labels:
    points = [r for r in records if r["split"] == split]
    if not points:
      continue
    epochs = [r["epoch"] for r in points]
    style = "-" if split == "train" else "o-"
    ax_loss.plot(epochs, [r["loss"] for r in points], style, label=labels[split],
                 markersize=3)
    ax_acc.plot(epochs, [100 * r["accuracy"] for r in points], style, label=labels[split],
                markersize=3)
  ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
  ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  return _write_figure(fig, title, epath.Path(workdir) / "curves.png")


def _write_figure(fig, title: str, path: epath.Path) -> epath.Path:
  """Titles, lays out, saves and closes `fig`."""
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  save_png(fig, path)
  pyplot().close(fig)
  return path


def plot_confusion_matrices(workdir: str | os.PathLike, matrices: dict,
                            class_names, title: str = "") -> epath.Path:
  """confusion_matrix.png: one panel per split (true class down, predicted across),
  each cell shaded by its share of the true class's row and, up to 20 classes,
  labelled with its count."""
  plt = pyplot()
  n = len(class_names)
  side = min(12, max(4.5, 0.45 * n + 2))
  fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices), side),
                           squeeze=False)
  for ax, (split, matrix) in zip(axes[0], matrices.items()):
    counts = np.asarray(matrix)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
      for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if rows[i, j] > 0.5 else "black")
    ticks = np.arange(n) if n <= 40 else []
    ax.set_xticks(ticks, [class_names[i] for i in ticks], rotation=45, ha="right",
                  fontsize=8)
    ax.set_yticks(ticks, [class_names[i] for i in ticks], fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"{split} ({counts.sum()} examples)")
  return _write_figure(fig, title, epath.Path(workdir) / "confusion_matrix.png")
