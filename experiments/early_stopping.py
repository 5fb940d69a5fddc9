"""Early stopping against training to the end, with and without label noise (MNIST).

    python -m experiments.early_stopping [--workdir DIR] [--seeds N] [--parallel N]
    python -m experiments.early_stopping --config=experiments/early_stopping.py:smoke
    python -m experiments.early_stopping --nosweep [--config.KEY=VALUE ...]   # one run

An MLP 784-512-512-10 (669,706 parameters), big enough to memorise noisy labels, trained
on 5,000 MNIST images with Adam (lr 1e-3, batch 128) for 40 epochs; no weight decay,
dropout or augmentation. Four points x 2 seeds: label_corruption 0 or 0.5 (half of the
training labels redrawn uniformly, so about 45% are wrong) x {train to the end; early
stopping}. Early stopping evaluates a validation split of 5,000 images every epoch,
stops after 5 evaluations without a better validation accuracy, and reports the best
checkpoint (best_metric=validation_accuracy, early_stopping_patience=5,
restore_best=True). The validation split is carved first from the 60,000 training
images (seeded by split_seed); the 5,000 training images are drawn from the other
55,000. eval_train=True logs the train curve every epoch. Only the training labels are
corrupted: the validation labels are clean, which flatters model selection a little,
but for uniform noise it picks the same epoch in expectation (accuracy on noisy labels
is an increasing affine function of accuracy on clean ones).

Variants:
  smoke  noise 0.5, both arms, 1 seed, 512 train / 256 validation / 256 test images,
         2 epochs, patience 1: the real code path in well under a minute.

Results: docs/studies/early_stopping/results.md; what they show, the epochs kept and
sweep times: docs/studies/early_stopping/notes.md.
"""

from research import configs
from research import sweep as sweep_lib

NOISE = (0.0, 0.5)
VARIANTS = ("default", "smoke")


def _default():
  c = configs.base_config()
  c.dataset = "mnist"
  c.normalize = "none"   # pixels in [0, 1], as its results in docs/studies were measured
  c.train_subset = 5000
  c.validation_size = 5000
  c.model = "mlp"
  c.model_kwargs.widths = (512, 512)
  c.model_kwargs.activation = "relu"
  c.optimizer, c.learning_rate = "adam", 1e-3
  c.batch_size, c.num_epochs = 128, 40
  c.eval_train = True
  c.checkpoint_every_epochs = 0
  c.log_every_steps = 1000
  return c


def get_config(variant: str | None = None):
  variant = variant or "default"
  c = _default()
  if variant == "default":
    return c
  if variant == "smoke":
    c.train_subset, c.validation_size, c.test_subset = 512, 256, 256
    c.num_epochs, c.log_every_steps = 2, 1
    return c
  raise ValueError(f"Unknown variant {variant!r} of early_stopping; choose one of "
                   f"{', '.join(VARIANTS)}.")


def _points(noise_levels, patience):
  points = []
  for noise in noise_levels:
    points.append(sweep_lib.Point({"label_corruption": noise}, f"noise={noise}_to_the_end"))
    points.append(sweep_lib.Point(
        {"label_corruption": noise, "best_metric": "validation_accuracy",
         "early_stopping_patience": patience, "restore_best": True},
        f"noise={noise}_early_stopping"))
  return points


def get_sweep(variant: str | None = None) -> sweep_lib.Sweep:
  variant = variant or "default"
  get_config(variant)  # rejects an unknown variant
  if variant == "smoke":
    return sweep_lib.Sweep(_points((0.5,), 1), seeds=1, title="early_stopping smoke")
  return sweep_lib.Sweep(_points(NOISE, 5), seeds=2,
                         title="Early stopping vs. training to the end, MNIST MLP 2x512")


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
