"""tensorflow-datasets as a source, when it is installed (`pip install -e '.[tfds]'`).

We read through `tfds.data_source` (random access over ArrayRecord files, which needs no
TensorFlow) and fall back to `tfds.load(batch_size=-1)` when TensorFlow is installed and the
data was prepared as TFRecord. Nothing here may hang on a machine without internet: data
already on disk is tried with download=False first, and a download is attempted only when a
short connection probe succeeds."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import socket
from typing import Callable

import numpy as np

from research.data.types import Decoded, Split

log = logging.getLogger(__name__)

TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
              "cifar100": "cifar100"}
_PROBE_HOST, _PROBE_TIMEOUT_S = ("storage.googleapis.com", 443), 3.0


class TfdsUnavailable(Exception):
  """tfds could not provide the data; `reasons` says why, for the not-found message."""

  def __init__(self, reasons: list[str]):
    super().__init__("; ".join(reasons))
    self.reasons = reasons


def installed() -> bool:
  return importlib.util.find_spec("tensorflow_datasets") is not None


def network_reachable() -> bool:
  try:
    with socket.create_connection(_PROBE_HOST, timeout=_PROBE_TIMEOUT_S):
      return True
  except OSError:
    return False


@dataclasses.dataclass
class Opened:
  """tfds data found but not yet read, so that the cache can be consulted first."""
  read: Callable[[], Decoded]
  fingerprint: str | None  # None: do not cache (mocked data, or read through TensorFlow)


def _fingerprint(info) -> str | None:
  try:
    data_dir = os.fspath(info.data_dir)
    files = sorted(os.listdir(data_dir))
  except Exception:
    return None
  digest = hashlib.sha256(f"tfds\0{info.full_name}\0{data_dir}\n".encode())
  for name in files:
    stat = os.stat(os.path.join(data_dir, name))
    digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def _label_names(info) -> tuple[str, ...]:
  try:
    return tuple(info.features["label"].names)
  except Exception:
    return ()


def _split(images, labels) -> Split:
  images = np.asarray(images, np.uint8)
  return Split(images[..., None] if images.ndim == 3 else images, np.asarray(labels, np.int32))


def _read_source(source) -> Split:
  n = len(source)
  try:
    records = source.__getitems__(list(range(n)))  # one batched read: much faster
  except Exception:
    records = [source[i] for i in range(n)]
  if not records:
    raise TfdsUnavailable([f"tfds split {getattr(source, 'split', '?')} is empty"])
  return _split(np.stack([np.asarray(r["image"]) for r in records]),
                [int(r["label"]) for r in records])


def _decoded(train: Split, test: Split, names: tuple[str, ...]) -> Decoded:
  top = int(max(train.labels.max(), test.labels.max()))
  if len(names) <= top:
    names = tuple(str(i) for i in range(top + 1))
  return Decoded(train, test, names)


def open_splits(name: str, data_dir: str | None) -> Opened:
  import tensorflow_datasets as tfds  # optional dependency: import only when asked for

  tfds_name = TFDS_NAMES.get(name, name)
  reasons = []

  def via_data_source(download: bool) -> Opened:
    train, test = tfds.data_source(tfds_name, split=["train", "test"], data_dir=data_dir,
                                   download=download)
    info = train.dataset_info
    return Opened(lambda: _decoded(_read_source(train), _read_source(test), _label_names(info)),
                  _fingerprint(info))

  def via_tensorflow() -> Opened:
    # Data prepared as TFRecord (the tfds default) is only readable through TensorFlow.
    (train, test), info = tfds.load(tfds_name, split=["train", "test"], data_dir=data_dir,
                                    batch_size=-1, download=False, with_info=True)
    train, test = tfds.as_numpy(train), tfds.as_numpy(test)
    return Opened(lambda: _decoded(_split(train["image"], train["label"]),
                                   _split(test["image"], test["label"]), _label_names(info)),
                  None)

  attempts = [("tfds.data_source(download=False)", lambda: via_data_source(False))]
  if importlib.util.find_spec("tensorflow") is not None:
    attempts.append(("tfds.load(download=False)", via_tensorflow))
  for what, attempt in attempts:
    try:
      return attempt()
    except Exception as e:
      reasons.append(f"{what} for '{tfds_name}' (data_dir={data_dir or 'tfds default'}) "
                     f"failed: {type(e).__name__}: {str(e)[:300]}")
  if not network_reachable():
    reasons.append(f"no download attempted: no network ({_PROBE_HOST[0]} unreachable within "
                   f"{_PROBE_TIMEOUT_S:.0f} s)")
    raise TfdsUnavailable(reasons)
  log.info("downloading %s with tensorflow-datasets", tfds_name)
  try:
    return via_data_source(True)
  except Exception as e:
    reasons.append(f"tfds download of '{tfds_name}' failed: {type(e).__name__}: {str(e)[:300]}")
  raise TfdsUnavailable(reasons)
