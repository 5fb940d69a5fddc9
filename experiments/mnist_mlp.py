"""Seed S1: an MLP (784-64-10) on MNIST.

    python -m experiments.mnist_mlp [--workdir DIR] [--config.KEY=VALUE ...]
    python -m experiments.mnist_mlp --config=experiments/mnist_mlp.py:smoke

Flatten - Dense 64 ReLU - Dense 10 (logits); Adam with Keras' defaults (lr 1e-3,
eps 1e-7), softmax cross-entropy, batch 128, 10 epochs, the test set evaluated after every
epoch. Wider or deeper MLPs: `--config.model_kwargs.widths='(512, 512)'`.

Measured accuracy and time, with the machine: docs/performance.md.
"""

from research import configs


def get_config(variant: str | None = None):
  c = configs.base_config()
  c.dataset = "mnist"
  c.model = "mlp"
  c.model_kwargs.widths = (64,)
  c.model_kwargs.activation = "relu"
  c.normalize = "none"   # pixels / 255, as in the seed recipe
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.batch_size = 128
  c.num_epochs = 10
  if variant == "smoke":
    c.train_subset, c.test_subset, c.num_epochs, c.log_every_steps = 512, 256, 2, 2
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_mlp; use 'smoke' or none.")
  return c


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
