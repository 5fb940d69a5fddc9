"""Seed S2: the MNIST CNN; seed S3 (the minimal CNN) as the `minimal` variant.

    python -m experiments.mnist_cnn [--workdir DIR] [--config.KEY=VALUE ...]
    python -m experiments.mnist_cnn --config=experiments/mnist_cnn.py:minimal
    python -m experiments.mnist_cnn --config.dataset=fashion_mnist \\
        --config.data_dir=/path/to/fashion-mnist-idx-files

S2: Conv32 3x3 ReLU - MaxPool 2 - Conv64 3x3 ReLU - MaxPool 2 - Dense 128 ReLU - Dense 10;
pixels / 255, Adam (lr 1e-3), cross-entropy, batch 64, 10 epochs, 20% of the training set
held out for validation (a seeded, shuffled split: Keras' `validation_split` takes the
tail, which in a class-sorted archive holds only the last classes).
S3: Conv32 3x3 ReLU - MaxPool 2 - Dense 10, same recipe.

Measured accuracy and time, with the machine: docs/performance.md.
"""

from research import configs


def get_config(variant: str | None = None):
  c = configs.base_config()
  c.dataset = "mnist"
  c.model = "mnist_cnn"
  c.normalize = "none"   # pixels / 255, as in the seed recipe
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.batch_size = 64
  c.num_epochs = 10
  c.validation_size = 0.2
  c.micro_batch_size = 16   # same update, faster on a CPU (docs/performance.md)
  if variant == "minimal":
    c.model = "minimal_cnn"
  elif variant == "smoke":
    c.train_subset, c.test_subset, c.num_epochs, c.log_every_steps = 640, 256, 2, 2
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_cnn; use minimal or smoke.")
  return c


if __name__ == "__main__":
  from research import cli
  cli.main(__file__)
