"""Keras 3 peers on the JAX backend, written as a Keras user would: `Sequential`,
`compile`, `fit` on numpy arrays (channels-last, float32 pixels already normalised).

Importing this module sets KERAS_BACKEND=jax; it fails if keras was already imported
with another backend. Models as in torch_peers (same layers and parameter counts):
mlp (S1), mnist_cnn (S2), lenet5 (S4), vgg. Keras' BatchNorm is set to flax's momentum
(0.9) and epsilon (1e-5). Needs the `bench` extra (`pip install keras`).
"""

import os
import time

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from research import normalization  # noqa: E402

if keras.backend.backend() != "jax":
  raise ImportError(f"keras was imported with backend {keras.backend.backend()!r} before "
                    "benchmarks.keras_peers; set KERAS_BACKEND=jax")


def create_peer(model: str, input_shape, num_classes: int = 10, **kwargs) -> keras.Model:
  layers = keras.layers
  body = []
  if model == "mlp":
    body = [layers.Flatten()]
    body += [layers.Dense(w, activation="relu") for w in kwargs.get("widths", (64,))]
  elif model in ("mnist_cnn", "lenet5"):
    channels, kernel, dense = (((32, 64), 3, (128,)) if model == "mnist_cnn"
                               else ((6, 16), 5, (120, 84)))
    for c in channels:
      body += [layers.Conv2D(c, kernel, activation="relu"), layers.MaxPooling2D(2)]
    body += [layers.Flatten()] + [layers.Dense(d, activation="relu") for d in dense]
  elif model == "vgg":
    for width in kwargs.get("widths", (16, 32, 64)):
      for _ in range(int(kwargs.get("convs_per_block", 2))):
        body += [layers.Conv2D(width, 3, padding="same", use_bias=False),
                 layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
                 layers.ReLU()]
      body.append(layers.MaxPooling2D(2))
    body.append(layers.GlobalAveragePooling2D())
  else:
    raise ValueError(f"no Keras peer for model {model!r}")
  return keras.Sequential([keras.Input(tuple(input_shape)), *body,
                           layers.Dense(num_classes)])


def create_optimizer(config):
  lr = float(config.learning_rate)
  if config.optimizer == "adam":
    return keras.optimizers.Adam(lr, beta_1=config.beta1, beta_2=config.beta2,
                                 epsilon=float(config.eps))
  if config.optimizer in ("sgd", "momentum", "nesterov"):
    return keras.optimizers.SGD(lr, momentum=0.0 if config.optimizer == "sgd"
                                else float(config.momentum),
                                nesterov=config.optimizer == "nesterov")
  raise ValueError(f"no Keras optimiser for config.optimizer={config.optimizer!r}")


def compile_peer(config, model: keras.Model) -> keras.Model:
  """Cross-entropy from logits (label smoothing needs one-hot labels in Keras, so it is
  left out; weight decay too: it is only in the VGG recipe)."""
  model.compile(optimizer=create_optimizer(config),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def normalize(images_uint8: np.ndarray, mean, std) -> np.ndarray:
  x = images_uint8.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def copy_weights(ours, peer: keras.Model) -> None:
  """Our nnx weights into the Keras peer (same layouts: HWIO kernels, (in, out) dense,
  channels-last flatten), layer by layer in order."""
  ours_layers = [*getattr(ours, "convs", []), *getattr(ours, "hidden", []),
                 *getattr(ours, "dense", []), ours.head]
  norms = list(getattr(ours, "norms", []))
  arr = lambda v: np.asarray(v[...], np.float32)
  for layer in peer.layers:
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      mine = ours_layers.pop(0)
      weights = [arr(mine.kernel)] + ([arr(mine.bias)] if layer.use_bias else [])
      layer.set_weights(weights)
    elif isinstance(layer, keras.layers.BatchNormalization):
      mine = norms.pop(0)
      layer.set_weights([arr(mine.scale), arr(mine.bias), arr(mine.mean), arr(mine.var)])


def train_recipe(recipe: str, config, dataset, seed: int = 0) -> dict:
  """The recipe as its Keras program: `fit` on the normalised arrays, shuffled, then
  `evaluate` on the test set. Returns test accuracy and times."""
  start = time.perf_counter()
  keras.utils.set_random_seed(seed)
  mean, std = normalization.mean_std(config, dataset.train.images)
  model = compile_peer(config, create_peer(config.model, dataset.train.images.shape[1:],
                                           dataset.num_classes))
  x = normalize(dataset.train.images, mean, std)
  model.fit(x, dataset.train.labels.astype(np.int32), batch_size=int(config.batch_size),
            epochs=int(config.num_epochs), shuffle=True, verbose=0)
  train_s = time.perf_counter() - start
  _, accuracy = model.evaluate(normalize(dataset.test.images, mean, std),
                               dataset.test.labels.astype(np.int32), batch_size=1000,
                               verbose=0)
  return {"test_accuracy": float(accuracy), "wall_time_s": time.perf_counter() - start,
          "train_time_s": train_s}
