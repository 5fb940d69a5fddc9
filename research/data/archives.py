"""Tar archives (.tar, .tar.gz/.tgz, .tar.xz, .tar.bz2) of any supported layout.

The shared archives are xz-compressed, where seeking means decompressing again from the
start, so the archive is read in ONE streaming pass (mode "r|*"): images are decoded as their
members go by, and the few CIFAR/IDX files are kept as bytes and parsed at the end."""

from __future__ import annotations

import lzma
import pathlib
import tarfile
import zlib

from research.data import cifar, idx
from research.data.images import SPLITS, ImageCollector, is_image_name
from research.data.types import CorruptDataError, Decoded

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


def is_tar_name(path: pathlib.Path) -> bool:
  return path.name.lower().endswith(TAR_SUFFIXES)


def read_tar(path: pathlib.Path, idx_class_names: tuple[str, ...] | None) -> tuple[Decoded, str]:
  """(decoded data, a description of the layout that was found)."""
  collector = ImageCollector(str(path))
  cifar_blobs, idx_blobs = {}, {}
  tree_prefix = None
  try:
    with tarfile.open(path, mode="r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        parts = [p for p in member.name.split("/") if p not in ("", ".")]
        if not parts:
          continue
        base, where = parts[-1], f"{path}:{member.name}"
        is_image = is_image_name(base) and len(parts) >= 3 and parts[-3] in SPLITS
        if not (is_image or cifar.is_cifar_file(base) or idx.role_of(base)):
          continue  # READMEs, licences, checksums...
        data = tar.extractfile(member).read()
        if len(data) != member.size:
          raise CorruptDataError(f"{where}: truncated member: expected {member.size} bytes, "
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
  except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as e:
    raise CorruptDataError(f"cannot read archive {path}: {type(e).__name__}: {e}; the archive is "
                           f"truncated or corrupt, download it again") from e

  if any(collector.images.values()):
    return collector.finish(), "image-folder tar"
  kind = cifar.detect(cifar_blobs)
  if kind:
    return cifar.read_cifar(kind, cifar_blobs, str(path)), f"{kind} tar"
  if idx_blobs:
    return idx.read_idx(idx_blobs, idx_class_names, str(path)), "IDX tar"
  raise CorruptDataError(
      f"archive {path} holds no dataset this loader knows: expected train/<class>/<image> and "
      f"test/<class>/<image>, CIFAR batches (data_batch_1.., test_batch), or MNIST IDX files")
