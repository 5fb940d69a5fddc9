"""What a run needs to resume exactly: the loop's own state besides the train state,
the check of a re-run's config against the saved one, and restoring from checkpoints."""

import dataclasses
import json

import jax
import ml_collections
import numpy as np

from research import configs
from research import errors
from research import outputs
from research.models import MODELS
from research.models import default_kwargs


# Keys that may change between a run and its resumption: they do not change what the
# saved state means. Any other change is refused, naming the keys. `compute_dtype` is
# one: checkpoints are float32 in either dtype (the same tree, the same dtypes), and like
# `num_devices` it changes only the rounding of the steps after the resumption. `tta`
# changes only evaluation: `--config.mode=eval --config.tta=none` re-scores a finished
# run without test-time augmentation, as if it had been trained with tta=none.
RESUMABLE_CHANGES = ("num_epochs", "log_every_steps", "steps_per_call", "progress",
                     "eval_every_epochs", "eval_batch_size", "final_train_eval", "tta",
                     "checkpoint_every_steps", "checkpoint_every_epochs",
                     "keep_checkpoints", "mode", "data_dir", "data_source", "download_mirror",
                     "num_devices", "platform", "compute_dtype", "async_checkpoints",
                     "early_stopping_patience", "restore_best", "eval_train",
                     "eval_train_size")


@dataclasses.dataclass
class TrainProgress:
  """What the loop carries from step to step besides the train state; each checkpoint
  stores it as JSON, so that a resumed run continues the same metrics history, the
  best-so-far and early stopping."""
  # Train metrics of the unlogged window: a dict of per-step arrays per train call.
  pending: list = dataclasses.field(default_factory=list)
  last_train: dict = dataclasses.field(default_factory=dict)
  train_seconds: float = 0.0
  best: dict | None = None          # {"metric", "value", "step"}
  bad_evals: int = 0                # evaluations since the best, for early stopping
  stopped_early: bool = False
  finished: bool = False

  def to_json(self) -> dict:
    record = dataclasses.asdict(self)
    record["pending"] = {k: [float(x) for x in v]
                         for k, v in pending_metrics(self.pending).items()}
    return record

  @classmethod
  def from_json(cls, record: dict) -> "TrainProgress":
    record = dict(record)
    pending = record.pop("pending") or {}
    record["pending"] = [{k: np.asarray(v, np.float32) for k, v in pending.items()}
                         ] if pending else []
    return cls(**record)

  def update_best(self, metric: str, value: float, step: int, mode: str,
                  patience: int) -> bool:
    """Records an evaluation; True if it is a new best."""
    if self.best is None or (value > self.best["value"] if mode == "max"
                             else value < self.best["value"]):
      self.best, self.bad_evals = {"metric": metric, "value": value, "step": step}, 0
      return True
    self.bad_evals += 1
    self.stopped_early = bool(patience) and self.bad_evals >= patience
    return False


def pending_metrics(pending: list[dict]) -> dict[str, np.ndarray]:
  """The window's metrics fetched from the device, one float32 entry per step."""
  fetched = jax.device_get(pending)
  return {k: np.concatenate([np.asarray(m[k], np.float32).reshape(-1) for m in fetched])
          for k in (fetched[0] if fetched else ())}


def check_resumable(writer: outputs.RunDir, config) -> dict:
  """Refuses changes of config keys that matter against the run in `writer`; returns the
  harmless ones."""
  if config.mode == "eval" and not writer.checkpoint_dir.is_dir():
    raise errors.WorkdirError(f"--config.mode=eval needs a checkpoint, and "
                              f"{writer.checkpoint_dir} does not exist.")
  if config.mode == "train":
    writer.refuse_results_without_checkpoints()
  saved = writer.read_config()
  if saved is None:
    return {}
  changes = changed_keys(saved, config)
  refused = refused_changes(changes)
  if refused:
    listing = "; ".join(f"config.{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
    raise errors.ConfigError(
        f"{writer.path} holds a run with a different config, which cannot be resumed "
        f"with these changes: {listing}. Use the same values, or pass a new --workdir.")
  return changes


def changed_keys(saved: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{key: (saved value, new value)} for every top-level key that differs, comparing the
  JSON forms (config.json holds tuples as lists). Keys added since are compared with
  their defaults, model_kwargs' with the model's."""
  new = json.loads(config.to_json_best_effort())
  defaults = json.loads(configs.base_config().to_json_best_effort())
  saved = _with_model_defaults(saved, new)
  return {k: (saved.get(k, defaults.get(k)), new.get(k))
          for k in sorted(set(saved) | set(new))
          if saved.get(k, defaults.get(k)) != new.get(k, defaults.get(k))}


def _with_model_defaults(saved: dict, new: dict) -> dict:
  """`saved` with the model's default for each model_kwargs key that `new` sets and a
  run saved before the model had it does not."""
  if saved.get("model") != new.get("model") or new.get("model") not in MODELS:
    return saved
  kwargs = dict(saved.get("model_kwargs", {}))
  for key, value in json.loads(json.dumps(default_kwargs(new["model"]), default=repr)).items():
    if key in new.get("model_kwargs", {}):
      kwargs.setdefault(key, value)
  return {**saved, "model_kwargs": kwargs}


def refused_changes(changes: dict[str, tuple]) -> dict[str, tuple]:
  """The changes that a resumed run may not make."""
  return {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}


def restore(checkpoints, state, writer, config, steps_per_epoch):
  """(state, TrainProgress, resumed step or None) from the latest good checkpoint."""
  if not checkpoints.steps():
    return state, TrainProgress(), None
  restored = checkpoints.restore_latest(state, quarantine=config.mode == "train")
  if restored is None:
    raise errors.CheckpointError(
        f"No checkpoint in {checkpoints.directory} could be read (see the warnings "
        "above). Move that directory away to start over; nothing was deleted.")
  state, record = restored
  step = int(state.step)
  total = steps_per_epoch * config.num_epochs
  if step > total and config.mode == "train":
    raise errors.ConfigError(
        f"config.num_epochs={config.num_epochs} ({total} steps) is less than the {step} "
        f"steps this run in {writer.path} has already trained.")
  train_progress = TrainProgress.from_json(record)
  train_progress.finished = train_progress.stopped_early or step >= total
  return state, train_progress, step


def checkpoint_due(config, done: int, spe: int, total: int) -> bool:
  by_steps = config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0
  by_epochs = (config.checkpoint_every_epochs and done % spe == 0
               and (done // spe) % config.checkpoint_every_epochs == 0)
  return bool(by_steps or by_epochs or done == total)
