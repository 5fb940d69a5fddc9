"""Transfer learning: a fresh run starts from the weights of a finished one
(`config.init_from`, docs/transfer.md).

    report = transfer.initialise(model, config, class_names, writer)

The source run's parameters and BatchNorm statistics are restored as research.predict
restores them (research/inference.py): its best checkpoint by its best_metric, else its
newest readable one. The backbone, everything but the head (`research.models.HEAD`),
must be the same in both models, path for path and shape for shape, and is copied
whole. The head is copied only when the new run has the source's classes in the same
order. Otherwise it keeps its fresh initialisation: a head trained for other classes
(e.g. CIFAR-10 classes 5-9 relabelled 0-4, after pre-training on classes 0-4, with the
same count) would start the new task from scores that mean other classes. What was
copied and what was initialised is logged and written to WORKDIR/transfer.json.
"""

import os

from flax import nnx
import ml_collections

from research import configs
from research import errors
from research import inference
from research import outputs
from research.models import is_head

_EXAMPLES = 5   # mismatches listed in an error


def initialise(model: nnx.Module, config: ml_collections.ConfigDict,
               class_names, writer: outputs.RunDir) -> dict:
  """Copies the source run's backbone (and its head, for the same classes) into `model`
  in place; logs nothing, returns the report that `describe` prints."""
  source = inference.restore_finished("init_from", config.init_from)
  new = {**_flat(model, nnx.Param), **_flat(model, nnx.BatchStat)}
  old = {**_flat_state(source.params), **_flat_state(source.batch_stats)}
  _check_backbones(new, old, config, source, writer)
  head_reason = _head_mismatch(new, old, tuple(class_names), source.class_names)
  copied = [p for p in new if not is_head(p) or not head_reason]
  for path in copied:
    new[path].set_value(old[path].get_value())
  initialised = [p for p in new if p not in copied]
  report = {"init_from": os.fspath(outputs.workdir_path(config.init_from)),
            "source_step": source.step,
            "head": "copied: the same classes" if not head_reason
            else f"initialised: {head_reason}",
            "copied": _listing(new, copied), "initialised": _listing(new, initialised)}
  if _normalization(source.config) != _normalization(config):
    report["note"] = _normalization_note(source.config, config)
  writer.write_json("transfer.json", report)
  return report


def _normalization(config) -> tuple:
  return tuple(config.normalize_mean), tuple(config.normalize_std)


def _normalization_note(source_config, config) -> str:
  """What to pass to feed the backbone inputs normalised as in its training."""
  (mean, std), (old_mean, old_std) = _normalization(config), _normalization(source_config)
  return (f"this run normalises its inputs with mean {mean} and std {std}, the source run "
          f"with mean {old_mean} and std {old_std}; to give the backbone inputs as it was "
          f"trained on, pass --config.normalize=explicit --config.normalize_mean='{old_mean}' "
          f"--config.normalize_std='{old_std}'")


def describe(report: dict) -> str:
  """The report in one line for the run's log."""
  copied, initialised = report["copied"], report["initialised"]
  return (f"init_from {report['init_from']} (its step {report['source_step']}): copied "
          f"{len(copied['arrays'])} arrays ({copied['values']:,} values), initialised "
          f"{len(initialised['arrays'])} ({initialised['values']:,} values); head "
          f"{report['head']}" + (f". Note: {report['note']}" if "note" in report else ""))


def _flat(model: nnx.Module, kind) -> dict:
  return _flat_state(nnx.state(model, kind))


def _flat_state(state: nnx.State) -> dict:
  """{path tuple: Variable} of a model state."""
  return dict(nnx.to_flat_state(state))


def _name(path) -> str:
  return ".".join(map(str, path))


def _listing(variables: dict, paths: list) -> dict:
  return {"arrays": [_name(p) for p in paths],
          "values": sum(variables[p].get_value().size for p in paths)}


def _check_backbones(new: dict, old: dict, config, source, writer) -> None:
  """Refuses a source whose backbone differs from this run's, naming both runs, their
  models and the first differences."""
  lines = []
  for path in sorted(set(new) | set(old), key=_name):
    if is_head(path):
      continue
    if path not in old:
      lines.append(f"{_name(path)} {new[path].shape}: only in this run's model")
    elif path not in new:
      lines.append(f"{_name(path)} {old[path].shape}: only in {config.init_from}'s model")
    elif new[path].shape != old[path].shape:
      lines.append(f"{_name(path)}: {old[path].shape} in {config.init_from}, "
                   f"{new[path].shape} here")
  if not lines:
    return
  shown = "".join(f"\n  - {line}" for line in lines[:_EXAMPLES])
  more = f"\n  - ... and {len(lines) - _EXAMPLES} more" if len(lines) > _EXAMPLES else ""
  raise errors.ConfigError(
      f"config.init_from={config.init_from!r}: the backbone of that run's model "
      f"({_model(source.config)}) differs from this run's in {writer.path} "
      f"({_model(config)}), so its weights cannot start this run; {len(lines)} "
      f"array(s) differ:{shown}{more}\nGive this run that run's config.model and model "
      "settings (model_kwargs, width_multiplier, depth_multiplier, batch_norm), or set "
      "config.init_from='' to train from scratch.")


def _model(config) -> str:
  """e.g. vgg(widths=(16, 32, 64)); config.json gives tuples back as lists."""
  kwargs = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}"
                     for k, v in sorted(configs.model_kwargs(config).items()))
  return f"{config.model}({kwargs})"


def _head_mismatch(new: dict, old: dict, class_names: tuple,
                   source_classes: tuple) -> str:
  """Why the source's head does not fit this run ('' when it does)."""
  if len(class_names) != len(source_classes):
    return (f"{len(class_names)} classes here, {len(source_classes)} in the source run")
  heads = [p for p in new if is_head(p)]
  if any(p not in old or new[p].shape != old[p].shape for p in heads):
    return "its shape differs (a different config.loss?)"
  if class_names != tuple(source_classes):
    return (f"other classes ({', '.join(class_names)} here; "
            f"{', '.join(source_classes)} in the source run)")
  return ""
