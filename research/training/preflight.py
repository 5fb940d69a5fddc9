"""The checks of a config against its data that come before any work: for one run,
before its workdir is touched; for a sweep, for every point before its first run.

    config, dataset = load_for_run(config)   # the config with its normalisation filled in
    check_jobs(jobs)                         # a sweep's jobs (research/sweep.py)
"""

from collections.abc import Sequence
import dataclasses
import functools

import ml_collections

from research import data_checks
from research import errors
from research import normalization
from research.training import inputs

# The keys that decide which arrays `inputs.load_full` returns.
DATA_KEYS = ("dataset", "data_dir", "data_source", "download_mirror", "validation_size",
             "split_seed", "cv_folds", "cv_fold", "image_size", "channels", "on_bad_image",
             "classes")


@dataclasses.dataclass
class _Loaded:
  """A whole dataset, and its training split's statistics once asked for."""
  dataset: object

  @functools.cached_property
  def stats(self) -> tuple:
    return normalization.channel_stats(self.dataset.train.images)


def _checked(config: ml_collections.ConfigDict,
             loaded: _Loaded) -> ml_collections.ConfigDict:
  """`config` with its normalisation filled in, once it fits the data; raises
  ConfigError listing every mismatch."""
  channels = loaded.dataset.image_shape[-1]
  mean, std = normalization.values(config, channels, lambda: loaded.stats)
  config = normalization.resolved(config, mean, std)
  data_checks.check_config_against_data(config, loaded.dataset)
  return config


def load_for_run(config: ml_collections.ConfigDict):
  """(config with the normalisation it uses filled in, the run's data: subset and
  corrupted). Writes nothing but the decode cache."""
  loaded = _Loaded(inputs.load_full(config))
  config = _checked(config, loaded)
  return config, inputs.select(config, loaded.dataset)


def check_jobs(jobs: Sequence) -> None:
  """Checks every job of a sweep against its data (each dataset loaded once), and raises
  one ConfigError naming each point that cannot run, before any of them starts."""
  loads, failures = {}, {}
  for job in jobs:
    key = tuple(str(job.config[k]) for k in DATA_KEYS)
    if key not in loads:
      loads[key] = _Loaded(inputs.load_full(job.config))
    try:
      _checked(job.config, loads[key])
    except errors.ConfigError as e:
      failures.setdefault(str(e), []).append(job.point.label)
  if failures:
    raise errors.ConfigError("the sweep cannot run; no run was started:\n" + "\n".join(
        f"sweep point(s) {', '.join(repr(p) for p in dict.fromkeys(points))}: {message}"
        for message, points in failures.items()))
