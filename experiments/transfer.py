"""Transfer and few-shot learning on CIFAR-10: pre-train on five classes, then learn the
other five from N images per class, from scratch, fine-tuned, or with a linear probe.

    python -m experiments.transfer --workdir runs/transfer [--parallel 2]
    python -m experiments.transfer --config=experiments/transfer.py:smoke --workdir DIR

The VGG of experiments/cifar_cnn.py:vgg (16-32-64 with BatchNorm, crop and flip,
SGD with Nesterov momentum, a one-cycle learning rate peaking at 0.2, weight decay 5e-4,
label smoothing 0.1) is

1. pre-trained on CIFAR-10 classes 0-4 (airplane, automobile, bird, cat, deer), all
   25,000 training images, for PRETRAIN_EPOCHS epochs, once (`pretrain/seed_0`);
2. trained on classes 5-9 (dog, frog, horse, ship, truck, relabelled 0-4) from N in
   PER_CLASS images per class (`train_per_class`; 5,000 is all of them), in three arms:
   - `scratch`: a fresh initialisation;
   - `finetune`: every layer from the pre-trained run (`init_from`) but the head, which
     is new (other classes); the backbone learns at a tenth of the head's rate
     (`backbone_lr_multiplier=0.1`), the usual guard of fine-tuning against wiping out
     the pre-trained features with a new head's large early gradients;
   - `probe`: the pre-trained backbone frozen (`freeze=backbone`: no updates, BatchNorm
     in inference mode), only the new head trains: a linear probe of its features;
3. at 3 seeds; each seed draws its own N images per class (the same draw for the three
   arms, so the arms are compared on the same data) and its own initialisation of the
   head (and of the scratch net). One pre-trained backbone serves every seed, so the
   spread does not include the pre-training's.

Test accuracy is on the 5,000 test images of classes 5-9. What makes the comparison fair:
at each N the three arms get the same images, the same recipe and the same number of
optimiser steps, at least MIN_STEPS = 100 and at least EPOCHS = 1 epoch, in batches of
min(64, 5 N): a few epochs of 50 images would be a handful of steps, too few for any
arm to converge, so the small N train for many epochs (N=10: 100 epochs of one step).
So N=10 to 1,000 get 100 to 156 steps (N=1,000: 2 epochs) and N=5,000 one epoch (390
steps): the large N are trained briefly, for the time budget, which favours the
pre-trained arms there. The pre-training's own cost is not
charged to the transfer arms: the question is what a model already pre-trained buys.
Every run normalises with the same fixed statistics (those of the whole JPEG training
split), so that the backbone sees inputs as in pre-training and 50 images do not set
the normalisation. The learning rates were not tuned for this study.

The sweep takes about 17 minutes, 2 runs at a time, on an otherwise idle 2-core CPU
(docs/studies/transfer/notes.md). The published setting that this mirrors at a smaller
scale is Yosinski et al. 2014 (ImageNet split into two halves of 500 classes, AlexNet):
fine-tuning transferred features beats training from scratch
even with the whole target half, and frozen features of the top layers transfer worse.
No published figure is directly comparable (other data, network and scale).

Variants:
  smoke  pre-training on 400 images for 1 epoch, then the three arms at N=10 for 3
         steps, 256 test images, 1 seed: the real sweep, end to end.

Results: docs/studies/transfer/results.md; what they show and the sweep's time:
docs/studies/transfer/notes.md.
"""

import math

from experiments import cifar_cnn
from research import sweep as sweep_lib

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
PER_CLASS = (10, 50, 250, 1000, 5000)
PRETRAIN_EPOCHS = 3
EPOCHS, MIN_STEPS, BATCH = 1, 100, 64
SOURCE = "{sweep_dir}/pretrain/seed_0"
# Mean and std of the 50,000 training images of the JPEG copy (docs/studies/README.md).
MEAN, STD = (0.49125, 0.48209, 0.44652), (0.24523, 0.24278, 0.26063)
ARMS = {"scratch": {},
        "finetune": {"init_from": SOURCE, "backbone_lr_multiplier": 0.1},
        "probe": {"init_from": SOURCE, "freeze": "backbone"}}
VARIANTS = ("default", "smoke")
PUBLISHED = ("none directly comparable. The nearest is Yosinski et al. 2014, \"How "
             "transferable are features in deep neural networks?\" (ImageNet in two halves "
             "of 500 classes, AlexNet, 645,000 images per half): fine-tuned transferred "
             "features beat training from scratch on the whole target half, and frozen "
             "features from the top layers transfer worse than fine-tuned ones")


def get_config(variant: str | None = None):
  variant = variant or "default"
  c = cifar_cnn.get_config("vgg")
  c.classes = TARGET_CLASSES
  c.normalize, c.normalize_mean, c.normalize_std = "explicit", MEAN, STD
  c.warmup_epochs = 0.0           # one-cycle: the peak at a fifth of the run, any length
  c.eval_every_epochs, c.checkpoint_every_epochs = 0, 0   # at the end only
  c.final_train_eval, c.log_every_steps = False, 1000
  if variant == "default":
    return c
  if variant == "smoke":
    c.test_subset = 256
    return c
  raise ValueError(f"Unknown variant {variant!r} of transfer; choose one of "
                   f"{', '.join(VARIANTS)}.")


def budget(per_class: int, epochs: int, min_steps: int) -> dict:
  """Batch size and epochs for `per_class` images of each of 5 classes: `epochs`
  epochs, or `min_steps` optimiser steps if that is more."""
  images = len(TARGET_CLASSES) * per_class
  batch = min(BATCH, images)
  steps_per_epoch = images // batch
  steps = max(min_steps, epochs * steps_per_epoch)
  return {"batch_size": batch, "num_epochs": math.ceil(steps / steps_per_epoch)}


def _points(per_class, pretrain: dict, epochs: int, min_steps: int):
  """The pre-training, then the arms N by N, smallest first: a sweep cut short still
  compares the three arms at the N it reached."""
  points = [sweep_lib.Point({"classes": PRETRAIN_CLASSES, **pretrain}, "pretrain",
                            seeds=1)]
  for n in per_class:
    for arm, overrides in ARMS.items():
      points.append(sweep_lib.Point(
          {"train_per_class": n, **budget(n, epochs, min_steps), **overrides},
          f"{arm}_n={n}", after=("pretrain",) if overrides else (), series=arm))
  return points


def get_sweep(variant: str | None = None) -> sweep_lib.Sweep:
  variant = variant or "default"
  get_config(variant)  # rejects an unknown variant
  title = "Transfer from CIFAR-10 classes 0-4 to 5-9, VGG 16-32-64"
  axes = {"x": "train_per_class", "x_label": "training images per class", "x_log": True}
  if variant == "smoke":
    pretrain = {"num_epochs": 1, "train_subset": 400, "batch_size": 100}
    return sweep_lib.Sweep(_points((10,), pretrain, epochs=1, min_steps=3), seeds=1,
                           title=f"{title} (smoke)", **axes)
  pretrain = {"num_epochs": PRETRAIN_EPOCHS}
  points = _points(PER_CLASS, pretrain, EPOCHS, MIN_STEPS)
  return sweep_lib.Sweep(points, seeds=3, title=title, published_source=PUBLISHED, **axes)


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
