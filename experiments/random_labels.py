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

Results: docs/studies/random_labels/results.md (corruption/ and cnn/ for the variants);
what they show, epochs to fit and sweep times: docs/studies/random_labels/notes.md.
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
