"""The run's data: loaded by name, subset by config, placed on the devices."""

import dataclasses

import jax
import ml_collections
import numpy as np

from research import corruption
from research import data as data_lib
from research import sharding
from research.data import download
from research.data import splits


def load_data(config: ml_collections.ConfigDict) -> "data_lib.Dataset":
  """The run's data: the whole dataset, then the run's subsets and corruptions."""
  return select(config, load_full(config))


def load_full(config: ml_collections.ConfigDict) -> "data_lib.Dataset":
  """The whole dataset that `config` names (its `config.classes`), with its validation
  split carved out: the held-out `validation_size`, or cross-validation fold `cv_fold` of
  `cv_folds`. The test split is never touched."""
  dataset = data_lib.load_dataset(
      config.dataset, config.data_dir or None, source=config.data_source,
      validation_size=config.validation_size, split_seed=config.split_seed,
      image_size=tuple(config.image_size) or None, channels=config.channels or None,
      on_bad_image=config.on_bad_image,
      remote=download.remote(config.dataset, config.download_mirror),
      classes=tuple(config.classes))
  if not config.cv_folds:
    return dataset
  train, validation = splits.carve_fold(dataset.train, config.cv_folds, config.cv_fold,
                                        config.split_seed)
  return dataclasses.replace(dataset, train=train, validation=validation)


def select(config: ml_collections.ConfigDict,
           dataset: "data_lib.Dataset") -> "data_lib.Dataset":
  """`config`'s subsets of the whole dataset, corrupted as it asks."""
  train = subset(dataset.train, config.train_subset, config.split_seed)
  if config.train_per_class:   # drawn with `seed`, as few-shot results average draws
    keep = splits.per_class_indices(train.labels, config.train_per_class, config.seed)
    train = dataclasses.replace(train, images=train.images[keep], labels=train.labels[keep])
  dataset = dataclasses.replace(
      dataset, train=train,
      test=subset(dataset.test, config.test_subset, config.split_seed))
  # Corruptions come after subsetting (they act on what is trained on) and draw from
  # `seed`, not `split_seed`: a new seed is a new draw of the corrupted data.
  dataset = corruption.corrupt_inputs(dataset, config.input_corruption, config.seed)
  labels = corruption.corrupt_labels(dataset.train.labels, config.label_corruption,
                                     dataset.num_classes, config.seed)
  return dataclasses.replace(dataset, train=dataclasses.replace(dataset.train,
                                                                labels=labels))


def subset(split: "data_lib.Split", size: int, seed: int) -> "data_lib.Split":
  """A seeded random subset: the archives are sorted by class, so a head would not do."""
  if not size or size >= len(split.labels):
    return split
  keep = np.sort(np.random.default_rng(seed).permutation(len(split.labels))[:size])
  return dataclasses.replace(split, images=split.images[keep], labels=split.labels[keep])


def put_split(split: "data_lib.Split", mesh) -> tuple[jax.Array, jax.Array]:
  """The whole split, replicated on every device (uint8 pixels keep it small)."""
  return jax.device_put((split.images, split.labels.astype(np.int32)),
                        sharding.replicated(mesh))
