"""The checks of a config against its data that come before any work: for one run,
before its workdir is touched.

    config, dataset = load_for_run(config)   # the config with its normalisation filled in
"""

import dataclasses
import functools

import ml_collections

from research import data_checks
from research import normalization
from research.training import inputs


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

