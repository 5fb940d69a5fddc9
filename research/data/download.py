"""Downloading the original distributions when no local copy is found: the CIFAR-10/100
python tarballs and the MNIST and Fashion-MNIST IDX files, from their canonical sources or
a mirror, checked against their published md5 sums and kept under the cache folder.

A file gets its final name only once its checksum has passed: it is written to a temporary
file in the same folder and renamed, so an interrupted download never leaves a half file
that a later run would take as whole. Connections time out after a few seconds, so a
machine without network fails at once instead of hanging."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import hashlib
import os
import pathlib
import sys
import tempfile
import time

import requests
from tqdm import tqdm
import urllib3

from research.data import cache as cache_lib
from research.data import locate
from research.data.types import DOWNLOAD_MIRROR_ENV

CONNECT_TIMEOUT_S = 5.0   # no network: fail within seconds
READ_TIMEOUT_S = 60.0     # a server that stalls mid-transfer
_CHUNK = 1 << 20

# md5 sums as torchvision publishes them: torchvision/datasets/cifar.py (`tgz_md5` of
# CIFAR10 and CIFAR100) and torchvision/datasets/mnist.py (`resources` of MNIST and
# FashionMNIST).
PUBLISHED_MD5 = {
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "fashion_mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
}
# Where each dataset's files are, best first (a file's URL is the base + its name).
# yann.lecun.com, MNIST's original home, often refuses downloads, so MNIST comes from the
# copies torchvision (ossci-datasets) and tensorflow-datasets (cvdf-datasets) use; both
# hold the original .gz files (tfds lists the original sizes for cvdf), and the md5 check
# refuses either one if that ever changes. Fashion-MNIST's S3 website serves http only;
# the md5 check guards the transfer.
CANONICAL_MIRRORS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/",),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}


@dataclasses.dataclass(frozen=True)
class Remote:
  """Where a dataset's files can be fetched, and what they must hash to.

  mirrors: base URLs, tried in order; a file's URL is the base followed by its name.
  md5: file name -> the md5 sum (hex) the downloaded file must have.
  """
  mirrors: tuple[str, ...]
  md5: Mapping[str, str]


class DownloadFailed(Exception):
  """No mirror delivered a verified file; `reasons` names each URL tried and why."""

  def __init__(self, reasons: list[str]):
    super().__init__("; ".join(reasons))
    self.reasons = reasons


class _BadTransfer(Exception):
  """One URL delivered no verified file (cut short, or a wrong checksum)."""


def parse_mirrors(mirror: str) -> tuple[str, ...]:
  """The base URLs of a comma-separated mirror setting, each ending with '/'."""
  return tuple(m.strip().rstrip("/") + "/" for m in mirror.split(",") if m.strip())


def remote(name: str, mirror: str = "") -> Remote | None:
  """Dataset `name`'s published files (None if it has none here), fetched from `mirror`, else
  from $RESEARCH_DOWNLOAD_MIRROR, else from the canonical sources. A mirror is one or more
  comma-separated base URLs that hold <name>/<file>, e.g. https://host/datasets/ holding
  cifar10/cifar-10-python.tar.gz: the layout of the download folder itself."""
  name = locate.canonical_name(name)
  if name not in PUBLISHED_MD5:
    return None
  mirror = mirror or os.environ.get(DOWNLOAD_MIRROR_ENV, "")
  mirrors = tuple(f"{base}{name}/" for base in parse_mirrors(mirror))
  return Remote(mirrors or CANONICAL_MIRRORS[name], PUBLISHED_MD5[name])


def folder(name: str) -> pathlib.Path:
  """Where dataset `name`'s downloads are kept: <cache dir>/downloads/<name>/."""
  return cache_lib.cache_dir() / "downloads" / name


def md5_of(path: pathlib.Path) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _readable(directory: pathlib.Path, files: Mapping[str, str]) -> pathlib.Path:
  """What the readers take: the archive when there is one file, else the folder."""
  return directory / next(iter(files)) if len(files) == 1 else directory


def cached(name: str, source: Remote) -> pathlib.Path | None:
  """The path to read if every file of `name` was downloaded before and still hashes to
  its sum (as torchvision checks each time), else None. Needs no network."""
  directory = folder(name)
  for filename, md5 in source.md5.items():
    path = directory / filename
    if not path.is_file() or md5_of(path) != md5:
      return None
  return _readable(directory, source.md5)


def fetch(name: str, source: Remote) -> pathlib.Path:
  """The path to read dataset `name` from, downloading each file that is missing or does
  not hash to its sum. Raises DownloadFailed, naming every URL tried, when a file cannot be
  had from any mirror."""
  directory = folder(name)
  for filename, md5 in source.md5.items():
    path = directory / filename
    if path.is_file() and md5_of(path) == md5:
      continue
    reasons = []
    for base in source.mirrors:
      url = base + filename
      try:
        _download(url, md5, path)
        break
      except (requests.RequestException, urllib3.exceptions.HTTPError, OSError,
              _BadTransfer) as e:  # try the next mirror
        reasons.append(f"{url}: {_describe(e)}")
    else:
      raise DownloadFailed(reasons)
  return _readable(directory, source.md5)


def _describe(error: Exception) -> str:
  if isinstance(error, requests.ConnectionError):
    # requests wraps urllib3's MaxRetryError, whose `reason` is the socket-level error.
    cause = getattr(error.args[0], "reason", error) if error.args else error
    return f"cannot connect (no network, or the server is down): {cause}"
  if isinstance(error, requests.Timeout):
    return f"timed out: {error}"
  return str(error) if isinstance(error, _BadTransfer) else f"{type(error).__name__}: {error}"


def _download(url: str, md5: str, path: pathlib.Path) -> None:
  """Streams `url` into a temporary file beside `path` and renames it to `path` only when
  the whole file arrived and hashes to `md5`; removes the temporary file otherwise."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out:
      got = _stream(url, out)
    if got != md5.lower():
      raise _BadTransfer(f"checksum mismatch: expected md5 {md5}, got {got}; refused (a "
                         f"corrupt transfer, or the mirror holds a different file)")
    os.chmod(tmp, 0o644)  # as any download would be; mkstemp made it private
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _stream(url: str, out) -> str:
  """Writes the body of `url` to `out` with a progress bar; returns its md5. The raw bytes
  are kept (no Content-Encoding decoding): the checksum is of the file as published."""
  start = time.perf_counter()
  with requests.get(url, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                    headers={"Accept-Encoding": "identity"}) as response:
    response.raise_for_status()
    expected = int(response.headers.get("Content-Length", 0)) or None
    print(f"downloading {url}" + (f" ({expected / 2**20:.1f} MiB)" if expected else ""),
          file=sys.stderr, flush=True)
    digest, received = hashlib.md5(), 0
    with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
              desc=url.rsplit("/", 1)[-1], disable=not sys.stderr.isatty()) as bar:
      try:
        for chunk in response.raw.stream(_CHUNK, decode_content=False):
          out.write(chunk)
          digest.update(chunk)
          received += len(chunk)
          bar.update(len(chunk))
      except urllib3.exceptions.ProtocolError as e:  # the connection broke mid-transfer
        raise _BadTransfer(_cut_short(received, expected)) from e
  if expected is not None and received != expected:
    raise _BadTransfer(_cut_short(received, expected))
  print(f"downloaded {received / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s",
        file=sys.stderr, flush=True)
  return digest.hexdigest()


def _cut_short(received: int, expected: int | None) -> str:
  return f"transfer cut short: got {received} of {expected or 'an unknown number of'} bytes"
