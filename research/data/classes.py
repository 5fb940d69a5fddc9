"""Some of a dataset's classes (config.classes): CIFAR-10's cat against dog as a binary
task, or a few classes of a folder to fine-tune on. Applied before the validation split
is carved, so that a fraction held out is a fraction of the classes kept."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np

from research.data.types import DataError, Decoded, Split


def resolve(classes: Sequence[int | str], class_names: Sequence[str]) -> tuple[int, ...]:
  """Indices of `classes`, each given by index or by name."""
  indices = []
  for c in classes:
    if isinstance(c, str):
      if c not in class_names:
        raise DataError(f"classes={tuple(classes)!r} (config.classes): no class named "
                        f"{c!r}; the classes are {list(class_names)}.")
      c = list(class_names).index(c)
    elif not 0 <= c < len(class_names):
      raise DataError(f"classes={tuple(classes)!r} (config.classes): class {c} is out of "
                      f"range; the {len(class_names)} classes are 0..{len(class_names) - 1} "
                      f"({', '.join(class_names)}).")
    indices.append(int(c))
  if len(set(indices)) != len(indices):
    raise DataError(f"classes={tuple(classes)!r} (config.classes) names a class twice.")
  return tuple(indices)


def select(decoded: Decoded, classes: Sequence[int | str]) -> Decoded:
  """The examples of `classes` only, relabelled 0..k-1 in the order given; () keeps all."""
  if not classes:
    return decoded
  kept = resolve(classes, decoded.class_names)
  relabel = np.full(len(decoded.class_names), -1, np.int32)
  relabel[list(kept)] = np.arange(len(kept), dtype=np.int32)

  def keep(split: Split) -> Split:
    mask = relabel[split.labels] >= 0
    return Split(split.images[mask], relabel[split.labels[mask]])

  return dataclasses.replace(decoded, train=keep(decoded.train), test=keep(decoded.test),
                             class_names=tuple(decoded.class_names[i] for i in kept))
