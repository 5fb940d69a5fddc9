"""Srivastava et al. 2014, Table 9, scaled down: dropout and max-norm on MNIST MLPs.

    python -m experiments.dropout_mnist --workdir DIR [--seeds N] [--parallel N]
    python -m experiments.dropout_mnist --config=experiments/dropout_mnist.py:full_data --workdir DIR
    python -m experiments.dropout_mnist --config=experiments/dropout_mnist.py:smoke --workdir DIR

A sweep (research/sweep.py) of five regularisers of one ReLU MLP: none, L2, max-norm,
dropout + L2 and dropout + max-norm, with test error beside Srivastava's in
DIR/results.md, and learning_curves.png, test_error.png and gap.png.

Srivastava's net is 784-1024-1024-2048-10 ReLU, trained with SGD, momentum 0.95, for
about a million weight updates; dropout keeps inputs with probability 0.8 and hidden
units with 0.5, and max-norm caps each unit's incoming weight vector at c = 3-4. Ours is
the same net at a quarter of the width, 784-256-256-512-10 (403k parameters), SGD with
momentum 0.95 at lr 0.02, cosine-decayed to 0, batch 128; dropout 0.2 on the inputs and
0.5 after each hidden layer; L2 = 1e-3 (1e-4 on all 60k images) added to the loss as
L2 * sum(w^2) over the kernels; max-norm c = 1 on every kernel, head included. Six times
less data, rather than more updates, is what lets the regularisers matter within a CPU
budget.

Variants:
  default    10,000 training images (a seeded subset), 40 epochs: 3,120 updates, 3 seeds.
  full_data  all 60,000 images, 20 epochs: 9,360 updates, 2 seeds.
  smoke      the sweep's code path: 2 points, 1 seed, 512 images, 1 epoch (tests, CI).

Results: docs/studies/dropout_mnist/results.md (full_data/ for all 60,000 images); what
they show, the tuning behind lr, c and L2, and sweep times:
docs/studies/dropout_mnist/notes.md.
"""

from research import configs
from research import sweep as sweep_lib

L2 = 1e-3            # Keras' convention: + L2 * sum(w^2) over kernels; 10k images
L2_FULL_DATA = 1e-4  # ... 60k images (1e-3 cost 0.2 points of test accuracy there)
MAX_NORM = 1.0       # each unit's incoming weight vector rescaled to norm <= this
INPUT_DROPOUT = 0.2  # Srivastava: keep probability 0.8 for the inputs ...
DROPOUT = 0.5        # ... and 0.5 for the hidden units

# Srivastava et al. 2014, Table 9 (784-1024-1024-2048-10 ReLU, all of MNIST, about a
# million weight updates): test error (%) per regulariser.
SRIVASTAVA_ERROR = {"L2": 1.62, "max-norm": 1.35, "dropout+L2": 1.25,
                    "dropout+max-norm": 1.05}
SOURCE = ("Srivastava et al. 2014, Table 9 (784-1024-1024-2048-10 ReLU on all 60,000 "
          "MNIST images, about a million weight updates); test accuracy = 100 - error")


def get_config(variant: str | None = None):
  c = configs.base_config()
  c.dataset = "mnist"
  c.normalize = "none"   # pixels in [0, 1], as its results in docs/studies were measured
  # Srivastava's 784-1024-1024-2048-10 ReLU net at a quarter of the width.
  c.model = "mlp"
  c.model_kwargs.widths = (256, 256, 512)
  c.model_kwargs.activation = "relu"
  c.model_kwargs.input_dropout = 0.0
  c.dropout = 0.0
  # SGD with Srivastava's momentum 0.95; lr 0.02 was the best of 0.01, 0.02, 0.05 and 0.1
  # for dropout + max-norm, and as good as 0.05 without dropout.
  c.optimizer, c.momentum, c.learning_rate = "momentum", 0.95, 0.02
  c.lr_schedule = "cosine"
  c.batch_size = 128
  c.eval_train = True
  c.checkpoint_every_epochs = 10
  c.log_every_steps = 1000
  if variant in (None, "", "default", "smoke"):
    # 10,000 training images for 40 epochs (3,120 updates): small enough data that the
    # unregularised net fits it (100% train) early and the regularisers have work to do.
    c.train_subset, c.num_epochs, c.eval_every_epochs = 10000, 40, 4
    if variant == "smoke":
      # Equal train and test sizes share one compiled evaluation.
      c.train_subset, c.test_subset, c.num_epochs = 512, 512, 1
      c.eval_every_epochs, c.log_every_steps = 1, 1
    return c
  if variant == "full_data":
    # All 60,000 images, for 20 epochs (9,360 updates).
    c.num_epochs, c.eval_every_epochs = 20, 2
    c.eval_train_size = 10000
    return c
  raise ValueError(f"Unknown variant {variant!r} of dropout_mnist; use 'full_data', 'smoke' "
                   "or none.")


def _point(name: str, **overrides) -> sweep_lib.Point:
  published = ({"test_accuracy": 1 - SRIVASTAVA_ERROR[name] / 100}
               if name in SRIVASTAVA_ERROR else {})
  return sweep_lib.Point(overrides, name=name, published=published)


def _points(l2: float = L2) -> list[sweep_lib.Point]:
  dropout = {"dropout": DROPOUT, "model_kwargs.input_dropout": INPUT_DROPOUT}
  return [_point("none"),
          _point("L2", l2=l2),
          _point("max-norm", max_norm=MAX_NORM),
          _point("dropout+L2", l2=l2, **dropout),
          _point("dropout+max-norm", max_norm=MAX_NORM, **dropout)]


def get_sweep(variant: str | None = None) -> sweep_lib.Sweep:
  if variant == "smoke":
    points = _points()
    return sweep_lib.Sweep([points[0], points[-1]], seeds=1, title="dropout_mnist smoke test")
  if variant in (None, "", "default"):
    return sweep_lib.Sweep(_points(), seeds=3, plot_error=True,
                           title="Srivastava Table 9 analogue: 256-256-512 MLP, 10k MNIST",
                           published_source=SOURCE)
  if variant == "full_data":
    return sweep_lib.Sweep(_points(L2_FULL_DATA), seeds=2, plot_error=True,
                           title="Srivastava Table 9 analogue: 256-256-512 MLP, 60k MNIST",
                           published_source=SOURCE)
  raise ValueError(f"Unknown variant {variant!r} of dropout_mnist; use 'full_data', 'smoke' "
                   "or none.")


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
