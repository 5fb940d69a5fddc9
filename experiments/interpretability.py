"""Do the VGG's attribution maps depend on what the network learned? The sanity
checks of Adebayo et al. (2018) on the CIFAR-10 CNN.

    python -m experiments.interpretability [--workdir DIR] [--seeds N]
    python -m experiments.interpretability --config=experiments/interpretability.py:smoke

The VGG and its recipe (experiments/cifar_cnn.py:vgg, 16-32-64 with BatchNorm,
crop and flip, SGD Nesterov with a one-cycle schedule, weight decay, label smoothing),
trained for 3 epochs instead of 10 (warm-up 0.6 epochs instead of 2), 3 seeds. After
the runs, on 16 test images per run (a sample seeded by split_seed), for the trained
model's predicted class (research/interpret.py):
- the maps of saliency, SmoothGrad (25 samples, noise 15%), Integrated Gradients (64
  steps, black baseline) and Grad-CAM (last conv layer);
- cascading randomisation (Adebayo et al., Sec. 3.1 and Fig. 2): the weight layers are
  re-initialised from the head down, one more at a time, and each map (|attribution|
  summed over channels) is compared with the trained model's by Spearman's rank
  correlation, averaged over the images;
- Integrated Gradients' completeness error: |sum of attributions - (logit(x) -
  logit(baseline))|, relative to the logit difference.

Variants:
  smoke  cifar_cnn's vgg_smoke run (512 images, 1 epoch), 1 seed, 2 images: the whole
         path (just over a minute on a 2-core CPU, about half of it the analysis).

Scale: the epochs and images are cut to what a 2-core CPU shared with other jobs
could do in the hour this study had; on that machine only seed 0 finished (see notes.md).

Results: docs/studies/interpretability/results.md and its figures (cascade.png,
cascade_maps.png, maps.png, filters.png); notes.md there.
"""

import functools

from etils import epath
import numpy as np

from experiments import cifar_cnn
from research import inference
from research import interpret
from research import plots
from research import sweep as sweep_lib
from research import sweep_results

VARIANTS = ("default", "smoke")
NUM_IMAGES = {"default": 16, "smoke": 2}
PUBLISHED = (
    "Adebayo et al. (2018), Sec. 3.1 and Fig. 2 (Inception v3 on ImageNet, cascading "
    "randomisation): the gradient, SmoothGrad and Grad-CAM maps change as the layers are "
    "randomised, their rank correlation with the trained maps falling towards 0; "
    "Integrated Gradients (and gradient x input) still look like the input to the eye, "
    "but their rank correlation falls too. Only Guided BackProp and Guided Grad-CAM, not "
    "implemented here, stay nearly unchanged: they fail the check.")


def get_config(variant: str | None = None):
  variant = variant or "default"
  if variant == "smoke":
    c = cifar_cnn.get_config("vgg_smoke")
  elif variant == "default":
    c = cifar_cnn.get_config("vgg")
    c.num_epochs, c.warmup_epochs = 3, 0.6
  else:
    raise ValueError(f"Unknown variant {variant!r} of interpretability; choose one of "
                     f"{', '.join(VARIANTS)}.")
  c.progress = False
  return c


def get_sweep(variant: str | None = None) -> sweep_lib.Sweep:
  variant = variant or "default"
  get_config(variant)  # rejects an unknown variant
  return sweep_lib.Sweep(
      [sweep_lib.Point({}, "main_job")], seeds=1 if variant == "smoke" else 3,
      title="Sanity checks of the VGG's attribution maps (CIFAR-10 CNN)",
      analysis=functools.partial(analyse, num_images=NUM_IMAGES[variant]))


def analyse(jobs, sweep_dir, num_images: int) -> tuple[str, list[epath.Path]]:
  """The sanity checks of every finished run: a markdown section for results.md and
  the figures (the cascade, the maps of the first run on up to 8 of its images)."""
  sweep_dir = epath.Path(sweep_dir)
  samples, checks = [], []
  for job in jobs:
    restored = inference.restore(job.workdir)
    samples.append(interpret.sample_test_split(restored, num_images).images)
    checks.append(interpret.sanity_checks(restored, samples[-1]))
  written = [sweep_dir / "cascade.png", sweep_dir / "cascade_maps.png"]
  plot_cascade(checks, written[0])
  plot_cascade_maps(checks[0], samples[0][:2], written[1])
  written += interpret.write_figures(str(jobs[0].workdir), min(8, num_images), sweep_dir)
  return markdown(checks, len(jobs)), written


