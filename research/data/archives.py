"""Tar archives (.tar, .tar.gz/.tgz, .tar.xz, .tar.bz2) and zip archives of any supported
layout, read without extracting anything to disk.

The shared archives are xz-compressed, where seeking means decompressing again from the
start, so a tar is read in ONE streaming pass (mode "r|*"): images are decoded as their
members go by, and the few CIFAR/IDX files are kept as bytes and parsed at the end. A zip
has a central directory, and its members are read one at a time the same way."""

from __future__ import annotations

import lzma
import pathlib
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator

from research.data import cifar, idx
from research.data.images import SPLITS, ImageCollector, ImageOptions, is_class_member
from research.data.types import CorruptDataError, Decoded

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
ZIP_SUFFIXES = (".zip",)
# macOS's Finder zips a copy of every file's metadata under this folder.
_MACOS_METADATA = "__MACOSX"

# (member name, its size, a function that reads its bytes)
Member = tuple[str, int, Callable[[], bytes]]


def is_tar_name(path: pathlib.Path) -> bool:
  return path.name.lower().endswith(TAR_SUFFIXES)


def is_zip_name(path: pathlib.Path) -> bool:
  return path.name.lower().endswith(ZIP_SUFFIXES)


def members(path: pathlib.Path) -> Iterator[Member]:
  """Every file member of a zip, or of a tar in one streaming pass; a member's bytes can
  be read only while it is the current one."""
  if is_zip_name(path):
    with zipfile.ZipFile(path) as zip_file:
      for info in zip_file.infolist():
        if not info.is_dir():
          yield info.filename, info.file_size, lambda info=info: zip_file.read(info)
  else:
    with tarfile.open(path, mode="r|*") as tar:
      for m in tar:
        if m.isfile():
          yield m.name, m.size, lambda m=m: tar.extractfile(m).read()


def read_tar(path: pathlib.Path, idx_class_names: tuple[str, ...] | None,
             options: ImageOptions = ImageOptions()) -> tuple[Decoded, str]:
  """(decoded data, a description of the layout that was found)."""
  try:
    return _read_members(path, "tar", members(path), idx_class_names, options)
  except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as e:
    raise CorruptDataError(f"cannot read archive {path}: {type(e).__name__}: {e}; the archive is "
                           f"truncated or corrupt, download it again") from e


def read_zip(path: pathlib.Path, idx_class_names: tuple[str, ...] | None,
             options: ImageOptions = ImageOptions()) -> tuple[Decoded, str]:
  """As read_tar, for a zip archive; each member is decompressed in memory."""
  try:
    return _read_members(path, "zip", members(path), idx_class_names, options)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error,
          NotImplementedError) as e:
    raise CorruptDataError(f"cannot read archive {path}: {type(e).__name__}: {e}; the archive is "
                           f"truncated, corrupt or compressed with a method Python's zipfile "
                           f"does not support") from e


def _read_members(path: pathlib.Path, archive: str, members: Iterator[Member],
                  idx_class_names: tuple[str, ...] | None,
                  options: ImageOptions) -> tuple[Decoded, str]:
  collector = ImageCollector(str(path), options)
  cifar_blobs, idx_blobs = {}, {}
  tree_prefix = None
  for name, size, read in members:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or parts[0] == _MACOS_METADATA:
      continue
    base, where = parts[-1], f"{path}:{name}"
    is_image = len(parts) >= 3 and parts[-3] in SPLITS and is_class_member(base)
    if not (is_image or cifar.is_cifar_file(base) or idx.role_of(base)):
      continue  # READMEs, licences, checksums...
    data = read()
    if len(data) != size:
      raise CorruptDataError(f"{where}: truncated member: expected {size} bytes, "
                             f"got {len(data)} bytes")
    if is_image:
      # Everything before <split>/<class>/<file> is a prefix such as "mnist-png/"; two
      # different prefixes would mean two datasets mixed in one archive.
      prefix = tuple(parts[:-3])
      if tree_prefix is None:
        tree_prefix = prefix
      elif prefix != tree_prefix:
        raise CorruptDataError(
            f"{where}: archive {path} holds more than one image tree "
            f"('{'/'.join(tree_prefix)}/' and '{'/'.join(prefix)}/'); keep one dataset per "
            f"archive")
      collector.add(parts[-3], parts[-2], data, where)
    elif cifar.is_cifar_file(base):
      cifar_blobs[base] = (data, where)
    else:
      idx_blobs[idx.role_of(base)] = (data, where)
  return _finish(path, archive, collector, cifar_blobs, idx_blobs, idx_class_names)


def _finish(path, archive, collector, cifar_blobs, idx_blobs,
            idx_class_names) -> tuple[Decoded, str]:
  """The dataset the members held (archive: "tar" or "zip", for the description)."""
  if any(collector.images.values()) or collector.skipped:
    return collector.finish(), f"image-folder {archive}"
  kind = cifar.detect(cifar_blobs)
  if kind:
    return cifar.read_cifar(kind, cifar_blobs, str(path)), f"{kind} {archive}"
  if idx_blobs:
    return idx.read_idx(idx_blobs, idx_class_names, str(path)), f"IDX {archive}"
  raise CorruptDataError(
      f"archive {path} holds no dataset this loader knows: expected train/<class>/<image> and "
      f"test/<class>/<image>, CIFAR batches (data_batch_1.., test_batch), or MNIST IDX files")
