"""Making the VGG CNN small: magnitude pruning, int8 quantisation, distillation.

    python -m experiments.compression [--workdir DIR] [--seeds N]
    python -m experiments.compression --config=experiments/compression.py:smoke

The teacher is the VGG and its recipe, experiments/cifar_cnn.py:vgg (VGG
16-32-64 with BatchNorm, 72,954 parameters, on the 50,000 CIFAR-10 training images, 10
epochs), trained once (TEACHER); every other point starts from its
workdir, {sweep_dir}/teacher/seed_0, and runs once the teacher has finished:
- one-shot pruning: the global magnitude mask at sparsity 0, 50, 80, 90 and 95% of the
  conv and dense kernel weights (biases and BatchNorm kept), evaluated without training
  (num_epochs=0);
- pruning with fine-tuning: the masks at 50-95%, held at zero, then FINE_TUNE: one epoch
  on 10,000 training images (78 steps) at a cosine learning rate from 0.01 (the teacher
  peaked at 0.2);
- int8: each kernel quantised per output channel and evaluated dequantised (no training);
- student and distilled student, 3 seeds: the teacher's architecture at half width
  (8-16-32, 18,626 parameters, about a quarter of the teacher's multiply-adds) with the
  teacher's recipe for STUDENT_EPOCHS epochs on 10,000 training images, alone or
  distilled from the teacher at temperature 4 and alpha 0.9 (Hinton et al. 2015).
  LeNet-5 is not the student because here it has 62,006 parameters, 85% of the
  teacher's: distilling into it would not make the model smaller.

The sweep takes about 26 minutes, 2 runs at a time, on an otherwise idle 2-core CPU.
The fine-tuning and the students see 10,000 of the 50,000 training images, for few
epochs. Their accuracies are below what longer training gives; the comparisons
(one-shot against fine-tuned, student alone against distilled) are within the same
budget.

Variants:
  smoke  the same points at sparsity 90% only, 1 seed, without the student alone (the
         teacher's code path), on cifar_cnn's vgg_smoke config with a VGG of widths 8-16,
         one conv per block (256 train and 256 test images, 1 epoch): 5 runs, 187 s
         on the loaded machine of notes.md (not timed idle).

Results: docs/studies/compression/results.md (the study's table under the sweep's) and
sparsity.png; what they show and the sweep time: docs/studies/compression/notes.md.
"""

import math

from etils import epath
import numpy as np

from experiments import cifar_cnn
from research import plots
from research import sweep as sweep_lib

SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
FINE_TUNED_SPARSITIES = SPARSITIES[1:]
TEACHER = {}   # the VGG's recipe as it is
TEACHER_DIR = "{sweep_dir}/teacher/seed_0"
FINE_TUNE = {"num_epochs": 1, "train_subset": 10000, "learning_rate": 0.01,
             "lr_schedule": "cosine", "warmup_epochs": 0.0}
STUDENT_EPOCHS = 6
DISTILL = {"distill_from": TEACHER_DIR, "distill_temperature": 4.0, "distill_alpha": 0.9}
VARIANTS = ("default", "smoke")
# Published results beside ours, as context: other models and data sets.
CONTEXT = {
    "teacher": "",
    "student": "",
    "distilled_student": "Hinton et al. 2015, MNIST: a small net made 146 test errors "
                         "alone, 74 distilled (teacher 67)",
    "finetuned": "Han et al. 2015: AlexNet 89%, VGG-16 92.5% of weights pruned with no "
                 "top-1 loss after retraining (ImageNet)",
    "oneshot": "Han et al. 2015, Fig. 5: pruned without retraining, AlexNet loses "
               "accuracy far sooner than with it (ImageNet)",
    "int8": "Krishnamoorthi 2018; Jacob et al. 2018: post-training int8 per-channel "
            "weights within about 1 point of float32 (ImageNet CNNs)",
}


def get_config(variant: str | None = None):
  variant = variant or "default"
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r} of compression; choose one of "
                     f"{', '.join(VARIANTS)}.")
  c = cifar_cnn.get_config("vgg_smoke" if variant == "smoke" else "vgg")
  if variant == "smoke":   # a smaller CNN, which compiles faster
    c.model_kwargs.widths, c.model_kwargs.convs_per_block = (8, 16), 1
    c.train_subset, c.checkpoint_every_epochs = 256, 0
  return c


def _from_teacher(**overrides) -> dict:
  return {"init_from": TEACHER_DIR, **overrides}


def _points(teacher: dict, sparsities, fine_tuned, fine_tune: dict,
            student: dict) -> list[sweep_lib.Point]:
  after = {"after": ("teacher",), "seeds": 1}
  evaluate_only = {"num_epochs": 0, "final_train_eval": False}
  # The longest runs that wait for the teacher first, so that --parallel N keeps busy.
  points = [sweep_lib.Point(teacher, "teacher", seeds=1),
            sweep_lib.Point({**student, **DISTILL}, "distilled_student", after=("teacher",))]
  points += [sweep_lib.Point(_from_teacher(prune_sparsity=s, **evaluate_only),
                             f"oneshot_sparsity={s}", **after) for s in sparsities]
  points.append(sweep_lib.Point(_from_teacher(quantize="int8", **evaluate_only), "int8",
                                **after))
  points += [sweep_lib.Point(_from_teacher(prune_sparsity=s, **fine_tune),
                             f"finetuned_sparsity={s}", **after) for s in fine_tuned]
  points.append(sweep_lib.Point(student, "student"))
  return points


