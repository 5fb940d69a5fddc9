"""Decoded datasets cached as uint8 arrays in an uncompressed .npz.

Decoding the JPEG/PNG archives takes seconds; loading the cached arrays a fraction of
that. The file name carries a fingerprint of the source, so a changed source misses the
cache instead of returning stale data. The cache is an optimisation only: an unreadable or
unwritable cache logs a warning and the data is decoded again."""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile

import numpy as np

from research.data.types import CACHE_DIR_ENV, Decoded, Split

log = logging.getLogger(__name__)

# Bump when a reader's output changes for the same input, so old caches are not reused.
# 2: images are resized/converted per config, alpha on white, 16-bit scaled, EXIF applied.
CACHE_VERSION = 2


def cache_dir() -> pathlib.Path:
  configured = os.environ.get(CACHE_DIR_ENV)
  if configured:
    return pathlib.Path(configured).expanduser()
  return pathlib.Path.home() / ".cache" / "research" / "datasets"


def cache_path(name: str, fingerprint: str) -> pathlib.Path:
  safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
  return cache_dir() / f"{safe}-v{CACHE_VERSION}-{fingerprint[:24]}.npz"


def load(path: pathlib.Path) -> tuple[Decoded, str] | None:
  """(data, layout description) from the cache, or None on a miss or a bad file."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as arrays:
      decoded = Decoded(
          Split(arrays["train_images"], arrays["train_labels"]),
          Split(arrays["test_images"], arrays["test_labels"]),
          tuple(str(c) for c in arrays["class_names"]),
          tuple(str(w) for w in arrays["skipped"]))
      description = str(arrays["description"])
  except Exception as e:  # truncated zip, missing key, wrong dtype...: rebuild it
    log.warning("ignoring unreadable dataset cache %s (%s: %s); decoding the source again",
                path, type(e).__name__, e)
    return None
  return decoded, description


def save(path: pathlib.Path, decoded: Decoded, description: str) -> None:
  """Writes atomically: a temporary file in the same folder, then os.replace, so that a
  crash or a concurrent run never leaves a half-written cache under the final name."""
  tmp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, train_images=decoded.train.images, train_labels=decoded.train.labels,
               test_images=decoded.test.images, test_labels=decoded.test.labels,
               class_names=np.array(decoded.class_names, dtype=str),
               skipped=np.array(decoded.skipped, dtype=str),
               description=np.array(description))
    os.replace(tmp, path)
    tmp = None
  except OSError as e:
    log.warning("could not write dataset cache %s (%s); set %s to a writable folder to "
                "skip decoding next time", path, e, CACHE_DIR_ENV)
  finally:
    if tmp is not None:
      try:
        os.unlink(tmp)
      except OSError:
        pass
