"""Runs a model written by research.export with only jax installed (and flatbuffers,
which jax.export's deserialisation needs): no flax, no model code, no config. It imports
nothing else of this project, so it also works as a copy of this one file.

    from research import exported
    model = exported.load("model.bin")          # reads model.json beside it too
    out = model(images)                         # uint8 (N, H, W, C) at model.input_shape
    names = [model.class_names[i] for i in out["probabilities"].argmax(-1)]

The images must already have the model's size and channels (model.json's "input"):
research.predict does that for image files, as the run's loader did.
"""

import json
import os
import pathlib

from jax import export
import numpy as np


class ExportedModel:
  """The deserialised program and its metadata; calling it runs the program."""

  def __init__(self, path: str | os.PathLike):
    path = pathlib.Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
      raise FileNotFoundError(f"{sidecar} not found: research.export writes it beside "
                              f"{path.name}, with the class names; keep the two together.")
    self.metadata = json.loads(sidecar.read_text())
    self.exported = export.deserialize(bytearray(path.read_bytes()))
    self.class_names = tuple(self.metadata["class_names"])
    self.input_shape = tuple(self.metadata["input"]["shape"][1:])
    self.input_dtype = np.dtype(self.metadata["input"]["dtype"])

  def __call__(self, images) -> dict[str, np.ndarray]:
    """{'logits', 'probabilities'} for a batch of images as numpy arrays."""
    images = np.asarray(images)
    if images.shape[1:] != self.input_shape or images.dtype != self.input_dtype:
      raise ValueError(
          f"the model takes {self.input_dtype} images of shape (N, "
          f"{', '.join(map(str, self.input_shape))}), got {images.dtype} {images.shape}: "
          f"{self.metadata['preprocessing']['outside']}.")
    return {name: np.asarray(value) for name, value in self.exported.call(images).items()}


def load(path: str | os.PathLike) -> ExportedModel:
  return ExportedModel(path)
