"""Everything in a config that depends on the data, checked against the loaded data
before a model is built: so that a run (or each point of a sweep) on a dataset it does
not fit stops at once, with one line per mismatch naming the key, instead of as a shape
error inside a jitted step.

    check_config_against_data(config, dataset)   # raises ConfigError listing every line
"""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import configs
from research import errors
from research import losses
from research import preprocess
from research.models import MODELS


def check_config_against_data(config: ml_collections.ConfigDict,
                              dataset) -> None:
  """`dataset` is the whole dataset as loaded (validation split carved out, before
  subsets), `config` one with its normalisation filled in."""
  lines = problems(config, dataset)
  if lines:
    raise errors.ConfigError(
        f"the config does not fit config.dataset={config.dataset!r} ({_describe(dataset)}):"
        + "".join(f"\n  - {line}" for line in lines))


def problems(config: ml_collections.ConfigDict, dataset) -> list[str]:
  """One line per mismatch between `config` and `dataset`, each naming its key."""
  return [*_normalization(config, dataset), *_sizes(config, dataset),
          *_augmentation(config, dataset), *_labels(config, dataset),
          *_model(config, dataset)]


def _describe(dataset) -> str:
  return (f"inputs {dataset.image_shape}, {dataset.num_classes} classes, "
          f"{len(dataset.train)} training examples")


def _normalization(config, dataset) -> list[str]:
  channels = dataset.image_shape[-1]
  return [f"config.{key} has {len(config[key])} value(s), but the {dataset.name} inputs "
          f"have {channels} channel(s): give {channels}, or use --config.normalize=auto "
          "(measured on the data) or none."
          for key in ("normalize_mean", "normalize_std") if len(config[key]) != channels]


def _sizes(config, dataset) -> list[str]:
  lines = []
  available = len(dataset.train)
  held_out = (f" left after cross-validation fold {config.cv_fold} of {config.cv_folds}"
              if config.cv_folds else
              f" left after config.validation_size={config.validation_size}"
              if dataset.validation is not None else "")
  if config.train_subset > available:
    lines.append(f"config.train_subset={config.train_subset} is more than the {available} "
                 f"training examples of {dataset.name}{held_out}: lower it (0 = all).")
  if config.test_subset > len(dataset.test):
    lines.append(f"config.test_subset={config.test_subset} is more than the "
                 f"{len(dataset.test)} test examples of {dataset.name}: lower it (0 = all).")
  smallest = int(np.bincount(dataset.train.labels, minlength=dataset.num_classes).min())
  if config.train_per_class > smallest:
    lines.append(f"config.train_per_class={config.train_per_class} is more than the "
                 f"{smallest} training examples of {dataset.name}'s smallest class"
                 f"{held_out}: lower it (0 = all).")
  train = min(config.train_subset or available, available)
  if config.train_per_class:
    train = dataset.num_classes * min(config.train_per_class, smallest)
  if config.batch_size > train:
    lines.append(f"config.batch_size={config.batch_size} is larger than the {train} "
                 "training examples: lower it, or train on more (config.train_subset).")
  if config.eval_train and config.eval_train_size > train:
    lines.append(f"config.eval_train_size={config.eval_train_size} is more than the {train} "
                 "training examples: lower it (0 = all of them).")
  return lines


def _augmentation(config, dataset) -> list[str]:
  height, width = dataset.image_shape[:2]
  ops, lines = preprocess.parse_augment(config.augment), []
  if "cutout" in ops and config.cutout_size > min(height, width):
    lines.append(f"config.cutout_size={config.cutout_size} is larger than the "
                 f"{height}x{width} {dataset.name} inputs: lower it, or drop cutout from "
                 "config.augment.")
  # crop leaves axes of length 1 alone (MNIST-1D's width); a turn or zoom cannot.
  turned = [op for op in ("rotate", "scale") if op in ops]
  if turned and min(height, width) == 1:
    lines.append(f"config.augment has {'+'.join(turned)}, which needs 2-D images, but the "
                 f"{dataset.name} inputs are {height}x{width}: drop it from config.augment.")
  return lines


def _labels(config, dataset) -> list[str]:
  lines = []
  if config.label_corruption and dataset.num_classes < 2:
    lines.append(f"config.label_corruption={config.label_corruption} needs at least 2 "
                 f"classes; {dataset.name} has {dataset.num_classes}.")
  if config.loss == losses.BINARY and dataset.num_classes != 2:
    lines.append(f"config.loss={config.loss!r} needs exactly 2 classes; {dataset.name} has "
                 f"{dataset.num_classes}: pick two with config.classes, e.g. "
                 "--config.classes='(3, 5)', or use cross_entropy.")
  try:
    losses.class_weights(config.class_weights, dataset.train.labels, dataset.num_classes)
  except errors.ConfigError as e:
    lines.append(str(e))
  return lines


def _model(config, dataset) -> list[str]:
  """What the model cannot take of this data, found without training: its construction,
  forward pass and gradient, traced (not compiled) for a batch of the data's shape."""
  kwargs = configs.model_kwargs(config)
  outputs = losses.num_outputs(config.loss, dataset.num_classes)
  key = (config.model, repr(sorted(kwargs.items())), dataset.image_shape, outputs)
  if key not in _MODEL_LINES:   # a sweep's points mostly share their model
    _MODEL_LINES[key] = _model_line(config.model, kwargs, dataset, outputs)
  return [_MODEL_LINES[key]] if _MODEL_LINES[key] else []


_MODEL_LINES = {}


def _model_line(name: str, kwargs: dict, dataset, outputs: int) -> str | None:
  """`outputs`: the width of the head (one logit per class, or one for the binary
  loss)."""
  shape = dataset.image_shape
  options = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  program = _forward_and_gradient(MODELS[name], kwargs, shape, outputs)
  images = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  try:
    logits, _ = jax.eval_shape(program, images, jax.random.key(0))
  except TypeError as e:   # the constructor's arguments
    return f"config.model_kwargs ({options}) do not fit config.model={name!r}: {_first_line(e)}"
  except Exception as e:  # whatever the model raises about its input, as a config line
    return (f"config.model={name!r}{f' ({options})' if options else ''} cannot take the "
            f"{dataset.name} inputs of shape {shape} ({type(e).__name__}: "
            f"{_first_line(e)}): choose another model for this data.")
  if logits.shape != (2, outputs):
    return (f"config.model={name!r} gives logits of shape {logits.shape[1:]} for the "
            f"{dataset.name} inputs, not ({outputs},) for its {dataset.num_classes} "
            "classes.")
  return None


def _forward_and_gradient(factory, kwargs: dict, shape, outputs: int):
  """(images, dropout key) -> (inference logits, gradients of the training-mode logits'
  sum with respect to the parameters and the images), building the model inside."""

  def program(images, key):
    model = factory(input_shape=shape, num_classes=outputs, rngs=nnx.Rngs(params=0),
                    **kwargs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply(params, images, train):
      # copy=True: fresh variables at this trace level, which BatchNorm may update.
      model = nnx.merge(graphdef, params, rest, copy=True)
      return model(images, train=train, dropout_key=key if train else None)

    grads = jax.grad(lambda p, x: apply(p, x, True).sum(), argnums=(0, 1))(params, images)
    return apply(params, images, False), grads

  return program


def _first_line(error: Exception) -> str:
  """The error's first line, with the next one if it ends in ':' (the detail)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
