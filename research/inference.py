"""A trained run's model for inference, rebuilt from its workdir alone, for
research.predict and research.export.

    model = inference.restore(workdir)
    outputs = model(images)   # {'logits': (N, units), 'probabilities': (N, classes)}

- The config comes from config.json; keys added to the project since take their
  defaults.
- The class names (in label order) and the shape and dtype of one image come from
  data.json. Runs from before data.json existed get them from their dataset, loaded as
  the run loaded it.
- The weights come from the best checkpoint (by config.best_metric), else the newest
  one that restores. Only the parameters and BatchNorm statistics are read, onto this
  process's first device, so a run saved on any backend and device count restores on a
  CPU.

The inference function takes images as the dataset held them (uint8 pixels, or float32
for MNIST-1D). It normalises them as the run did and applies the model in inference
mode, in the run's compute dtype. It returns float32 logits and class probabilities.
"""

import dataclasses
import functools
import os
import sys
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import checkpoint as checkpoint_lib
from research import configs
from research import errors
from research import losses
from research import outputs
from research import preprocess
from research.training import inputs
from research.training.state import call_model, create_run_model


@dataclasses.dataclass(frozen=True)
class RestoredModel:
  """A run's model with the weights of one checkpoint, and what its inputs must be."""
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  image_dtype: np.dtype
  step: int                       # the checkpoint's
  graphdef: nnx.GraphDef
  params: nnx.State
  batch_stats: nnx.State

  def function(self):
    """The pure `(params, batch_stats, images) -> {'logits', 'probabilities'}`."""
    config = self.config
    mean, std = tuple(config.normalize_mean), tuple(config.normalize_std)

    def infer(params, batch_stats, images):
      x = preprocess.normalize(images, mean, std, config.compute_dtype)
      logits, _ = call_model(self.graphdef, params, batch_stats, x, train=False,
                             dropout_key=None)
      logits = logits.astype(jnp.float32)
      return {"logits": logits, "probabilities": losses.probabilities(config.loss, logits)}

    return infer

  @functools.cached_property
  def _jitted(self):
    return jax.jit(self.function())

  def __call__(self, images) -> dict[str, jax.Array]:
    return self._jitted(self.params, self.batch_stats, images)


def restore(workdir: str | os.PathLike) -> RestoredModel:
  """The model of the run in `workdir` with the weights of its best checkpoint (else the
  newest readable one), on this process's first device. Raises a UserError naming the
  path when the workdir holds no run or no readable checkpoint."""
  writer = outputs.RunDir(outputs.workdir_path(workdir), writes=False)
  config = load_config(writer)
  info = data_info(writer, config)
  image_shape = tuple(info["image_shape"])
  # Shapes only: the initial values would be overwritten, and computing them compiles
  # a program as large as the model.
  model = nnx.eval_shape(lambda: create_run_model(config, image_shape,
                                                  len(info["class_names"])))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {"params": _abstract(params, device), "batch_stats": _abstract(batch_stats, device)}
  if config.weight_averaging != "none":   # the run evaluated and serves the average
    target = {"average": target}
  checkpoints = checkpoint_lib.Checkpoints(writer.checkpoint_dir, read_only=True)
  try:
    restored = checkpoints.restore_weights_of_best(target)
  finally:
    checkpoints.close()
  if restored is None:
    raise errors.CheckpointError(
        f"No checkpoint in {writer.checkpoint_dir} could be read: train the run first "
        "(or let it reach its first checkpoint).")
  step, weights = restored
  weights = weights.get("average", weights)
  return RestoredModel(config=config, class_names=tuple(info["class_names"]),
                       image_shape=image_shape, image_dtype=np.dtype(info["image_dtype"]),
                       step=step, graphdef=graphdef, params=weights["params"],
                       batch_stats=weights["batch_stats"])


def restore_finished(key: str, workdir: str | os.PathLike) -> RestoredModel:
  """The finished run in `workdir`, which config.`key` names (init_from, distill_from),
  with its weights; a ConfigError naming the key and what to do when there is none."""
  path = outputs.workdir_path(workdir)
  if not path.exists():
    raise errors.ConfigError(f"config.{key}={os.fspath(workdir)!r} does not exist: "
                             "give the --workdir of a finished run.")
  if outputs.RunDir(path, writes=False).read_summary() is None:
    raise errors.ConfigError(
        f"config.{key}={os.fspath(workdir)!r} holds no finished run (no "
        "summary.json): finish that run first (its own command again resumes it), or "
        f"point config.{key} at a finished one.")
  try:
    return restore(path)
  except errors.UserError as e:
    raise errors.ConfigError(f"config.{key}={os.fspath(workdir)!r}: {e}") from None


def _abstract(tree: Any, sharding) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      tree)


def load_config(writer: outputs.RunDir) -> ml_collections.ConfigDict:
  """The run's config.json over `base_config()`, so that keys added since take their
  defaults; with its normalisation filled in, as every run writes it."""
  saved = writer.read_config()
  if saved is None or not writer.checkpoint_dir.exists():
    raise errors.WorkdirError(
        f"{writer.path} holds no run with checkpoints (config.json and checkpoints/): "
        "pass the --workdir of a trained run.")
  config = configs.base_config()
  config.update(saved)
  return config


def data_info(writer: outputs.RunDir, config: ml_collections.ConfigDict) -> dict:
  """data.json of the run; for runs from before it existed, the same read from the
  run's dataset, which must then still be where the run found it."""
  info = writer.read_data_info()
  if info is not None:
    return info
  print(f"note: {writer.path} has no data.json (older runs did not write one): reading "
        f"the dataset {config.dataset!r} for its class names and image shape.",
        file=sys.stderr, flush=True)
  dataset = inputs.load_full(config)
  return {"class_names": list(dataset.class_names),
          "image_shape": list(dataset.image_shape),
          "image_dtype": str(dataset.train.images.dtype)}
