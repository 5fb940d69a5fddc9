"""Double descent in model width: MLPs 40-h-h-10 on MNIST-1D with 15% label noise.

    python -m experiments.double_descent --workdir runs/double_descent [--seeds N] [--parallel 2]
    python -m experiments.double_descent --config=experiments/double_descent.py:clean --workdir DIR
    python -m experiments.double_descent --config=experiments/double_descent.py:smoke --workdir DIR

The setting of the MNIST-1D reference notebook (published-targets.md): 4,000 training
sequences, 15% of their labels replaced by random classes (`label_corruption=0.15`), SGD
with momentum 0.9 at lr 0.01, batch 100, 500 epochs (20,000 steps), ReLU MLPs with two
hidden layers of width h, swept from 2 to 300. The data are generated offline by the
`mnist1d` package (research/data/mnist1d.py), never downloaded.

Reference: test error peaks near h = 47 to 61, where the train error first reaches 0,
and falls again for wider nets; its figures are PUBLISHED below. Without label noise
(`clean`) it falls monotonically.

Variants: default (15% label noise), `clean` (no noise), `smoke` (2 widths, 10 epochs).

Results: docs/studies/double_descent/results.md (clean/ without noise); what they show
and sweep times: docs/studies/double_descent/notes.md.
"""

from research import configs
from research import sweep

WIDTHS = (2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 100, 128, 200, 300)
# The reference notebook's test errors with 15% noise (published-targets.md), as accuracies:
# 47% error at h = 16, the peak of about 54% near h = 47 to 61, 45% at h = 300.
PUBLISHED = {16: 0.53, 48: 0.46, 300: 0.55}


def get_config(variant: str | None = None):
  c = configs.base_config()
  c.dataset = "mnist1d"
  c.normalize = "none"   # the sequences as generated, as in the reference notebook
  c.model = "mlp"
  c.model_kwargs.widths = (64, 64)
  c.model_kwargs.activation = "relu"
  c.optimizer, c.learning_rate, c.momentum = "momentum", 0.01, 0.9
  c.batch_size, c.num_epochs = 100, 500
  c.label_corruption = 0.15
  c.eval_train = True             # the train error on the noisy labels: where it hits 0
  c.eval_every_epochs = 25
  c.log_every_steps = 1000
  c.checkpoint_every_epochs = 100
  if variant == "clean":
    c.label_corruption = 0.0
  elif variant == "smoke":
    c.num_epochs, c.eval_every_epochs, c.checkpoint_every_epochs = 10, 5, 5
  elif variant not in (None, "", "default"):
    raise ValueError(f"Unknown variant {variant!r} of double_descent; use clean or smoke.")
  return c


def get_sweep(variant: str | None = None) -> sweep.Sweep:
  widths = (4, 300) if variant == "smoke" else WIDTHS
  noise = "no label noise" if variant == "clean" else "15% label noise"
  published = {} if variant == "clean" else PUBLISHED
  return sweep.Sweep(
      [sweep.Point({"model_kwargs.widths": (h, h)}, name=f"h={h}",
                   published={"test_accuracy": published[h]} if h in published else {})
       for h in widths],
      seeds=1 if variant == "smoke" else 2, x="model_kwargs.widths",
      x_label="hidden width h", x_log=True, plot_error=True,
      title=f"MLP 40-h-h-10 on MNIST-1D, {noise}",
      published_source="the MNIST-1D reference notebook (Greydanus 2020), as quoted in "
      "published-targets.md; h = 48 stands for its peak near h = 47 to 61")


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
