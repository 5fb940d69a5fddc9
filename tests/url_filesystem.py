"""A URL filesystem for tests: `localurl://tmp/x` is the local folder `/tmp/x`, served by
`etils.epath` as gs:// is from a bucket, so that a run can be pointed at a URL without a
network. Importing this module registers the scheme with epath.

- `str()` and `os.fspath()` give the URL, so code that goes around epath (pathlib,
  `open()`, `os.replace`, `fcntl`) fails, or leaves a local `localurl:` folder behind,
  which the tests look for.
- As on object stores through gcsfs (etils.epath's fsspec backend): appending is refused
  (gcsfs would silently overwrite), a folder exists only while it holds something, and
  a rename needs its target's folder to exist.
- `as_posix()` gives the local folder: orbax hands it to TensorStore, as it hands a gs://
  path to TensorStore's GCS driver.
"""

import os
import sys

from etils import epath
from etils.epath import backend as backend_lib
from etils.epath import gpath

SCHEME = "localurl"
PREFIX = SCHEME + "://"


def url(local_path: str | os.PathLike) -> str:
  """The URL of an absolute local path: /tmp/x -> localurl://tmp/x."""
  local = os.fspath(local_path)
  assert local.startswith("/"), local
  return PREFIX + local[1:]


def _local(path: str | os.PathLike) -> str:
  text = os.fspath(path)
  return "/" + text[len(PREFIX):] if text.startswith(PREFIX) else text


class _Backend(backend_lib._OsPathBackend):  # pylint: disable=protected-access
  """epath's local backend, on the folders that the URLs name."""

  def open(self, path, mode):
    if "a" in mode:
      raise OSError(f"{path}: an object store cannot append (mode {mode!r})")
    return super().open(_local(path), mode)

  def exists(self, path):
    local = _local(path)
    return os.path.isfile(local) or self.isdir(local)

  def isdir(self, path):
    local = _local(path)
    return os.path.isdir(local) and bool(os.listdir(local))

  def mkdir(self, path, *, exist_ok=False, mode=None):
    self.makedirs(path, exist_ok=exist_ok)

  def makedirs(self, path, *, exist_ok=False, mode=None):
    if self.exists(path) and not exist_ok:
      raise FileExistsError(path)
    os.makedirs(_local(path), exist_ok=True)   # where the objects below it will go

  def rename(self, path, dst):
    self._check_folder(dst)
    super().rename(_local(path), _local(dst))

  def replace(self, path, dst):
    self._check_folder(dst)
    super().replace(_local(path), _local(dst))

  def _check_folder(self, dst):
    if not self.exists(os.path.dirname(_local(dst))):
      raise FileNotFoundError(f"folder of {dst} does not exist")

  def glob(self, path):
    return [url(p) for p in super().glob(_local(path))]

  def walk(self, top, **kwargs):
    for root, dirs, files in super().walk(_local(top), **kwargs):
      yield url(root), dirs, files


def _translating(name):
  def method(self, path, *args, **kwargs):
    args = [_local(a) if isinstance(a, (str, os.PathLike)) else a for a in args]
    return getattr(backend_lib._OsPathBackend, name)(self, _local(path), *args, **kwargs)  # pylint: disable=protected-access
  return method


for _name in ("listdir", "rmtree", "remove", "copy", "stat"):
  setattr(_Backend, _name, _translating(_name))

_BACKEND = _Backend()


def _parts(*parts) -> str:
  """The pure path that stands for the URL: localurl://tmp/x -> /localurl/tmp/x."""
  full = "/".join(os.fspath(p) for p in parts)
  return "/" + SCHEME + "/" + full[len(PREFIX):] if full.startswith(PREFIX) else full


@epath.register_path_cls(PREFIX)
class LocalURLPath(gpath.PosixGPath):
  """An epath.Path for localurl:// URLs."""

  if sys.version_info < (3, 12):
    def __new__(cls, *parts):
      return super().__new__(cls, _parts(*parts))
  else:
    def __init__(self, *parts):
      super().__init__(_parts(*parts))

  @property
  def _uri_scheme(self):
    return SCHEME if len(self.parts) >= 2 and self.parts[1] == SCHEME else None

  @property
  def _backend(self):
    return _BACKEND

  def as_posix(self) -> str:
    return _local(str(self))