def _mean_over_images(correlations: np.ndarray) -> np.ndarray:
  """(stages, N) -> (stages,): the mean over images whose maps are not constant."""
  return np.array([np.nanmean(row) if np.any(~np.isnan(row)) else np.nan
                   for row in correlations])


def _per_method(checks: list[dict]) -> dict:
  """{method: (runs, stages)} mean rank correlation per run and stage."""
  return {m: np.stack([_mean_over_images(c["correlations"][m]) for c in checks])
          for m in checks[0]["correlations"]}


def markdown(checks: list[dict], runs: int) -> str:
  layers = checks[0]["layers"]
  per_method = _per_method(checks)
  header = ["method", *(f"up to {name}" for name in layers)]
  lines = ["## Sanity checks: cascading randomisation (Adebayo et al. 2018)", "",
           f"Spearman rank correlation between each map of the trained model and of the "
           f"same model with its weight layers re-initialised from the head down to the "
           f"named layer; |attribution| summed over channels, mean over "
           f"{checks[0]['completeness'].size} test images, then mean ± sample std over "
           f"{runs} run(s). 1 would mean the map ignores the weights; near 0, it "
           "depends on them. Grad-CAM maps that are all zero (ReLU of a negative sum) "
           "have no ranking and are left out of the means.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method, values in per_method.items():
    lines.append("| " + " | ".join([interpret.TITLES[method],
                                    *(sweep_results.mean_std_text(values[:, i])
                                      for i in range(len(layers)))]) + " |")
  completeness = np.stack([c["completeness"] for c in checks])
  lines += ["", f"Integrated Gradients' completeness (64 steps, black baseline): "
            f"|sum of attributions - (logit(x) - logit(baseline))| is "
            f"{100 * np.mean(completeness):.2f}% of |logit(x) - logit(baseline)| on "
            f"average, {100 * np.max(completeness):.2f}% at most "
            f"({completeness.size} images).", "",
            f"Published: {PUBLISHED}", "",
            "![cascading randomisation](cascade.png)", "",
            "![maps as the layers are randomised](cascade_maps.png)", "",
            "![maps of the first run](maps.png)", ""]
  return "\n".join(lines)


def plot_cascade(checks: list[dict], path: epath.Path) -> None:
  """Adebayo et al.'s Fig. 2 (right) for our model: rank correlation against how far
  down the weights are re-initialised, one line per method, mean ± std over runs."""
  plt = plots.pyplot()
  layers = checks[0]["layers"]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  positions = np.arange(len(layers))
  for method, values in _per_method(checks).items():
    std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else None
    ax.errorbar(positions, np.nanmean(values, axis=0), yerr=std, fmt="o-", capsize=3,
                label=interpret.TITLES[method])
  ax.axhline(0, color="gray", linewidth=0.8)
  ax.set_xticks(positions, layers)
  ax.set(xlabel="weights re-initialised from the head down to", ylim=(-0.2, 1.05),
         ylabel="rank correlation with the trained map",
         title="Cascading randomisation, CIFAR-10 CNN")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  plots.save_png(fig, path)
  plt.close(fig)


def plot_cascade_maps(check: dict, images: np.ndarray, path: epath.Path) -> None:
  """Adebayo et al.'s Fig. 2 (left): for each of the first images, one row per method,
  the trained map then the maps as the layers are re-initialised."""
  plt = plots.pyplot()
  methods, stages = list(check["maps"][0]), ["trained", *check["layers"]]
  rows = len(images) * len(methods)
  fig, axes = plt.subplots(rows, len(stages) + 1, figsize=(1.4 * (len(stages) + 1), 1.4 * rows),
                           squeeze=False)
  for i, image in enumerate(images):
    for j, method in enumerate(methods):
      row = axes[i * len(methods) + j]
      row[0].imshow(image[..., 0] if image.shape[-1] == 1 else image,
                    cmap="gray" if image.shape[-1] == 1 else None)
      row[0].set_ylabel(interpret.TITLES[method], fontsize=7)
      for ax, maps in zip(row[1:], check["maps"]):
        ax.imshow(maps[method][i], cmap="hot")
  for ax, stage in zip(axes[0, 1:], stages):
    ax.set_title(stage if stage == "trained" else f"to {stage}", fontsize=7)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  plots.save_png(fig, path)
  plt.close(fig)


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
