"""MNIST-family IDX files (MNIST, Fashion-MNIST, KMNIST...), optionally gzipped.

Format (big-endian): two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, one uint32 per dimension, then the raw values. The header says exactly how long
the file must be, so truncation is detected before any pixel is used."""

from __future__ import annotations

import gzip
import pathlib
import re
import zlib

import numpy as np

from research.data.types import CorruptDataError, Decoded, Split

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

# role -> (file prefix, number of dimensions)
ROLES = {
    "train_images": ("train-images", 3),
    "train_labels": ("train-labels", 1),
    "test_images": ("t10k-images", 3),
    "test_labels": ("t10k-labels", 1),
}
# "train-images-idx3-ubyte", the dotted variant "train-images.idx3-ubyte", each maybe ".gz".
_NAME = re.compile(r"^(train-images|train-labels|t10k-images|t10k-labels)[-.]idx([13])-ubyte"
                   r"(\.gz)?$")


def role_of(filename: str) -> str | None:
  match = _NAME.match(filename.lower())
  if not match:
    return None
  return next(role for role, (prefix, _) in ROLES.items() if prefix == match.group(1))


def find_idx_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  """role -> path for the IDX files in `directory`; uncompressed copies win over .gz."""
  found = {}
  for path in sorted(directory.iterdir(), key=lambda p: (p.name.endswith(".gz"), p.name)):
    role = role_of(path.name)
    if role and role not in found and path.is_file():
      found[role] = path
  return found


def _decompress(data: bytes, where: str) -> bytes:
  if data[:2] != b"\x1f\x8b":  # gzip magic: trust the bytes, not the file name
    return data
  try:
    return gzip.decompress(data)
  except (EOFError, OSError, zlib.error) as e:
    raise CorruptDataError(f"{where}: truncated or corrupt gzip stream ({e}); "
                           f"download the file again") from e


def parse_idx(data: bytes, where: str, ndim: int) -> np.ndarray:
  """Validated IDX bytes (possibly gzipped) -> uint8 array of `ndim` dimensions."""
  data = _decompress(data, where)
  if len(data) < 4:
    raise CorruptDataError(f"{where}: file is {len(data)} bytes, too short for an IDX header")
  zero, type_code, file_ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
  expected_magic = 0x0800 | ndim
  if zero != 0 or type_code != 0x08 or file_ndim != ndim:
    raise CorruptDataError(
        f"{where}: bad IDX magic number 0x{int.from_bytes(data[:4], 'big'):08x}, expected "
        f"0x{expected_magic:08x} (unsigned bytes, {ndim} dimension(s)); is this the right file?")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise CorruptDataError(f"{where}: truncated: expected at least {header} bytes of header, "
                           f"got {len(data)} bytes")
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  expected = header + int(np.prod(dims))
  if len(data) != expected:
    state = "truncated" if len(data) < expected else "has trailing bytes"
    raise CorruptDataError(f"{where}: {state}: header says {dims} so expected {expected} bytes, "
                           f"got {len(data)} bytes; download the file again")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_idx(blobs: dict[str, tuple[bytes, str]], class_names: tuple[str, ...] | None,
             source: str) -> Decoded:
  """blobs: role -> (bytes, name for messages) for all four roles."""
  missing = [ROLES[r][0] for r in ROLES if r not in blobs]
  if missing:
    raise CorruptDataError(f"{source}: IDX files for {missing} are missing; expected "
                           f"train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                           f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each maybe .gz)")
  arrays = {role: parse_idx(blobs[role][0], blobs[role][1], ROLES[role][1]) for role in ROLES}
  splits = {}
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if len(images) != len(labels):
      raise CorruptDataError(f"{blobs[split + '_images'][1]} holds {len(images)} images but "
                             f"{blobs[split + '_labels'][1]} holds {len(labels)} labels")
    if len(images) == 0:
      raise CorruptDataError(f"{blobs[split + '_images'][1]} holds no images")
    splits[split] = Split(np.ascontiguousarray(images[..., None]), labels.astype(np.int32))
  top = int(max(splits["train"].labels.max(), splits["test"].labels.max()))
  if class_names is None:
    class_names = tuple(str(i) for i in range(top + 1))
  elif top >= len(class_names):
    raise CorruptDataError(f"{source}: label {top} is out of range for {len(class_names)} "
                           f"classes")
  return Decoded(splits["train"], splits["test"], tuple(class_names))
