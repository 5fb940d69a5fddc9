"""Carving a validation split, or a cross-validation fold, out of the training split.

The shared archives are sorted by class, so taking the tail (what Keras' validation_split
does) would hold out only the last classes. Instead we draw a seeded, stratified sample:
every class contributes in proportion to its size. Cross-validation folds are stratified
the same way (`fold_assignment`)."""

from __future__ import annotations

import numbers

import numpy as np

from research.data.types import DataError, Split


def validation_count(validation_size: float | int, num_train: int) -> int:
  """A fraction in (0, 1) or a count -> the number of examples to hold out."""
  if isinstance(validation_size, bool) or not isinstance(validation_size, numbers.Real):
    raise DataError(f"validation_size={validation_size!r} must be a fraction in (0, 1) or a "
                    f"count of examples")
  if validation_size < 0:
    raise DataError(f"validation_size={validation_size} must not be negative")
  if 0 < validation_size < 1:
    count = max(1, int(round(validation_size * num_train)))
  elif float(validation_size).is_integer():
    count = int(validation_size)  # a config may hand us 5000.0
  else:
    raise DataError(f"validation_size={validation_size} must be a fraction in (0, 1) or a "
                    f"whole number of examples")
  if count >= num_train:
    raise DataError(f"validation_size={validation_size} would hold out {count} of the "
                    f"{num_train} training examples, leaving none to train on")
  return count


def stratified_indices(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, validation indices), both sorted, disjoint, covering every example.

  Each example gets the key (rank among its class in a seeded shuffle + 0.5) / class size;
  the `count` smallest keys are held out. That takes the same fraction of every class
  (within one example), and a random class wins the ties."""
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(labels))
  shuffled = labels[order]
  by_class = np.argsort(shuffled, kind="stable")
  sizes = np.bincount(shuffled)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  rank = np.empty(len(labels), np.int64)
  rank[by_class] = np.arange(len(labels)) - starts[shuffled[by_class]]
  keys = (rank + 0.5) / sizes[shuffled]
  held = np.argsort(keys, kind="stable")
  return np.sort(order[held[count:]]), np.sort(order[held[:count]])


def per_class_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Sorted indices of `per_class` examples of each class (all of a smaller class),
  drawn with `seed`: a stratified few-shot sample."""
  order = np.random.default_rng(seed).permutation(len(labels))
  by_class = order[np.argsort(labels[order], kind="stable")]   # shuffled within class
  starts = np.searchsorted(labels[by_class], labels[by_class])
  return np.sort(by_class[np.arange(len(labels)) - starts < per_class])


def carve_validation(train: Split, validation_size: float | int,
                     seed: int) -> tuple[Split, Split | None]:
  if validation_size == 0:
    return train, None
  count = validation_count(validation_size, len(train))
  keep, held = stratified_indices(train.labels, count, seed)
  return (Split(train.images[keep], train.labels[keep]),
          Split(train.images[held], train.labels[held]))


def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
  """The fold (0..folds-1) of each example: stratified K-fold, with the per-fold class
  counts of scikit-learn's StratifiedKFold. The examples, shuffled with `seed`, are sorted
  by class and dealt out to the folds in turn, so every class is split evenly (its counts
  per fold differ by at most one) and so are the folds' sizes."""
  order = np.random.default_rng(seed).permutation(len(labels))
  by_class = order[np.argsort(labels[order], kind="stable")]
  assignment = np.empty(len(labels), np.int64)
  assignment[by_class] = np.arange(len(labels)) % folds
  return assignment


def carve_fold(train: Split, folds: int, fold: int, seed: int) -> tuple[Split, Split]:
  """(the other folds, to train on; fold `fold`, to validate on) of `folds` stratified
  folds of `train`, drawn with `seed`."""
  if len(train) < folds:
    raise DataError(f"cv_folds={folds} is more than the {len(train)} training examples")
  held = fold_assignment(train.labels, folds, seed) == fold
  return (Split(train.images[~held], train.labels[~held]),
          Split(train.images[held], train.labels[held]))
