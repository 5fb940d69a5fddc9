"""Zhang et al. 2017, Figure 1, in shape: networks fit random labels and random inputs.

    python -m experiments.random_labels [--workdir DIR] [--seeds N] [--parallel N]
    python -m experiments.random_labels --config=experiments/random_labels.py:VARIANT
    python -m experiments.random_labels --nosweep [--config.KEY=VALUE ...]   # one run

Default, Fig. 1(a): Zhang's MLP 1x512 (3072-512-10, ReLU; 1,578,506 parameters on the
32x32 images) on a seeded subset of 5,000 CIFAR-10 training images, tested on 2,000
test images, with Zhang's recipe: SGD momentum 0.9, lr 0.01 x 0.95 per epoch, batch
128, no weight decay, dropout or augmentation, 40 epochs. Five points x 2 seeds: true
labels; random labels (label_corruption=1.0); shuffled pixels (one permutation for all
images); random pixels (a permutation per image); Gaussian inputs (per-channel mean and
std of the training images). The input corruptions apply to the test images too.
eval_train=True: the train curves are inference-mode accuracy on the 5,000 training
images with the labels they were trained on.

Variants:
  corruption  Fig. 1(c): label_corruption 0, 0.2, ..., 1.0 (that fraction of labels
              redrawn uniformly), the same MLP; plots test (and train) error against it.
  cnn         Fig. 1(a) with the small S2 CNN (Conv32-pool-Conv64-pool-Dense128;
              315,722 parameters) on 2,000 images, lr 0.03, 24 epochs, evaluated every
              2 epochs, 1 seed: convolutions cost about 10x the MLP's time per image here.
  smoke       true and random labels, 1 seed, 256 train / 256 test images, 1 epoch.

Deviations from Zhang, for a CPU: 5,000 (MLP) or 2,000 (CNN) training images instead
of 50,000, and 2,000 test images; inputs normalised per channel, not centre-cropped to
28x28 nor whitened per image; the CNN's lr is 0.03, not 0.01, because at 0.01 it fit
only 93% of 2,000 random labels in 40 epochs (the per-epoch decay ends sooner on a
subset: 15 steps an epoch). The MLP keeps Zhang's optimiser recipe and reaches ~100%.
The sweeps are deterministic: corruption's points 0.0 and 1.0 reproduce the default
sweep's true and random labels to the last digit.

Measured (2-core AMD EPYC CPU, jax 0.10.2, the JPEG copy of CIFAR-10 in
../shared/datasets; mean +- std over seeds 0 and 1; the machine was shared with other
jobs (load average 6 to 8 on 2 cores), so wall times are pessimistic):

  default, MLP 1x512             train (%)     test (%)     epochs to 90 / 99% train
  true labels                    99.84 +- 0.03  42.75 +- 0.78   11 / 21
  random labels                  99.65 +- 0.07   9.50 +- 1.84   15.5 / 28.5
  shuffled pixels                99.85 +- 0.01  42.30 +- 0.64   11 / 20.5
  random pixels                  99.99 +- 0.01  18.65 +- 1.20    5 / 10
  Gaussian                      100.00 +- 0.00  10.40 +- 0.07    2 / 3
  published (Table 1, MLP 1x512, 50,000 images): true labels 100.0 / 50.51,
  random labels 99.34 / 10.61.
  Whole sweep (10 runs, one at a time): 11 min 35 s; 48 to 79 s a run.

  corruption, MLP 1x512: test error 57.3, 63.4, 69.9, 76.6, 84.5, 90.5% at corruption
  0, 0.2, 0.4, 0.6, 0.8, 1.0 (train error 0.2 to 0.4% throughout); epochs to 99% train
  21, 27.5, 27, 29, 28.5, 28.5. Whole sweep (12 runs): 9 min 41 s.

  cnn, S2 CNN, seed 0 only     train (%)  test (%)  epochs to 90 / 99% train
  true labels                    100.00     45.50     12 / 16
  random labels                  100.00     10.85     16 / 20
  shuffled pixels                 98.35     33.65     20 / -
  random pixels                   95.05     20.85     22 / -
  Gaussian                        95.05     10.55     24 / -
  Whole sweep (5 runs): 12 min 22 s. Smoke: 30 to 40 s. The cnn runs predate the
  change of max_pool's gradient on tied maxima (research/models/layers.py), which moved
  the regularization study's CNN results by up to 0.5 points a seed; not re-run.

What it shows:
- Both networks memorise random labels: ~100% train accuracy, test at chance (10%),
  as in Table 1. Random labels take longer than true ones, by a small constant factor
  (MLP: 28.5 against 21 epochs to 99%; CNN: 20 against 16).
- Fig. 1(c): the MLP's test error rises smoothly from 57% to 90% with the corruption
  level while its train error stays ~0; the time to fit grows only slowly with it
  (Fig. 1(b)).
- Shuffled pixels: the MLP is blind to a fixed permutation of its inputs, so it fits
  and generalises as on the true images (42.3 against 42.75%); the CNN, which relies
  on locality, loses 12 points of test accuracy and fits more slowly.
- Random pixels keep each image's colour histogram, which still predicts the class a
  little: 19-21% test accuracy, above chance, for both networks.
- Where this differs from Zhang (Inception, whose Gaussian and random-pixel inputs are
  fitted faster than random labels, and true labels fastest): the MLP fits Gaussian
  inputs (3 epochs) and random pixels (10) faster than random labels, as published, but
  also faster than true labels; the CNN fits true labels fastest, as published, but
  Gaussian and random-pixel inputs slower than random labels (95% after 24 epochs,
  where random labels were at 100% by epoch 20).
Results and plots: docs/studies/random_labels/ (corruption/ holds Fig. 1(c), cnn/ the
CNN).
"""

