"""`load_dataset`: find the data (local files, then tensorflow-datasets), decode it once,
cache it, and carve the validation split."""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import sys
import time

from research.data import cache as cache_lib
from research.data import formats, locate, splits, tfds_source
from research.data.idx import FASHION_MNIST_CLASSES
from research.data.types import (DATA_DIR_ENV, DataError, DataNotFoundError, Dataset, Decoded)

log = logging.getLogger(__name__)

SOURCES = ("auto", "local", "tfds")
KNOWN = ("mnist", "fashion_mnist", "cifar10", "cifar100")
# IDX files carry no class names; these are the published ones.
_IDX_CLASS_NAMES = {"mnist": tuple(str(i) for i in range(10)),
                    "fashion_mnist": FASHION_MNIST_CLASSES}


def load_dataset(name: str, data_dir: str | None = None, *, source: str = "auto",
                 validation_size: float | int = 0, split_seed: int = 0,
                 cache: bool = True) -> Dataset:
  """Loads a whole dataset into memory as uint8 images and int32 labels.

  name: mnist, fashion_mnist, cifar10, cifar100, "folder" (data_dir is then the dataset's
    own folder or archive), or any other name, looked for as a folder/archive in data_dir.
  data_dir: a folder holding datasets by name, or the dataset's own folder/archive;
    defaults to $RESEARCH_DATA_DIR.
  source: "auto" (local files if found, else tensorflow-datasets), "local" or "tfds".
  validation_size: fraction in (0, 1) or count of train examples held out (stratified,
    seeded by split_seed); 0 for no validation split.
  cache: keep decoded arrays in $RESEARCH_CACHE_DIR (default ~/.cache/research/datasets).
  """
  if source not in SOURCES:
    raise DataError(f"source={source!r} must be one of {SOURCES}")
  if validation_size != 0:
    splits.validation_count(validation_size, sys.maxsize)  # fail on a bad value before decoding
  name = locate.canonical_name(name)
  is_folder = name == "folder"
  explicit_dir = os.fspath(data_dir) if data_dir else None
  tried, tfds_reasons = [], []
  loaded = None

  if source in ("auto", "local"):
    local_dir = explicit_dir or os.environ.get(DATA_DIR_ENV)
    if local_dir:
      search = locate.find(name, pathlib.Path(local_dir).expanduser(), look_inside=not is_folder)
      tried += search.tried
      if search.found is not None:
        loaded = _load_local(search.found, name, cache)
    else:
      tried.append(f"no local folder: neither the data_dir argument nor ${DATA_DIR_ENV} is set")

  if loaded is None and source in ("auto", "tfds") and not is_folder:
    if tfds_source.installed():
      try:
        loaded = _load_tfds(name, _tfds_dir(name, explicit_dir, source), cache)
      except tfds_source.TfdsUnavailable as e:
        tfds_reasons = e.reasons
    else:
      tfds_reasons = ["tensorflow_datasets is not installed"]

  if loaded is None:
    raise DataNotFoundError(_not_found_message(name, source, tried, tfds_reasons, is_folder))
  decoded, where = loaded
  train, validation = splits.carve_validation(decoded.train, validation_size, split_seed)
  return Dataset(name=name, train=train, validation=validation, test=decoded.test,
                 class_names=decoded.class_names, source=where)


def _cached(name: str, fingerprint: str | None, use_cache: bool, decode):
  """decode() -> (Decoded, description), or the cached result of an earlier decode()."""
  path = cache_lib.cache_path(name, fingerprint) if use_cache and fingerprint else None
  if path is not None:
    hit = cache_lib.load(path)
    if hit is not None:
      return hit
  start = time.perf_counter()
  decoded, description = decode()
  log.info("decoded %s in %.1f s%s", name, time.perf_counter() - start,
           f"; caching it in {path}" if path else "")
  if path is not None:
    cache_lib.save(path, decoded, description)
  return decoded, description


def _load_local(fmt: formats.Format, name: str, use_cache: bool) -> tuple[Decoded, str]:
  class_names = _IDX_CLASS_NAMES.get(name)
  # The name is part of the key because IDX class names depend on it.
  key = hashlib.sha256(f"{name}\0{formats.fingerprint(fmt)}".encode()).hexdigest() \
      if use_cache else None
  decoded, description = _cached(name, key, use_cache, lambda: formats.read(fmt, class_names))
  return decoded, f"{fmt.path} ({description})"


def _tfds_dir(name: str, explicit_dir: str | None, source: str) -> str | None:
  """tfds keeps its own layout (<dir>/<name>/<version>/); hand it data_dir only when asked to
  use tfds, or when data_dir already holds that layout."""
  if not explicit_dir:
    return None
  tfds_layout = pathlib.Path(explicit_dir) / tfds_source.TFDS_NAMES.get(name, name)
  return explicit_dir if source == "tfds" or tfds_layout.is_dir() else None


def _load_tfds(name: str, data_dir: str | None, use_cache: bool) -> tuple[Decoded, str]:
  opened = tfds_source.open_splits(name, data_dir)
  tfds_name = tfds_source.TFDS_NAMES.get(name, name)
  decoded, _ = _cached(f"tfds-{name}", opened.fingerprint, use_cache,
                       lambda: (opened.read(), f"tfds:{tfds_name}"))
  return decoded, f"tfds:{tfds_name}"


def _not_found_message(name, source, tried, tfds_reasons, is_folder) -> str:
  lines = [f"dataset '{name}' not found (source={source!r})."]
  if tried:
    lines.append("Looked for local files at:")
    lines += [f"  - {t}" for t in tried]
  if tfds_reasons:
    lines.append("tensorflow-datasets:")
    lines += [f"  - {r}" for r in tfds_reasons]
  example = "mnist-png.tar.xz" if name == "mnist" else "cifar10-jpeg.tar.xz"
  lines += [
      "To provide the data, do one of:",
      f"  - pass --config.data_dir=/path/to/datasets (a folder holding e.g. {example}, "
      f"cifar-10-python.tar.gz or train-images-idx3-ubyte.gz; or the dataset's own "
      f"folder/archive with train/<class>/ and test/<class>/ images);",
      f"  - set the environment variable {DATA_DIR_ENV}=/path/to/datasets "
      f"(this project's copies live in ../shared/datasets);",
  ]
  if is_folder:
    lines.append("  (name='folder' needs data_dir to be the dataset's folder or archive itself)")
  elif name in KNOWN:
    lines.append("  - install tensorflow-datasets: pip install -e '.[tfds]' (its first download "
                 "needs internet) and use --config.data_source=tfds or auto.")
  return "\n".join(lines)
