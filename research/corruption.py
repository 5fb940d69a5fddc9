"""Data corruptions of Zhang et al. 2017 ("Understanding deep learning requires rethinking
generalization"), applied once on the host when the data is loaded.

Everything is numpy on the images as loaded (uint8 pixels, or float32 values for
MNIST-1D), keeping their dtype, so the on-device pipeline does not change, and every
draw comes from `np.random.default_rng((seed, stream))`: a run's corrupted data is a
function of its seed alone, and a resumed run sees the same data.
"""

import dataclasses

import numpy as np

from research.data import types

INPUT_CORRUPTIONS = ("none", "shuffled_pixels", "random_pixels", "gaussian")
# Independent numpy streams, one per draw, so adding one never changes another.
_LABELS, _SHUFFLE, _RANDOM, _GAUSS = range(4)
_SPLITS = ("train", "validation", "test")


def _rng(seed: int, stream: int, split: str = "train") -> np.random.Generator:
  return np.random.default_rng((seed, stream, _SPLITS.index(split)))


def corrupt_labels(labels: np.ndarray, fraction: float, num_classes: int,
                   seed: int) -> np.ndarray:
  """Replaces exactly round(fraction * N) labels, chosen at random, by uniformly random
  classes (which may equal the true one, so about fraction * (1 - 1/K) change). At
  fraction=1 every label is random, as in Zhang's "random labels"."""
  if not fraction:
    return labels
  rng = _rng(seed, _LABELS)
  which = rng.permutation(len(labels))[:int(round(fraction * len(labels)))]
  out = labels.copy()
  out[which] = rng.integers(0, num_classes, len(which)).astype(labels.dtype)
  return out


def _permute_pixels(images: np.ndarray, perms: np.ndarray) -> np.ndarray:
  """Moves pixel positions (all channels together) by `perms`: (H*W,) or (N, H*W)."""
  n, h, w, c = images.shape
  flat = images.reshape(n, h * w, c)
  if perms.ndim == 1:
    return flat[:, perms].reshape(images.shape)
  return np.take_along_axis(flat, perms[:, :, None], axis=1).reshape(images.shape)


def _random_perms(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  # int32 keeps CIFAR's 50,000 x 1,024 table at 200 MB.
  return rng.permuted(np.broadcast_to(np.arange(size, dtype=np.int32), (n, size)), axis=1)


def _gaussian_like(rng, shape, mean, std, dtype) -> np.ndarray:
  """Gaussian noise of the given per-channel mean and std: rounded and clipped to pixels
  for uint8 images, left as it is for float32 ones."""
  # float32 draws: CIFAR's 150M values in float64 would take seconds and 1.2 GB.
  noise = rng.standard_normal(shape, dtype=np.float32)
  noise = noise * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  if np.dtype(dtype) == np.float32:
    return noise
  return np.clip(np.round(noise, out=noise), 0, 255).astype(np.uint8)


def corrupt_inputs(dataset: "types.Dataset", kind: str, seed: int) -> "types.Dataset":
  """Applies an input corruption to the training split and, as in Zhang, to the held-out
  splits too (validation and test), so that they are drawn from the corrupted
  distribution the network is trained on:
  - shuffled_pixels: one fixed permutation of pixel positions for every image;
  - random_pixels: an independent permutation per image;
  - gaussian: images replaced by Gaussian noise with the per-channel mean and standard
    deviation of the training images (rounded and clipped for uint8 images; as drawn
    for float32 ones)."""
  if kind == "none":
    return dataset
  train = dataset.train.images
  n, h, w, c = train.shape
  splits = {name: getattr(dataset, name) for name in _SPLITS}
  if kind == "shuffled_pixels":
    perm = _rng(seed, _SHUFFLE).permutation(h * w)
    fn = lambda name, images: _permute_pixels(images, perm)
  elif kind == "random_pixels":
    fn = lambda name, images: _permute_pixels(images, _random_perms(
        _rng(seed, _RANDOM, name), len(images), h * w))
  elif kind == "gaussian":
    mean = train.mean(axis=(0, 1, 2))
    std = train.std(axis=(0, 1, 2))
    fn = lambda name, images: _gaussian_like(_rng(seed, _GAUSS, name), images.shape,
                                             mean, std, images.dtype)
  else:
    raise ValueError(f"unknown input corruption {kind!r}; choose one of {INPUT_CORRUPTIONS}")
  new = {name: None if split is None else dataclasses.replace(
             split, images=fn(name, split.images))
         for name, split in splits.items()}
  return dataclasses.replace(dataset, **new)
