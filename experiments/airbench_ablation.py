"""airbench's own ablation, re-measured: the recipe with one trick turned off at a time.

    python -m experiments.airbench_ablation --workdir DIR [--seeds N] [--parallel N]
    python -m experiments.airbench_ablation --config=experiments/airbench_ablation.py:smoke --workdir DIR

The recipe is experiments/airbench.py's `cpu` variant, the main job (about 20 minutes on
this project's 2-core CPU); each point below overrides the config keys of one trick
(docs/airbench.md lists them), 3 seeds each. results.md gives test accuracy, mean ± std,
one row per point; the row `recipe` has every trick on. The paper's own per-trick
figures were not in the sources this project could read; they belong beside these rows
when the table is run (docs/airbench.md).

Variants:
  default  the `cpu` recipe, 3 seeds.
  smoke    airbench's smoke variant (tiny widths, 512 images), two points, 1 seed.
"""

from experiments import airbench
from research import sweep as sweep_lib

# One trick off per point: its config keys as the recipe would have them without it.
ABLATIONS = {
    "recipe": {},
    "no_dirac_init": {"model_kwargs.dirac": False},
    "bn_scales_trained": {"model_kwargs.bn_scale": True},
    "bn_bias_lr_x1": {"bn_bias_lr_multiplier": 1.0},
    "no_label_smoothing": {"label_smoothing": 0.0},
    "random_flips": {"augment": "crop,flip"},
    "no_translation": {"augment": "alternating_flip"},
    "zero_padding": {"crop_fill": "zero"},
    "no_lookahead": {"weight_averaging": "none"},
    "tta_flip_only": {"tta": "flip"},
    "no_tta": {"tta": "none"},
}


def get_config(variant: str | None = None):
  if variant in (None, "", "default"):
    return airbench.get_config("cpu")
  if variant == "smoke":
    return airbench.get_config("smoke")
  raise ValueError(f"Unknown variant {variant!r} of airbench_ablation; use 'smoke' or none.")


def get_sweep(variant: str | None = None) -> sweep_lib.Sweep:
  names = ("recipe", "no_lookahead") if variant == "smoke" else tuple(ABLATIONS)
  return sweep_lib.Sweep([sweep_lib.Point(ABLATIONS[n], name=n) for n in names],
                         seeds=1 if variant == "smoke" else 3,
                         title="airbench's tricks, one at a time turned off (CIFAR-10)")


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
