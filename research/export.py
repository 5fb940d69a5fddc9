"""Exports a trained run's inference function with `jax.export` (StableHLO).

    python -m research.export --workdir DIR --out model.bin [--platforms cpu,cuda,tpu]

writes model.bin, the serialised `jax.export.Exported`, and model.json beside it, the
class names, the input's shape and dtype and the preprocessing. research/exported.py
(or the snippet in docs/deploy.md) runs it with only jax installed: no flax, no model
code, no config.

What is exported: raw pixels in, as the dataset held them (uint8 (N, H, W, C) images at
the run's image size; float32 for MNIST-1D), with a symbolic batch dimension N. Inside
are the run's normalisation, the model in inference mode in the run's compute dtype, and
the weights of its best checkpoint (else the latest) as constants. Out come float32
`logits` and `probabilities` (softmax, or sigmoid for a one-unit binary head). Both are
returned, so that a user needs no flag and no knowledge of the loss, and the logits stay
available for calibration or ensembling. Resizing a photo to the model's size stays
outside, on the host: research.predict does it as the run's loader did.

The exported program is lowered for every platform in --platforms (the default covers
CPU, NVIDIA GPU and TPU) on whatever machine exports it, and runs on any of them. On the
same platform it gives bitwise the live model's logits (tests/test_deploy.py).

A TensorFlow SavedModel (jax2tf) is not offered: docs/deploy.md says why.
"""

import json
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from jax import export as jax_export

from research import data as data_lib
from research import errors
from research import inference

FLAGS = flags.FLAGS
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def export_model(model: inference.RestoredModel,
                 platforms: tuple[str, ...] = ("cpu", "cuda", "tpu")) -> jax_export.Exported:
  """`model`'s inference function on a symbolic batch, its weights as constants.

  The weights pass through an optimisation barrier: XLA would otherwise fold the
  BatchNorm statistics into the layers at compile time, with a square root rounded
  differently from the one the live model computes, and the logits would differ in the
  last bits."""
  infer, weights = model.function(), (model.params, model.batch_stats)
  batch, = jax_export.symbolic_shape("batch")
  images = jax.ShapeDtypeStruct((batch, *model.image_shape), model.image_dtype)
  return jax_export.export(
      jax.jit(lambda x: infer(*jax.lax.optimization_barrier(weights), x)),
      platforms=platforms)(images)


def metadata(model: inference.RestoredModel, exported: jax_export.Exported,
             workdir: str) -> dict:
  """The sidecar: everything a user needs to feed the exported model and read it."""
  config, (height, width, _) = model.config, model.image_shape
  units = int(jax.tree.unflatten(exported.out_tree, exported.out_avals)["logits"].shape[-1])
  pixels = model.image_dtype.name == "uint8"
  return {
      "format": "jax.export.Exported, serialised (StableHLO); load with "
                "jax.export.deserialize or research/exported.py",
      "class_names": list(model.class_names),
      "input": {"shape": [None, *model.image_shape], "dtype": model.image_dtype.name,
                "layout": "NHWC: batch, height, width, channels (1 grey, 3 RGB)",
                "size": [height, width]},
      "preprocessing": {
          "inside": "x / 255, then (x - mean) / std per channel"
                    if pixels else "(x - mean) / std per channel",
          "mean": list(config.normalize_mean), "std": list(config.normalize_std),
          "outside": f"decode, convert to {model.image_shape[-1]} channel(s) and resize "
                     f"to {height}x{width} as the run's loader did "
                     "(research/data/images.py decode_image)"
                     if pixels else "none: the values as the dataset holds them"},
      "outputs": {"logits": [None, units], "probabilities": [None, len(model.class_names)],
                  "probability": "sigmoid" if units == 1 else "softmax"},
      "platforms": list(exported.platforms),
      "run": {"workdir": str(workdir), "checkpoint_step": model.step, "model": config.model,
              "dataset": config.dataset, "compute_dtype": config.compute_dtype,
              "jax": jax.__version__},
  }


def sidecar_path(out: pathlib.Path) -> pathlib.Path:
  """model.bin -> model.json."""
  return out.with_suffix(".json")


def write(exported: jax_export.Exported, meta: dict, out: pathlib.Path) -> None:
  """Writes the model and its sidecar, each whole or not at all."""
  if out.suffix == ".json":
    raise errors.ConfigError(f"--out={out} would be overwritten by its own metadata "
                             f"({sidecar_path(out)}): name the model e.g. model.bin.")
  out.parent.mkdir(parents=True, exist_ok=True)
  for path, data in ((out, bytes(exported.serialize())),
                     (sidecar_path(out), (json.dumps(meta, indent=2) + "\n").encode())):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:   # orbax warns that the checkpoints are read-only
    logging.set_verbosity(logging.ERROR)
  platforms = tuple(p.strip() for p in FLAGS.platforms.split(",") if p.strip())
  try:
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
      raise errors.ConfigError(f"--platforms={FLAGS.platforms!r}: choose among "
                               f"{', '.join(PLATFORMS)}, comma-separated.")
    out = pathlib.Path(FLAGS.out)
    model = inference.restore(FLAGS.workdir)
    exported = export_model(model, platforms)
    write(exported, metadata(model, exported, FLAGS.workdir), out)
  except (errors.UserError, data_lib.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"exported {model.config.model} (checkpoint step {model.step} of {FLAGS.workdir}) "
        f"for {', '.join(platforms)}: {out} ({os.path.getsize(out) / 1e6:.1f} MB), "
        f"metadata in {sidecar_path(out)}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The trained run's directory.", required=True)
  flags.DEFINE_string("out", None, "Where to write the exported model, e.g. model.bin; "
                      "its metadata goes beside it, as model.json.", required=True)
  flags.DEFINE_string("platforms", "cpu,cuda,tpu", "Platforms to lower for, comma-"
                      f"separated among {', '.join(PLATFORMS)}; the model runs on these.")
  jax.config.update("jax_platforms", "cpu")   # lowering needs no accelerator
  app.run(main)
