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
epochs it saves to reach 94% at full width; docs/studies/airbench_ablation/notes.md sets
those figures beside these rows.

Variants:
  default  the paper's recipe at the `cpu` widths, 3 seeds.
  smoke    airbench's smoke variant (tiny widths, 512 images), two points, 1 seed.
"""

import json

import ml_collections

from experiments import airbench
from research import outputs
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
  """results.md's rows of the test-time augmentation ablation."""
  del sweep_dir
  lines = ["## Test-time augmentation, re-evaluated on the recipe's runs", "",
           "The recipe's runs scored again with less test-time augmentation "
           "(`--config.mode=eval --config.tta=...`); the recipe uses `flip_translate`. "
           "Mean ± sample std over the runs.", "",
           "| point | tta | runs | test accuracy (%) |", "|---|---|---|---|"]
  for name, tta in TTA_ABLATIONS.items():
    accuracies = [s["test_accuracy"] for s in re_evaluate(jobs, tta)]
    lines.append(f"| {name} | {tta} | {len(accuracies)} | "
                 f"{sweep_results.mean_std_text(accuracies, scale=100)} |")
  return "\n".join(lines) + "\n", []


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
