"""The original CIFAR-10 / CIFAR-100 distributions, python-pickle and binary versions.

Both store each image as 3072 bytes in CHW order (1024 red, 1024 green, 1024 blue); we
return HWC like every other reader. The readers take `blobs` (file base name -> bytes) so
that an extracted folder and a streamed .tar.gz share one code path."""

from __future__ import annotations

import io
import pickle
import re

import numpy as np

from research.data.types import CorruptDataError, Decoded, Split

PIXELS = 32 * 32 * 3
_PICKLE_BATCH = re.compile(r"^data_batch_(\d+)$")
_BINARY_BATCH = re.compile(r"^data_batch_(\d+)\.bin$")
_SMALL_FILES = {"batches.meta", "meta", "batches.meta.txt", "fine_label_names.txt",
                "coarse_label_names.txt"}
_BATCH_FILES = {"test_batch", "train", "test", "test_batch.bin", "train.bin", "test.bin"}


def is_cifar_file(basename: str) -> bool:
  return (basename in _SMALL_FILES or basename in _BATCH_FILES
          or bool(_PICKLE_BATCH.match(basename) or _BINARY_BATCH.match(basename)))


def detect(names) -> str | None:
  """Which CIFAR variant a set of file base names is, or None."""
  names = set(names)
  if "test_batch" in names and any(_PICKLE_BATCH.match(n) for n in names):
    return "cifar10_pickle"
  if {"train", "test", "meta"} <= names:
    return "cifar100_pickle"
  if "test_batch.bin" in names and any(_BINARY_BATCH.match(n) for n in names):
    return "cifar10_binary"
  if {"train.bin", "test.bin"} <= names:
    return "cifar100_binary"
  return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickling can run arbitrary code; the CIFAR batches only need numpy arrays, so allow
  exactly the numpy constructors (and the bytes constructors that protocol-2 pickles written
  by Python 3 use) and nothing else."""
  _ALLOWED = {("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
              ("numpy._core.multiarray", "scalar")}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a CIFAR batch")
    if module == "numpy.core.multiarray":  # the name numpy 1.x wrote; numpy 2 moved it
      module = "numpy._core.multiarray" if hasattr(np, "_core") else module
    return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
  try:
    # The batches were written by Python 2: "bytes" keeps its str keys as bytes.
    loaded = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:
    raise CorruptDataError(f"cannot unpickle {where}: {type(e).__name__}: {e}") from e
  if not isinstance(loaded, dict):
    raise CorruptDataError(f"{where}: expected a pickled dict, got {type(loaded).__name__}")
  # Accept both bytes keys (the originals) and str keys (re-pickled under Python 3).
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in loaded.items()}


def _names(values) -> tuple[str, ...]:
  return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _to_split(pixels: np.ndarray, labels, where: str) -> Split:
  pixels = np.asarray(pixels)
  labels = np.asarray(labels)
  if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != PIXELS:
    raise CorruptDataError(f"{where}: 'data' is {pixels.shape} {pixels.dtype}, expected "
                           f"(N, {PIXELS}) uint8")
  if labels.shape != (len(pixels),):
    raise CorruptDataError(f"{where}: {len(pixels)} images but {labels.size} labels")
  images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC
  return Split(np.ascontiguousarray(images), labels.astype(np.int32))


def _concat(splits: list[Split]) -> Split:
  return Split(np.concatenate([s.images for s in splits]),
               np.concatenate([s.labels for s in splits]))


def _pickle_split(blobs, name: str, label_key: str) -> Split:
  data, where = blobs[name]
  batch = _unpickle(data, where)
  if "data" not in batch or label_key not in batch:
    raise CorruptDataError(f"{where}: missing 'data' or '{label_key}' (keys: {sorted(batch)})")
  return _to_split(batch["data"], batch[label_key], where)


def _binary_split(blobs, name: str, label_bytes: int) -> Split:
  data, where = blobs[name]
  record = label_bytes + PIXELS
  if len(data) == 0 or len(data) % record:
    raise CorruptDataError(
        f"{where}: truncated or corrupt: {len(data)} bytes is not a whole number of "
        f"{record}-byte records (expected {record} x N bytes, e.g. {record * 10000} for a full "
        f"batch); download the file again")
  records = np.frombuffer(data, np.uint8).reshape(-1, record)
  # CIFAR-100 stores (coarse, fine) label bytes; the fine label is the last one.
  return _to_split(records[:, label_bytes:], records[:, label_bytes - 1], where)


def _batch_order(pattern, blobs) -> list[str]:
  return sorted((n for n in blobs if pattern.match(n)), key=lambda n: int(pattern.match(n)[1]))


def read_cifar(kind: str, blobs: dict[str, tuple[bytes, str]], source: str) -> Decoded:
  """blobs: file base name -> (bytes, name for messages)."""
  if kind == "cifar10_pickle":
    train = _concat([_pickle_split(blobs, n, "labels") for n in _batch_order(_PICKLE_BATCH, blobs)])
    test = _pickle_split(blobs, "test_batch", "labels")
    meta = _unpickle(*blobs["batches.meta"]) if "batches.meta" in blobs else {}
    class_names = _names(meta.get("label_names", range(10)))
  elif kind == "cifar100_pickle":
    train = _pickle_split(blobs, "train", "fine_labels")
    test = _pickle_split(blobs, "test", "fine_labels")
    class_names = _names(_unpickle(*blobs["meta"]).get("fine_label_names", range(100)))
  elif kind == "cifar10_binary":
    train = _concat([_binary_split(blobs, n, 1) for n in _batch_order(_BINARY_BATCH, blobs)])
    test = _binary_split(blobs, "test_batch.bin", 1)
    class_names = _text_names(blobs, "batches.meta.txt", 10)
  elif kind == "cifar100_binary":
    train = _binary_split(blobs, "train.bin", 2)
    test = _binary_split(blobs, "test.bin", 2)
    class_names = _text_names(blobs, "fine_label_names.txt", 100)
  else:
    raise ValueError(kind)
  top = int(max(train.labels.max(), test.labels.max()))
  if top >= len(class_names):
    raise CorruptDataError(f"{source}: label {top} is out of range for the "
                           f"{len(class_names)} class names in its meta file")
  return Decoded(train, test, class_names)


def _text_names(blobs, name: str, default: int) -> tuple[str, ...]:
  if name not in blobs:
    return tuple(str(i) for i in range(default))
  data, where = blobs[name]
  lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
  return tuple(line for line in lines if line)
