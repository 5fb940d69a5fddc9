"""Finding a dataset on disk by name.

`data_dir` may be a folder of several datasets (like ../shared/datasets, holding
mnist-png.tar.xz and cifar10-jpeg.tar.xz) or the dataset's own folder or archive. Every path
that was tried is recorded, so that a miss can say exactly where the loader looked."""

from __future__ import annotations

import dataclasses
import fnmatch
import pathlib

from research.data import formats

ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
           "cifar-10": "cifar10", "cifar_10": "cifar10", "cifar-100": "cifar100",
           "cifar_100": "cifar100", "mnist-1d": "mnist1d", "mnist_1d": "mnist1d"}

# Names (lower-case globs) under which each dataset is looked for inside a data_dir, best
# first: the original distributions' names, then the shared copies' and common variants.
_CANDIDATES = {
    "mnist": ["mnist", "mnist-png", "mnist_png", "mnist*.tar*", "mnist*.tgz", "mnist*"],
    "fashion_mnist": ["fashion_mnist", "fashion-mnist", "fashionmnist", "fashion*mnist*.tar*",
                      "fashion*mnist*.tgz", "fashion*mnist*"],
    "cifar10": ["cifar10", "cifar-10", "cifar_10", "cifar-10-python.tar.gz",
                "cifar-10-batches-py", "cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                "cifar10*.tar*", "cifar-10*.tar*", "cifar10*", "cifar-10*"],
    "cifar100": ["cifar100", "cifar-100", "cifar_100", "cifar-100-python.tar.gz",
                 "cifar-100-python", "cifar-100-binary.tar.gz", "cifar-100-binary",
                 "cifar100*.tar*", "cifar-100*.tar*", "cifar100*", "cifar-100*"],
}


def canonical_name(name: str) -> str:
  name = name.strip().lower()
  return ALIASES.get(name, name)


def candidate_patterns(name: str) -> list[str]:
  if name in _CANDIDATES:
    return _CANDIDATES[name]
  variants = dict.fromkeys([name, name.replace("_", "-"), name.replace("-", "_")])
  suffixes = ("", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".zip")
  return [f"{v}{s}" for v in variants for s in suffixes] + [f"{name}*.tar*", f"{name}*.zip"]


@dataclasses.dataclass
class Search:
  """The outcome of looking for a dataset; `tried` feeds the not-found message."""
  found: formats.Format | None = None
  tried: list[str] = dataclasses.field(default_factory=list)


def _entries(directory: pathlib.Path, pattern: str) -> list[pathlib.Path]:
  try:
    names = sorted(p.name for p in directory.iterdir())
  except OSError:
    return []
  if any(c in pattern for c in "*?["):
    return [directory / n for n in names if fnmatch.fnmatch(n.lower(), pattern)]
  return [directory / n for n in names if n.lower() == pattern]


def _other_dataset(path: pathlib.Path, name: str) -> str | None:
  """The known dataset, other than `name`, whose name `path` carries, if any."""
  for other, patterns in _CANDIDATES.items():
    if other != name and any(fnmatch.fnmatch(path.name.lower(), p) for p in patterns):
      return other
  return None


def find(name: str, data_dir: pathlib.Path, look_inside: bool = True) -> Search:
  """Looks for `name` inside data_dir (unless look_inside is False), then treats data_dir as
  the dataset's own folder or archive."""
  search = Search()
  if not data_dir.exists():
    search.tried.append(f"{data_dir} (does not exist)")
    return search
  if look_inside and data_dir.is_dir():
    for pattern in candidate_patterns(name):
      matches = _entries(data_dir, pattern)
      if not matches:
        search.tried.append(str(data_dir / pattern))
      for path in matches:
        fmt = formats.detect(path)
        if fmt is not None:
          search.found = fmt
          return search
        search.tried.append(f"{path} (not a layout this loader knows)")
  fmt = formats.detect(data_dir)
  if fmt is not None and fmt.path != data_dir and look_inside:
    # detect() steps into a lone subfolder; in a folder of datasets that lone subfolder may
    # be a different dataset (data_dir/mnist/ when asked for cifar10): do not load it.
    first = data_dir / fmt.path.relative_to(data_dir).parts[0]
    other = _other_dataset(first, name)
    if other:
      search.tried.append(f"{data_dir} itself (its only subfolder {first.name} looks like "
                          f"{other}, not {name})")
      return search
  if fmt is not None:
    search.found = fmt
  else:
    search.tried.append(f"{data_dir} itself (no train/ and test/ folders, IDX files, CIFAR "
                        f"batches or tar archive)")
  return search
