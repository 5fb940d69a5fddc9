"""The containers that every reader returns, and the errors the data package raises.

Kept free of I/O so that the readers, the cache and the loader can all import it without
import cycles."""

from __future__ import annotations

import dataclasses

import numpy as np

DATA_DIR_ENV = "RESEARCH_DATA_DIR"
CACHE_DIR_ENV = "RESEARCH_CACHE_DIR"
# Base URL(s) of a mirror of the original distributions (research/data/download.py).
DOWNLOAD_MIRROR_ENV = "RESEARCH_DOWNLOAD_MIRROR"
# uint8: pixels in [0, 255], scaled by 1/255 on the device; float32: used as they are.
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


class DataError(Exception):
  """Base class: anything wrong with the data or with where it was looked for."""


class DataNotFoundError(DataError, FileNotFoundError):
  """The dataset was not found; the message lists every place that was tried."""


class CorruptDataError(DataError, ValueError):
  """The data was found but cannot be read; the message names the file or archive member."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held fully in memory."""
  # (N, H, W, C), C=1 for grayscale: uint8 pixels in [0, 255], or float32 real values that
  # are already scaled and are used as they are (e.g. MNIST-1D's sequences, (N, 40, 1, 1)).
  images: np.ndarray
  labels: np.ndarray  # (N,) int32

  def __post_init__(self):
    # Catch reader bugs at the boundary instead of as a shape error deep inside a jitted step.
    if self.images.ndim != 4 or self.images.dtype not in IMAGE_DTYPES:
      raise ValueError(f"images must be (N, H, W, C) uint8 or float32, got "
                       f"{self.images.shape} {self.images.dtype}")
    if self.labels.shape != (len(self.images),) or self.labels.dtype != np.int32:
      raise ValueError(f"labels must be ({len(self.images)},) int32, got {self.labels.shape} "
                       f"{self.labels.dtype}")

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split                # the training split AFTER the validation split was carved out
  validation: Split | None
  test: Split
  class_names: tuple[str, ...]
  source: str                 # where it was read from: a path, or "tfds:mnist"

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train.images.shape[1:])


@dataclasses.dataclass(frozen=True)
class Decoded:
  """What a reader produces before the validation split: the unit that gets cached."""
  train: Split
  test: Split
  class_names: tuple[str, ...]
  skipped: tuple[str, ...] = ()  # bad files left out (config.on_bad_image='skip')
