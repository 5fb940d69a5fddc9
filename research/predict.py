"""Predicts the classes of image files with a trained run.

    python -m research.predict --workdir DIR [--top_k 3] [--output preds.csv|preds.jsonl]
                               PATH [PATH ...]

A PATH is an image file, a folder (every file under it, recursively) or a tar/zip
archive (every member). The run's model is rebuilt from its config.json and restored from
its best checkpoint, else the latest (research/inference.py). Each image is decoded as
the run's loader decoded its data: upright (EXIF), converted to the run's channels and
resized with the same antialiasing filter to the run's image size, so a photo of any
size and mode works. The top-k classes, with their names and probabilities, are printed
one line per image; --output also writes them, one row per image.

A file that is not an image, or is corrupt, is named and skipped. The exit status is 0
when at least one image was predicted, 1 when none could be, and 2 for bad flags or a
workdir without a readable run.

It runs on the CPU by default, whatever backend the run trained on: the checkpoints
restore onto any device (--platform=auto uses JAX's default backend instead).
"""

from collections.abc import Iterator
import csv
import dataclasses
import io
import json
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from research import data as data_lib
from research import errors
from research import inference
from research import runtime
from research.data import archives
from research.data import images as images_lib

FLAGS = flags.FLAGS
OUTPUT_FORMATS = (".csv", ".jsonl")


@dataclasses.dataclass(frozen=True)
class Prediction:
  image: str                              # the file, or archive:member
  top: tuple[tuple[str, float], ...]      # (class name, probability), most likely first


def image_files(paths: list[str]) -> Iterator[tuple[str, bytes | str]]:
  """(where, the file's bytes or why they cannot be read) for every file that `paths`
  name: files as given, folders recursively in sorted order, archives member by member;
  hidden and system files (.DS_Store, macOS's ._ forks, Thumbs.db) are left out."""
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if images_lib.is_class_member(file.name):
          yield str(file), _read(file)
    elif archives.is_tar_name(path) or archives.is_zip_name(path):
      yield from _archive_members(path)
    elif path.exists():
      yield str(path), _read(path)
    else:
      yield str(path), "no such file or folder"


def _read(path: pathlib.Path) -> bytes | str:
  try:
    return path.read_bytes()
  except OSError as e:
    return f"cannot read it: {e.strerror or e}"


def _archive_members(path: pathlib.Path) -> Iterator[tuple[str, bytes | str]]:
  """Every file member of a tar (streamed) or zip archive; a corrupt archive ends with
  why."""
  try:
    for name, _, read in archives.members(path):
      if images_lib.is_class_member(name):
        yield f"{path}:{name}", read()
  except Exception as e:  # pylint: disable=broad-except  (tarfile, zipfile, lzma, zlib...)
    yield str(path), f"cannot read the archive: {type(e).__name__}: {e}"


def predict(model: inference.RestoredModel, files: Iterator[tuple[str, bytes | str]],
            top_k: int, batch_size: int = 64) -> Iterator[Prediction | str]:
  """A Prediction per image, or for a file that cannot be predicted, a message naming
  it. Images go through the model `batch_size` at a time, the last batch padded, so
  that one program serves every batch."""
  height, width, channels = model.image_shape
  batch, names = [], []
  for where, data in files:
    if isinstance(data, str):
      yield f"skipped {where}: {data}"
      continue
    try:
      batch.append(images_lib.decode_image(data, where, size=(height, width),
                                           channels=channels))
    except data_lib.DataError as e:   # names `where` itself
      yield f"skipped: {e}"
      continue
    names.append(where)
    if len(batch) == batch_size:
      yield from _predict_batch(model, names, batch, top_k, batch_size)
      batch, names = [], []
  if batch:
    yield from _predict_batch(model, names, batch, top_k, batch_size)


def _predict_batch(model, names, batch, top_k, batch_size) -> list[Prediction]:
  padded = np.zeros((batch_size, *model.image_shape), np.uint8)
  padded[:len(batch)] = batch
  probabilities = np.asarray(jax.device_get(model(padded)["probabilities"]))[:len(batch)]
  order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
  return [Prediction(name, tuple((model.class_names[k], float(p[k])) for k in top))
          for name, p, top in zip(names, probabilities, order)]


def write_output(predictions: list[Prediction], path: pathlib.Path) -> None:
  """One row per image: CSV columns image, class_1, probability_1, ...; or JSON lines
  {"image": ..., "top": [{"class": ..., "probability": ...}, ...]}. Written whole or
  not at all."""
  if path.suffix == ".csv":
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    k = max(len(p.top) for p in predictions)
    writer.writerow(["image"] + [f"{c}_{i}" for i in range(1, k + 1)
                                 for c in ("class", "probability")])
    for p in predictions:
      writer.writerow([p.image] + [x for name, prob in p.top for x in (name, f"{prob:.6g}")])
    content = text.getvalue()
  else:
    content = "".join(json.dumps({"image": p.image, "top": [
        {"class": name, "probability": prob} for name, prob in p.top]}) + "\n"
                      for p in predictions)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(content)
  tmp.replace(path)


def _check_flags() -> pathlib.Path | None:
  if FLAGS.output and pathlib.Path(FLAGS.output).suffix not in OUTPUT_FORMATS:
    raise errors.ConfigError(f"--output={FLAGS.output}: name a .csv or .jsonl file.")
  if FLAGS.platform == "cpu":
    jax.config.update("jax_platforms", "cpu")
  else:
    runtime.check_platform(FLAGS.platform)
  return pathlib.Path(FLAGS.output) if FLAGS.output else None


def _restore() -> inference.RestoredModel:
  model = inference.restore(FLAGS.workdir)
  if model.image_dtype != np.uint8:
    raise errors.ConfigError(f"{FLAGS.workdir} was trained on {model.image_dtype} data "
                             f"({model.config.dataset}), not on images: research.predict "
                             "takes image files.")
  return model


def main(argv) -> None:
  paths = argv[1:]
  if not paths:
    raise app.UsageError("name at least one image file, folder or archive to predict.")
  if not FLAGS["verbosity"].present:   # orbax warns that the checkpoints are read-only
    logging.set_verbosity(logging.ERROR)
  try:
    output = _check_flags()
    model = _restore()
  except (errors.UserError, data_lib.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  top_k = min(FLAGS.top_k, len(model.class_names))
  predictions, skipped = [], 0
  for result in predict(model, image_files(paths), top_k, FLAGS.batch_size):
    if isinstance(result, str):
      print(result, file=sys.stderr, flush=True)
      skipped += 1
      continue
    predictions.append(result)
    print(f"{result.image}: " + ", ".join(f"{name} {prob:.3f}" for name, prob in result.top),
          flush=True)
  if output and predictions:
    write_output(predictions, output)
  print(f"{len(predictions)} image(s) predicted with checkpoint step {model.step} of "
        f"{FLAGS.workdir}" + (f", {skipped} skipped" if skipped else "")
        + (f"; rows in {output}" if output and predictions else ""), file=sys.stderr)
  sys.exit(0 if predictions else 1)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The trained run's directory.", required=True)
  flags.DEFINE_integer("top_k", 3, "Classes to show per image, most likely first (at most "
                       "the number of classes).", lower_bound=1)
  flags.DEFINE_string("output", None, "Also write one row per image to this .csv or "
                      ".jsonl file.")
  flags.DEFINE_integer("batch_size", 64, "Images per call of the model.", lower_bound=1)
  flags.DEFINE_enum("platform", "cpu", runtime.PLATFORMS, "Where to run: cpu (default, "
                    "for a run trained on any backend), or auto, gpu, tpu.")
  app.run(main)
