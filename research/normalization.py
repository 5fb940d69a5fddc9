"""Which per-channel mean and std a run normalises its inputs with (config.normalize).

- auto: measured on the training split as loaded (after the validation split is carved
  out, before train_subset and the corruptions, so that they depend on neither), so
  they follow whatever dataset the config names;
- none: mean 0 and std 1, i.e. pixels scaled to [0, 1] (float data used as it is);
- explicit: config.normalize_mean and config.normalize_std, one value per channel.

The values used are filled into the run's config, and so into its config.json. A
resumed run measures them again; being deterministic, they match unless the data did.
"""

from collections.abc import Callable
import copy
import math

import ml_collections
import numpy as np

from research import errors

CHOICES = ("auto", "none", "explicit")
_KEYS = ("normalize_mean", "normalize_std")
_SIGNIFICANT_DIGITS = 6   # enough for float32 inputs, short enough to read in config.json


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the keys on their own; their length against the data is checked at load."""
  if config.normalize not in CHOICES:
    raise errors.ConfigError(f"config.normalize={config.normalize!r} is not one of "
                             f"{list(CHOICES)}.")
  given = [k for k in _KEYS if len(config[k])]
  if config.normalize != "explicit":
    if given:
      raise errors.ConfigError(
          f"config.{given[0]} is set, but config.normalize={config.normalize!r} "
          f"{'measures' if config.normalize == 'auto' else 'ignores'} it: add "
          "--config.normalize=explicit to use your values, or leave it unset.")
    return
  if len(given) < 2:
    raise errors.ConfigError("config.normalize='explicit' needs config.normalize_mean and "
                             "config.normalize_std, one value per channel of the data.")
  if len(config.normalize_mean) != len(config.normalize_std):
    raise errors.ConfigError("config.normalize_mean and config.normalize_std differ in "
                             "length: give one value per channel in each.")
  if min(config.normalize_std) <= 0:
    raise errors.ConfigError(f"config.normalize_std={tuple(config.normalize_std)} must be "
                             "> 0 in every channel.")


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel (mean, std) of (N, H, W, C) images as the train step sees them: uint8
  pixels scaled to [0, 1], float values as they are. A constant channel gets std 1."""
  if images.dtype == np.uint8:
    mean, std = zip(*(_pixel_stats(images[..., c]) for c in range(images.shape[-1])))
  else:
    x = images.astype(np.float64)
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
  return _rounded(mean), tuple(s if s > 0 else 1.0 for s in _rounded(std))


def _pixel_stats(pixels: np.ndarray) -> tuple[float, float]:
  """(mean, std) of uint8 pixels scaled to [0, 1], exactly, from integer counts: no float
  copy of the data, and a constant channel gives exactly 0."""
  counts = np.bincount(pixels.ravel(), minlength=256).tolist()
  n = pixels.size
  total = sum(k * v for v, k in enumerate(counts))
  squares = sum(k * v * v for v, k in enumerate(counts))
  return total / (255 * n), math.sqrt(n * squares - total * total) / (255 * n)


def _rounded(values) -> tuple[float, ...]:
  return tuple(float(f"{v:.{_SIGNIFICANT_DIGITS}g}") for v in values)


def values(config: ml_collections.ConfigDict, channels: int,
           measure: Callable[[], tuple]) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) that `config` asks for on data of `channels` channels; `measure()` gives
  the training split's, called only for 'auto' values not yet filled in."""
  if config.normalize == "auto" and not len(config.normalize_mean):
    return measure()
  if config.normalize == "none":
    return (0.0,) * channels, (1.0,) * channels
  return tuple(config.normalize_mean), tuple(config.normalize_std)


def mean_std(config: ml_collections.ConfigDict, images: np.ndarray):
  """`values` for these images (measured on them for 'auto')."""
  return values(config, images.shape[-1], lambda: channel_stats(images))


def resolved(config: ml_collections.ConfigDict, mean, std) -> ml_collections.ConfigDict:
  """A copy of `config` with the values used filled in; `normalize` keeps saying where
  they came from."""
  config = copy.deepcopy(config)
  config.normalize_mean, config.normalize_std = tuple(mean), tuple(std)
  return config


def unresolved_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The keys that `config` leaves to be measured or filled in at load, which a saved
  config.json holds the values of: not comparable until then."""
  if config.normalize != "explicit" and not len(config.normalize_mean):
    return _KEYS
  return ()
