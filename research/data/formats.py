"""Recognise which on-disk layout a file or folder holds, fingerprint it for the cache, and
read it. Detection only looks at names (cheap); the readers validate contents."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import tarfile
import zipfile

from research.data import cifar, idx
from research.data.archives import is_tar_name, is_zip_name, read_tar, read_zip
from research.data.images import ImageOptions, find_tree_root, image_files, read_image_folder
from research.data.types import CorruptDataError, Decoded


@dataclasses.dataclass(frozen=True)
class Format:
  kind: str             # "tar" | "zip" | "image_dir" | "idx_dir" | "cifar_dir"
  path: pathlib.Path    # the archive, or the folder that holds the files
  detail: str = ""      # the CIFAR variant for "cifar_dir"


def detect(path: pathlib.Path, depth: int = 1) -> Format | None:
  """The layout at `path`, or None if it is not a dataset this loader can read."""
  if path.is_file():
    return _detect_archive(path)
  if not path.is_dir():
    return None
  root = find_tree_root(path)
  if root is not None:
    return Format("image_dir", root)
  names = os.listdir(path)
  if any(idx.role_of(n) for n in names):
    return Format("idx_dir", path)
  kind = cifar.detect(names)
  if kind:
    return Format("cifar_dir", path, kind)
  # An extracted archive often adds one folder level (cifar10/cifar-10-batches-py/...).
  subdirs = [path / n for n in names if not n.startswith(".") and (path / n).is_dir()]
  if depth > 0 and len(subdirs) == 1:
    return detect(subdirs[0], depth - 1)
  return None


def _detect_archive(path: pathlib.Path) -> Format | None:
  """By the name first; a file without a known suffix by its content."""
  if is_tar_name(path):
    return Format("tar", path)
  if is_zip_name(path):
    return Format("zip", path)
  try:
    if tarfile.is_tarfile(path):
      return Format("tar", path)
    return Format("zip", path) if zipfile.is_zipfile(path) else None
  except OSError:
    return None


def _files(fmt: Format) -> list[pathlib.Path]:
  if fmt.kind == "image_dir":
    return [p for _, _, p in image_files(fmt.path)]
  if fmt.kind == "idx_dir":
    return sorted(idx.find_idx_files(fmt.path).values())
  if fmt.kind == "cifar_dir":
    return sorted(p for p in fmt.path.iterdir() if p.is_file() and cifar.is_cifar_file(p.name))
  return [fmt.path]


def fingerprint(fmt: Format) -> str:
  """Changes whenever the data does. A single archive is hashed by content (fast for
  archives of tens of MB); a folder of many files by relative path, size and mtime, which is what
  changes when a file is replaced, without reading 60k files."""
  digest = hashlib.sha256(f"{fmt.kind}\0{fmt.detail}\0".encode())
  if fmt.kind in ("tar", "zip"):
    with open(fmt.path, "rb") as f:
      while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
  for path in _files(fmt):
    stat = path.stat()
    digest.update(f"{path.relative_to(fmt.path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def _blob(path: pathlib.Path) -> tuple[bytes, str]:
  try:
    return path.read_bytes(), str(path)
  except OSError as e:
    raise CorruptDataError(f"cannot read {path}: {e}") from e


def read(fmt: Format, idx_class_names: tuple[str, ...] | None,
         options: ImageOptions = ImageOptions()) -> tuple[Decoded, str]:
  """(decoded data, a description of the layout, for Dataset.source). `options` apply to
  image files; the loader converts the other layouts' arrays afterwards."""
  if fmt.kind == "tar":
    return read_tar(fmt.path, idx_class_names, options)
  if fmt.kind == "zip":
    return read_zip(fmt.path, idx_class_names, options)
  if fmt.kind == "image_dir":
    return read_image_folder(fmt.path, options), "image folder"
  if fmt.kind == "idx_dir":
    files = idx.find_idx_files(fmt.path)
    blobs = {role: _blob(path) for role, path in files.items()}
    return idx.read_idx(blobs, idx_class_names, str(fmt.path)), "IDX files"
  if fmt.kind == "cifar_dir":
    return cifar.read_cifar(fmt.detail, {p.name: _blob(p) for p in _files(fmt)},
                            str(fmt.path)), fmt.detail
  raise ValueError(fmt.kind)
