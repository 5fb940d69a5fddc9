"""The main job: the CIFAR-10 speed-run recipe sized for a 2-core CPU, and the VGG.

    python -m experiments.cifar_cnn [--workdir DIR] [--config.KEY=VALUE ...]
    python -m experiments.cifar_cnn --config=experiments/cifar_cnn.py:VARIANT

Default: experiments/airbench.py's `cpu` variant: airbench94 (Jordan 2024) at widths
48-96-96 for 10 epochs at batch 1024, every trick of the paper on (frozen patch
whitening, Dirac init, Nesterov SGD with a triangular schedule, label smoothing 0.2,
alternating flips and reflect translation, Lookahead, test-time augmentation) but one:
its BatchNorm scales train, which at these widths measured better than the paper's
frozen ones. The best accuracy per minute measured on a 2-core CPU (docs/airbench.md).

Variants:
  vgg      the main job before the speed-run recipe: VGG blocks of widths 16-32-64, two
           3x3 conv + BatchNorm + ReLU per block, max pooling, global average pooling;
           inputs normalised with the training split's per-channel mean and std; random
           2-pixel translation and horizontal flips; SGD with Nesterov momentum, a
           one-cycle learning rate, weight decay 5e-4 and label smoothing 0.1; batch 128
           for 10 epochs. The transfer, interpretability and compression studies, and the
           seed recipes below, build on it.
  lenet    seed S4: LeNet-5, inputs normalised with mean 0.5 and std 0.5, SGD lr 0.001,
           momentum 0.9, batch 32, 2 epochs.
  seed_s5  seed S5: the 32x32 CNN, pixels / 255, Adam, batch 32, 10 epochs. Point
           --config.dataset=folder --config.data_dir=DIR at any train/ and test/ class
           folders to run it on your own images.
  seed_s6  seed S6: the dropout CNN, SGD lr 0.001 momentum 0.9, batch 4, 2 epochs.
  seed_s5_binary  S5's binary task as the article wrote it: one sigmoid output unit,
           binary cross-entropy, images resized to 32x32; here on CIFAR-10's cat (class 3)
           against dog (class 5), --config.classes. For your own two-class folder:
           --config.dataset=folder --config.data_dir=DIR --config.classes='()'.
  seed_s6_binary  S6 on the same two classes, as the article wrote it: two outputs and
           softmax cross-entropy (PyTorch's CrossEntropyLoss), images resized to 32x32.
           The article resizes to 256x256, which its fc1 cannot take: fc1 is sized for a
           fixed input, and two (valid 5x5 conv, 2x2 pool) stages leave 128 x 5 x 5 =
           3,200 features of a 32x32 image (of any side from 32 to 35) but 128 x 61 x 61
           = 476,288 of a 256x256 one (256 -> 252 -> 126 -> 122 -> 61). An fc1 declared
           for 3,200 inputs fails at the first batch of 256x256 images; one sized for
           them would hold 476,288 x 1,024 = 488M weights (1.95 GB in float32) against
           the 3.3M of the fc1 that 32x32 images need (3.5M parameters in all).
  full     the paper's recipe at its full widths 64-256-256 (airbench.py's default): for a
           GPU or TPU.
  vgg_full the VGG at twice the width for 40 epochs.
  smoke    the default code path at tiny widths on 512 images (tests and CI).
  vgg_smoke  the VGG's code path on 512 images for one epoch.

Measured accuracy and time, with the machine: the README's Results table and
docs/airbench.md for the default, docs/binary_tasks.md for the binary variants,
docs/performance.md for the VGG, the other variants and ghost BatchNorm
(`--config=experiments/cifar_cnn.py:vgg --config.micro_batch_size=16
--config.ghost_batch_norm=True`, faster on a CPU but a different model).
"""

import ml_collections

from experiments import airbench
from research import configs


def _vgg():
  c = configs.base_config()
  c.dataset = "cifar10"
  c.model = "vgg"
  c.model_kwargs.widths = (16, 32, 64)
  c.model_kwargs.convs_per_block = 2
  c.model_kwargs.dropout = 0.0
  c.model_kwargs.width_multiplier = 1.0
  c.augment, c.crop_padding = "crop,flip", 2
  c.optimizer, c.learning_rate, c.momentum, c.weight_decay = "nesterov", 0.2, 0.9, 5e-4
  c.lr_schedule, c.warmup_epochs, c.label_smoothing = "onecycle", 2.0, 0.1
  c.batch_size, c.num_epochs = 128, 10
  return c


def _seed_recipe(c, model, **settings):
  """The seed recipes train plain models with no augmentation or regularisation."""
  c.model, c.model_kwargs = model, ml_collections.ConfigDict()
  c.augment, c.weight_decay, c.label_smoothing, c.lr_schedule = "none", 0.0, 0.0, "constant"
  for key, value in settings.items():
    c[key] = value
  return c


def _cat_against_dog(c, **settings):
  """A seed recipe on CIFAR-10's cat against dog, the articles' own binary example,
  resized on load to the 32x32 that both models take (a no-op on CIFAR-10 itself)."""
  c.classes, c.image_size = (3, 5), (32, 32)
  for key, value in settings.items():
    c[key] = value
  return c


def get_config(variant: str | None = None):
  if variant in (None, "", "default"):
    return airbench.get_config("cpu")
  if variant in ("full", "smoke"):
    return airbench.get_config(variant)
  c = _vgg()
  if variant == "vgg":
    return c
  if variant == "vgg_smoke":
    c.train_subset, c.test_subset, c.num_epochs, c.log_every_steps = 512, 256, 1, 1
    c.warmup_epochs = 0.3
    return c
  if variant == "vgg_full":
    c.model_kwargs.width_multiplier, c.num_epochs, c.warmup_epochs = 2.0, 40, 5.0
    return c
  half = (0.5, 0.5, 0.5)
  if variant == "lenet":
    return _seed_recipe(c, "lenet5", normalize="explicit", normalize_mean=half,
                        normalize_std=half,
                        optimizer="momentum", learning_rate=1e-3, momentum=0.9,
                        batch_size=32, num_epochs=2, micro_batch_size=16)
  if variant == "seed_s5":
    return _seed_recipe(c, "cnn32", normalize="none",
                        optimizer="adam", learning_rate=1e-3, batch_size=32, num_epochs=10)
  if variant == "seed_s6":
    return _seed_recipe(c, "dropout_cnn", normalize="none",
                        optimizer="momentum", learning_rate=1e-3, momentum=0.9,
                        batch_size=4, num_epochs=2, log_every_steps=1000)
  if variant == "seed_s5_binary":
    return _cat_against_dog(get_config("seed_s5"), loss="binary_cross_entropy")
  if variant == "seed_s6_binary":
    return _cat_against_dog(get_config("seed_s6"))
  raise ValueError(f"Unknown variant {variant!r} of cifar_cnn; choose full, smoke, vgg, "
                   "vgg_full, vgg_smoke, lenet, seed_s5, seed_s6, seed_s5_binary or "
                   "seed_s6_binary.")


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