from research import configs
from research import sweep as sweep_lib

CORRUPTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# Table 1 of Zhang et al. 2017, MLP 1x512 without weight decay, as fractions.
PUBLISHED_MLP = {0.0: {"train_accuracy": 1.0, "test_accuracy": 0.5051},
                 1.0: {"train_accuracy": 0.9934, "test_accuracy": 0.1061}}
VARIANTS = ("default", "corruption", "cnn", "smoke")


def _mlp():
  """MLP 1x512 with Zhang's recipe (no weight decay, dropout or augmentation)."""
  c = configs.base_config()
  c.dataset = "cifar10"
  c.train_subset, c.test_subset = 5000, 2000
  c.model = "mlp"
  c.model_kwargs.widths = (512,)
  c.model_kwargs.activation = "relu"
  c.optimizer, c.learning_rate, c.momentum = "momentum", 0.01, 0.9
  c.lr_schedule, c.lr_decay_factor = "exponential", 0.95
  c.weight_decay, c.augment, c.label_smoothing = 0.0, "none", 0.0
  c.batch_size, c.num_epochs = 128, 40
  c.eval_train = True
  c.checkpoint_every_epochs = 10
  c.log_every_steps = 1000
  return c


def _cnn():
  """The S2 CNN on 2,000 images, lr 0.03 (see the docstring for why)."""
  c = _mlp()
  c.model = "mnist_cnn"
  c.model_kwargs = configs.base_config().model_kwargs
  c.train_subset, c.learning_rate, c.num_epochs, c.eval_every_epochs = 2000, 0.03, 24, 2
  return c


def get_config(variant: str | None = None):
  variant = variant or "default"
  if variant in ("default", "corruption"):
    return _mlp()
  if variant == "cnn":
    return _cnn()
  if variant == "smoke":
    c = _mlp()
    c.train_subset, c.test_subset, c.num_epochs, c.log_every_steps = 256, 256, 1, 1
    c.checkpoint_every_epochs = 1
    return c
  raise ValueError(f"Unknown variant {variant!r} of random_labels; choose one of "
                   f"{', '.join(VARIANTS)}.")


FIGURE_1A = (
    sweep_lib.Point({}, "true_labels", PUBLISHED_MLP[0.0]),
    sweep_lib.Point({"label_corruption": 1.0}, "random_labels", PUBLISHED_MLP[1.0]),
    sweep_lib.Point({"input_corruption": "shuffled_pixels"}, "shuffled_pixels"),
    sweep_lib.Point({"input_corruption": "random_pixels"}, "random_pixels"),
    sweep_lib.Point({"input_corruption": "gaussian"}, "gaussian"),
)


def get_sweep(variant: str | None = None) -> sweep_lib.Sweep:
  variant = variant or "default"
  get_config(variant)  # rejects an unknown variant
  source = "Zhang et al. 2017, Table 1 (MLP 1x512, no weight decay)"
  if variant == "default":
    return sweep_lib.Sweep(FIGURE_1A, seeds=2, title="Zhang Fig. 1(a): MLP 1x512, CIFAR-10",
                           published_source=source)
  if variant == "cnn":  # Zhang's Table 1 has no figures for this CNN
    points = [sweep_lib.Point(p.overrides, p.name) for p in FIGURE_1A]
    return sweep_lib.Sweep(points, seeds=1,
                           title="Zhang Fig. 1(a): small CNN (S2), CIFAR-10, 2,000 images")
  if variant == "corruption":
    points = [sweep_lib.Point({"label_corruption": p}, f"label_corruption={p}",
                              PUBLISHED_MLP.get(p, {})) for p in CORRUPTIONS]
    return sweep_lib.Sweep(points, seeds=2, x="label_corruption", plot_error=True,
                           x_label="label corruption (fraction of labels redrawn)",
                           title="Zhang Fig. 1(c): MLP 1x512, CIFAR-10",
                           published_source=source)
  return sweep_lib.Sweep(FIGURE_1A[:2], seeds=1, title="random_labels smoke")


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