def get_sweep(variant: str | None = None) -> sweep_lib.Sweep:
  variant = variant or "default"
  get_config(variant)   # rejects an unknown variant
  if variant == "smoke":
    points = _points({}, (0.9,), (0.9,), {"num_epochs": 1, "learning_rate": 0.01},
                     {"model_kwargs.width_multiplier": 0.5})[:-1]   # student: as teacher
    return sweep_lib.Sweep(points, seeds=1, title="compression smoke", analysis=report)
  student = {"model_kwargs.width_multiplier": 0.5, "train_subset": 10000,
             "num_epochs": STUDENT_EPOCHS}
  return sweep_lib.Sweep(_points(TEACHER, SPARSITIES, FINE_TUNED_SPARSITIES, FINE_TUNE,
                                 student),
                         seeds=3, analysis=report,
                         title="Compressing the VGG CIFAR-10 CNN")


def _row(label: str, summaries: list[dict]) -> dict:
  accuracy = np.array([s["test_accuracy"] for s in summaries], float)
  first = summaries[0]
  return {"point": label, "runs": len(summaries), "params": first["num_params"],
          "nonzero": first["nonzero_params"], "bytes": first["model_bytes"],
          "sparse_bytes": first["sparse_model_bytes"], "mean": accuracy.mean(),
          "std": accuracy.std(ddof=1) if len(accuracy) > 1 else math.nan}


# Rows of the table: the models to compare side by side first, int8 last.
_TABLE_ORDER = {"teacher": 0, "student": 1, "distilled_student": 2, "int8": 4}


def _context(label: str) -> str:
  return CONTEXT.get(label, CONTEXT.get(label.split("_")[0], ""))


def table(rows: list[dict], title: str) -> str:
  """One row per point with its parameters, bytes and test accuracy, in markdown."""
  lines = [f"## {title}", "",
           "Test accuracy on CIFAR-10's test images: mean ± sample std over the "
           "finished runs. Parameters: nonzero / all. Bytes: what inference needs, "
           "BatchNorm statistics included, with kernels dense (float32, or int8 plus a "
           "float32 scale per output channel) and, for pruned models, as a bitmap of the "
           "nonzero weights plus their float32 values; everything else float32. "
           "Published results are context: other models and data sets.", "",
           "| point | runs | parameters | bytes | bytes, sparse | test acc (%) | "
           "published (context) |", "|---|---|---|---|---|---|---|"]
  previous = ""
  for r in rows:
    context = _context(r["point"])
    context, previous = ("〃" if context and context == previous else context), context
    accuracy = f"{100 * r['mean']:.2f}" + ("" if math.isnan(r["std"])
                                            else f" ± {100 * r['std']:.2f}")
    sparse = f"{r['sparse_bytes']:,}" if r["sparse_bytes"] < r["bytes"] else "–"
    lines.append(f"| {r['point']} | {r['runs']} | {r['nonzero']:,} / {r['params']:,} | "
                 f"{r['bytes']:,} | {sparse} | {accuracy} | {context} |")
  return "\n".join(lines) + "\n"


def plot_sparsity(rows: list[dict], path: epath.Path) -> None:
  """Test accuracy against sparsity, one-shot against fine-tuned, the teacher as a line."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for arm, style in (("oneshot", "o-"), ("finetuned", "s-")):
    mine = [r for r in rows if r["point"].startswith(f"{arm}_sparsity=")]
    x = [100 * float(r["point"].split("=")[1]) for r in mine]
    ax.plot(x, [100 * r["mean"] for r in mine], style,
            label={"oneshot": "one-shot", "finetuned": "pruned, then fine-tuned"}[arm])
  for r in rows:
    if r["point"] == "teacher":
      ax.axhline(100 * r["mean"], color="tab:gray", linestyle="--", label="teacher")
  ax.set(xlabel="kernel weights pruned (%)", ylabel="test accuracy (%)",
         title="Global magnitude pruning of the VGG CNN")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  plots.save_png(fig, path)
  plt.close(fig)


def report(jobs, sweep_dir) -> tuple[str, list[epath.Path]]:
  """The study's table (for results.md, under the sweep's own) and its sparsity figure."""
  sweep_dir = epath.Path(sweep_dir)
  by_point = {}
  for job in jobs:
    summary = job.summary()
    if summary is not None:
      by_point.setdefault(job.point.label, []).append(summary)
  # Stable: the pruned rows keep the sweep's order.
  labels = sorted(by_point, key=lambda label: _TABLE_ORDER.get(label, 3))
  rows = [_row(label, by_point[label]) for label in labels]
  written = []
  if any(r["point"].startswith("oneshot_") for r in rows):
    written.append(sweep_dir / "sparsity.png")
    plot_sparsity(rows, written[-1])
  return table(rows, "Compressing the VGG CIFAR-10 CNN"), written


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
