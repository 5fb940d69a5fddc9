"""`train_and_evaluate(config, workdir)`: the loop that ties data, model and steps, and
resumes from checkpoints (docs/checkpoints.md)."""

from collections.abc import Callable, Mapping
import dataclasses
import math
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import checkpoint as checkpoint_lib
from research import compilation_cache
from research import compression
from research import configs
from research import data as data_lib
from research import errors
from research import losses as losses_lib
from research import metrics as metrics_lib
from research import outputs
from research import plots
from research import preprocess
from research import progress as progress_lib
from research import optim
from research import runtime
from research import sharding
from research import transfer
from research import tuning as tuning_lib
from research.training import preflight
from research.training import resume
from research.training.inputs import put_split, subset
from research.training.jitted import epoch_permutation, make_eval_fn, make_train_fn
from research.training.step import StepConfig
from research.training.resume import TrainProgress
from research.training.state import (TrainState, count_params, create_run_model,
                                     create_train_state)


def _mean_metrics(window: dict[str, np.ndarray]) -> dict:
  """Means over a log window. On the host, so that metrics restored from a checkpoint
  (float32 numbers) and metrics fetched from the device average identically."""
  return {k: float(np.mean(v)) for k, v in window.items()}


@dataclasses.dataclass(frozen=True)
class Hooks:
  """Points where a caller acts at an exact moment of a run, e.g. to kill it there. The
  default hooks change nothing.

  at_step: {global step: fn(state)}. The loop ends its call of `config.steps_per_call`
    steps after each of these steps, waits for the state and calls fn.
  checkpoint_temporary_path: the orbax `TemporaryPath` class that checkpoints are saved
    through (e.g. one that pauses before the commit); None keeps orbax's default for the
    filesystem.
  """
  at_step: Mapping[int, Callable[[TrainState], Any]] = dataclasses.field(
      default_factory=dict)
  checkpoint_temporary_path: type | None = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: Hooks | None = None) -> dict:
  """Trains (resuming from WORKDIR/checkpoints when there are any), evaluates, writes
  config.json, metrics.jsonl, summary.json and curves.png; returns the summary. With
  `config.mode='eval'` it only evaluates the best or latest checkpoint."""
  return run_training(config, workdir, hooks)[1]


def run_training(config: ml_collections.ConfigDict, workdir: str,
                 hooks: Hooks | None = None) -> tuple[TrainState, dict]:
  """`train_and_evaluate` that also returns the final train state."""
  start = time.perf_counter()
  run = setup(config, workdir, hooks)
  try:
    if config.mode == "eval":
      return run.state, evaluate_checkpoint(run)
    existing = run.writer.read_summary()
    if run.train_progress.finished and existing is not None:
      run.progress.log(f"{workdir} holds a finished run (step {int(run.state.step)}); "
                       "nothing to train. Raise config.num_epochs to train longer, or "
                       "use --config.mode=eval to re-evaluate.")
      return run.state, existing
    train_seconds, last_train = train(run)
    summary = _finish(run, start, train_seconds, last_train)
    return run.state, summary
  finally:
    run.checkpoints.close()
    run.writer.unlock()


def _finish(run: "Run", start: float, train_seconds: float, last_train: dict) -> dict:
  config, tp = run.config, run.train_progress
  steps = int(run.state.step)
  run.checkpoints.wait()   # the final checkpoint is complete before summary.json says so
  if _restore_best(run):
    run.progress.log(f"restored the best checkpoint: step {tp.best['step']}, "
                     f"{tp.best['metric']} {tp.best['value']:.4f}")
  summary = summarize(run)
  if not config.final_train_eval:  # fall back on the running average of the last log
    # (none when the run only evaluates: num_epochs=0)
    summary.update(train_accuracy=last_train.get("accuracy", math.nan),
                   train_loss=last_train.get("loss", math.nan),
                   train_metrics="running average over the last log window, training mode")
  summary["generalization_gap"] = summary["train_accuracy"] - summary["test_accuracy"]
  summary.update(steps=steps, epochs=steps / run.steps_per_epoch,
                 wall_time_s=time.perf_counter() - start, train_time_s=train_seconds,
                 examples_per_s=steps * config.batch_size / max(train_seconds, 1e-9),
                 best=tp.best, stopped_early=tp.stopped_early,
                 reported_step=int(run.state.step), resumed_from_step=run.resumed_from)
  run.writer.write_summary(summary)
  if run.writer.writes:
    title = f"{config.model} on {run.dataset.name}"
    if steps:   # a run that only evaluates (num_epochs=0) has no curves
      plots.plot_learning_curves(run.writer.path, title=title)
    plots.plot_confusion_matrices(
        run.writer.path, {split: summary[f"{split}_confusion_matrix"]
                          for split in ("validation", "test") if split in run.eval_splits},
        run.dataset.class_names, title=title)
  return summary


def evaluate_checkpoint(run: "Run") -> dict:
  """mode=eval: the best (with restore_best) or latest checkpoint on the test set, and on
  the validation and train splits; prints, writes nothing."""
  _restore_best(run)
  summary = summarize(run, log=False)
  summary.update(checkpoint_step=int(run.state.step), best=run.train_progress.best)
  run.progress.log(f"evaluated checkpoint step {int(run.state.step)} of {run.writer.path}")
  return summary


def _restore_best(run: "Run") -> bool:
  """With `restore_best`, swaps the best checkpoint into `run.state`; True if it did."""
  best = run.train_progress.best
  if not (run.config.restore_best and best):
    return False
  run.state, _ = run.checkpoints.restore(best["step"], run.state)
  return True


@dataclasses.dataclass
class Run:
  """Everything a run needs once it is set up; `state` advances as it trains."""
  config: ml_collections.ConfigDict
  writer: outputs.RunDir
  dataset: "data_lib.Dataset"
  mesh: jax.sharding.Mesh
  state: TrainState
  schedule: Callable
  steps_per_epoch: int
  train_on_batches: Callable
  evaluate: Callable
  train_split: tuple[jax.Array, jax.Array]
  eval_splits: dict[str, tuple[jax.Array, jax.Array]]
  progress: progress_lib.Progress
  checkpoints: checkpoint_lib.Checkpoints
  train_progress: TrainProgress
  resumed_from: int | None = None
  hooks: Hooks = dataclasses.field(default_factory=Hooks)
  # split -> (record, predictions, probabilities) of its last evaluation
  final_evals: dict = dataclasses.field(default_factory=dict)


def setup(config: ml_collections.ConfigDict, workdir: str,
          hooks: Hooks | None = None) -> Run:
  """Validates the config, checks it against the run in `workdir` if there is one, loads
  the data onto the devices, builds the state and the jitted functions, and restores
  the latest good checkpoint. Fails before writing anything if the input is bad."""
  configs.validate(config)
  runtime.check_platform(config.platform)
  # A URL workdir needs its filesystem (and orbax's support for it) before any work.
  checkpoint_lib.check_storage(workdir)
  writer = outputs.RunDir(outputs.workdir_path(workdir), writes=runtime.is_primary())
  # Fills in the normalisation and checks the config against the data, before any work.
  config, dataset = preflight.load_for_run(config)
  compilation_cache.enable()
  changes = resume.check_resumable(writer, config)
  if config.mode == "train" and writer.path.exists():
    writer.lock()
  try:
    return _setup_locked(config, writer, changes, dataset, hooks or Hooks())
  except BaseException:
    writer.unlock()
    raise


def _setup_locked(config, writer: outputs.RunDir, changes: dict, dataset,
                  hooks: Hooks) -> Run:
  mesh = sharding.make_mesh(config.num_devices)
  sharding.check_batch_size(config.batch_size, mesh)
  class_weights = losses_lib.class_weights(config.class_weights, dataset.train.labels,
                                           dataset.num_classes)
  steps_per_epoch = len(dataset.train.labels) // config.batch_size   # >= 1: preflight
  # Checks micro_batch_size per shard.
  cfg = StepConfig.from_config(config, mesh.size, class_weights, steps_per_epoch)
  model = create_run_model(config, dataset.image_shape, dataset.num_classes)
  if hasattr(model, "init_from_data"):   # e.g. airbench's whitening; a resume restores it
    model.init_from_data(data_init_images(config, dataset))
  if (cfg.micro_batches > 1 and not config.ghost_batch_norm
      and jax.tree.leaves(nnx.state(model, nnx.BatchStat))):
    raise errors.ConfigError(
        "config.micro_batch_size with a BatchNorm model normalises each slice with its "
        "own statistics: set config.ghost_batch_norm=True if that is what you want, or "
        "config.micro_batch_size=0.")
  tx, schedule = optim.create_optimizer(config, steps_per_epoch)
  training = config.mode == "train"
  if training:
    writer.lock()   # creates the workdir
  checkpoints = checkpoint_lib.Checkpoints(
      writer.checkpoint_dir, config.keep_checkpoints, read_only=not training,
      temporary_path_class=hooks.checkpoint_temporary_path,
      async_saves=checkpoint_lib.async_saves(config.async_checkpoints,
                                             mesh.devices.flat[0].platform))
  # A fresh run starts from config.init_from's weights; a resumed one from its own.
  transferred = (transfer.initialise(model, config, dataset.class_names, writer)
                 if training and config.init_from and not checkpoints.steps() else None)
  tuning = tuning_lib.for_mesh(mesh, config)
  fresh = create_train_state(model, tx, tuning.model_fn, config.weight_averaging != "none")
  state, compressed = compression.start_state(fresh, config, dataset.class_names,
                                              dataset.image_shape)
  state = jax.device_put(state, sharding.replicated(mesh))
  state, train_progress, resumed_from = resume.restore(checkpoints, state, writer, config,
                                                       steps_per_epoch)
  if training:
    if train_progress.best:
      checkpoints.set_best_step(train_progress.best["step"])
    writer.trim_metrics(int(state.step))
    writer.write_config(config)
    writer.write_data_info(dataset)
  eval_batch_size = -(-config.eval_batch_size // mesh.size) * mesh.size
  eval_splits = {"test": put_split(dataset.test, mesh)}
  if dataset.validation is not None:
    eval_splits["validation"] = put_split(dataset.validation, mesh)
  train_split = put_split(dataset.train, mesh)
  if config.eval_train:  # the whole split is already on the device: no second copy
    eval_splits["train_eval"] = (put_split(subset(dataset.train, config.eval_train_size,
                                                  config.split_seed), mesh)
                                 if config.eval_train_size else train_split)
  run = Run(config=config, writer=writer, dataset=dataset, mesh=mesh, state=state,
            schedule=schedule, steps_per_epoch=steps_per_epoch,
            train_on_batches=make_train_fn(cfg, mesh, config.batch_size, config.seed,
                                           config.steps_per_call, tuning),
            evaluate=make_eval_fn(cfg, mesh, eval_batch_size, tuning),
            train_split=train_split, eval_splits=eval_splits,
            progress=progress_lib.Progress(steps_per_epoch * config.num_epochs,
                                           initial_step=int(state.step),
                                           enabled=config.progress and training,
                                           silent=not runtime.is_primary()),
            checkpoints=checkpoints, train_progress=train_progress,
            resumed_from=resumed_from, hooks=hooks)
  where = runtime.describe(mesh)
  run.progress.log(
      f"{dataset.name} from {dataset.source}: {len(dataset.train.labels)} train, "
      f"{len(dataset.test.labels)} test; model {config.model} with "
      f"{count_params(run.state):,} parameters on {where['count']} {where['platform']} "
      f"device(s) ({where['kind']}) in {where['processes']} process(es); "
      f"XLA_FLAGS={where['xla_flags'] or '(none)'}")
  if transferred:
    run.progress.log(transfer.describe(transferred))
  for note in compressed:
    run.progress.log(note)
  if class_weights:
    run.progress.log("class weights of the training loss: " + ", ".join(
        f"{name} {w:.4g}" for name, w in zip(dataset.class_names, class_weights)))
  if resumed_from is not None:
    run.progress.log(f"resuming from checkpoint step {resumed_from} (epoch "
                     f"{resumed_from / steps_per_epoch:.2f}) in {checkpoints.directory}")
  changes.pop("mode", None)
  if changes:
    run.progress.log("config changes since the checkpoint (allowed): " + "; ".join(
        f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    if "num_epochs" in changes and config.lr_schedule not in ("constant", "step"):
      run.progress.log(f"note: lr_schedule={config.lr_schedule} depends on num_epochs; "
                       "the rest of the run follows the schedule of the new length.")
  return run


def data_init_images(config, dataset) -> np.ndarray:
  """`config.whitening_examples` training images (seeded), normalised as the model sees
  them, for a model whose initial weights depend on the data."""
  images = subset(dataset.train, config.whitening_examples, config.seed).images
  return np.asarray(preprocess.normalize(images, config.normalize_mean,
                                         config.normalize_std))


def train(run: Run) -> tuple[float, dict]:
  """Runs the remaining steps; returns (seconds spent training, the last train log
  record).

  Steps are numbered globally, and the epoch and the batch within it are derived from
  the step, so the data order depends on (seed, step) only and a resumed run continues
  exactly where the checkpoint was written."""
  config, spe, tp = run.config, run.steps_per_epoch, run.train_progress
  total = spe * config.num_epochs
  images, labels = run.train_split
  window_start, perm = time.perf_counter(), None
  at_step = run.hooks.at_step
  step = int(run.state.step)
  with checkpoint_lib.StopSignals() as signals:
    while step < total:
      epoch, index = divmod(step, spe)
      if index == 0 or perm is None:
        perm = epoch_permutation(config.seed, epoch, len(run.dataset.train.labels))
      count = _steps_in_call(config, step, spe, total, at_step)
      run.state, metrics = run.train_on_batches(run.state, images, labels, perm, index,
                                                count)
      if count < config.steps_per_call:
        metrics = jax.tree.map(lambda m: m[:count], metrics)
      tp.pending.append(metrics)
      step = done = step + count
      if done in at_step:
        jax.block_until_ready(run.state)
        at_step[done](run.state)
      epoch_end, new_best = done % spe == 0, False
      if done % config.log_every_steps == 0 or epoch_end:
        tp.last_train = _log_train(run, tp.pending, done, window_start)
        tp.train_seconds += time.perf_counter() - window_start
        tp.pending = []
        if epoch_end:
          new_best = _evaluate_epoch(run, epoch + 1)
        window_start = time.perf_counter()
      # Every process stops at the same step, so that all save their part of the checkpoint.
      stopping = runtime.any_process(bool(signals.received))
      if (resume.checkpoint_due(config, done, spe, total) or new_best or tp.stopped_early
          or stopping):
        tp.finished = done == total or tp.stopped_early
        saving = time.perf_counter()
        _save(run, done)
        window_start += time.perf_counter() - saving   # saves do not count as training
      if tp.stopped_early:
        run.progress.log(f"early stopping at epoch {epoch + 1}: no better "
                         f"{config.best_metric} in {tp.bad_evals} evaluations; best "
                         f"{tp.best['value']:.4f} at step {tp.best['step']}")
        break
      if stopping and done < total:
        run.progress.close()
        raise errors.Interrupted(
            f"{signals.received or 'a signal to another process'}: stopped at step {done} "
            f"of {total} with a checkpoint in {run.checkpoints.path(done)}. Run the same "
            "command again to resume.")
  run.progress.close()
  return tp.train_seconds, tp.last_train


def _steps_in_call(config, step: int, spe: int, total: int, at_step: Mapping) -> int:
  """Steps for the next call: up to config.steps_per_call, ending after the first step
  that the loop has work after (a log, an epoch's end, a checkpoint, a hook).
  Calls of any length run the same program, and the steps are the same whatever the
  length (bitwise, tests/test_training.py)."""
  for count in range(1, config.steps_per_call):
    done = step + count
    if (done % config.log_every_steps == 0 or done % spe == 0
        or resume.checkpoint_due(config, done, spe, total) or done in at_step):
      return count
  return config.steps_per_call


def _save(run: Run, step: int) -> None:
  """Saves the state after `step`, unless a loss since the last check is NaN or Inf."""
  tp = run.train_progress
  if tp.pending:
    losses = resume.pending_metrics(tp.pending)["loss"]
    _check_finite(losses, step - len(losses) + 1, run)
  if not bool(_params_finite(run.state.params)):
    raise errors.DivergenceError(
        f"training diverged: the parameters are NaN or Inf after step {step}. No "
        f"checkpoint of the diverged state was written. Lower config.learning_rate.")
  run.checkpoints.set_best_step(tp.best["step"] if tp.best else None)
  run.checkpoints.save(run.state, tp.to_json())


@jax.jit
def _params_finite(params) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(params)]))


def _check_finite(losses: np.ndarray, first_step: int, run: Run) -> None:
  """Stops the run at the first non-finite loss; nothing of this state gets saved."""
  for i, loss in enumerate(losses):
    if not np.isfinite(loss):
      steps = run.checkpoints.steps()
      kept = (f"the last good checkpoint is step {steps[-1]} in {run.checkpoints.directory}"
              if steps else "no checkpoint had been written yet")
      raise errors.DivergenceError(
          f"training diverged: the loss is {loss} at step {first_step + i} (epoch "
          f"{(first_step + i) / run.steps_per_epoch:.2f}). No checkpoint of the diverged "
          f"state was written; {kept}. Lower config.learning_rate or add warmup.")


def _log_train(run: Run, pending: list[dict], step: int, window_start: float) -> dict:
  # Fetching waits for the steps: only now is the window's time known.
  window = resume.pending_metrics(pending)
  elapsed = time.perf_counter() - window_start
  steps = len(window["loss"])
  _check_finite(window["loss"], step - steps + 1, run)
  record = _mean_metrics(window)
  record.update(step=step, epoch=step / run.steps_per_epoch, split="train",
                lr=float(run.schedule(step - 1)),
                examples_per_s=steps * run.config.batch_size / elapsed)
  run.writer.log_metrics(record)
  run.progress.update(step)
  run.progress.log(f"epoch {record['epoch']:.2f} train loss {record['loss']:.4f} "
                   f"acc {record['accuracy']:.2%} | {record['examples_per_s']:,.0f} ex/s",
                   {"loss": f"{record['loss']:.3f}"})
  return record


def _evaluate_epoch(run: Run, epoch: int) -> bool:
  """Validation and test metrics every `eval_every_epochs` and after the last epoch;
  updates the best-so-far and early stopping. True if this is a new best."""
  config, tp = run.config, run.train_progress
  every = config.eval_every_epochs
  if epoch != config.num_epochs and (not every or epoch % every):
    return False
  records = {}
  for name in run.eval_splits:
    run.final_evals[name] = evaluate_split(run, name)
    records[name] = record = run.final_evals[name][0]
    auc = f" AUC {record['roc_auc']:.4f}" if record.get("roc_auc") is not None else ""
    run.progress.log(f"epoch {epoch} {name} loss {record['loss']:.4f} "
                     f"acc {record['accuracy']:.2%} macro F1 {record['macro_f1']:.4f}{auc}")
  if "train_eval" in records:
    gap = records["train_eval"]["accuracy"] - records["test"]["accuracy"]
    run.progress.log(f"epoch {epoch} generalisation gap (train_eval - test accuracy) "
                     f"{100 * gap:.2f} points")
  if not config.best_metric:
    return False
  split, key = config.best_metric.split("_", 1)
  return tp.update_best(config.best_metric, records[split][key], int(run.state.step),
                        configs.best_mode(config), config.early_stopping_patience)


def evaluate_split(run: Run, name: str,
                   log: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
  """Evaluates one split in inference mode, logs the record (loss, accuracy, macro F1,
  and ROC AUC for two classes), returns it, the predictions and the class
  probabilities."""
  cached = run.final_evals.get(name)
  if cached and cached[0]["step"] == int(run.state.step) and not log:
    return cached
  images, labels = run.eval_splits[name]
  losses, preds, probs = run.evaluate(run.state, images, labels)
  labels = np.asarray(labels)
  report = _report(run, labels, preds, probs)
  step = int(run.state.step)
  record = {"step": step, "epoch": step / run.steps_per_epoch, "split": name,
            "loss": float(losses.mean()), "accuracy": float(np.mean(preds == labels)),
            "macro_f1": report["macro_f1"]}
  if "roc_auc" in report:
    record["roc_auc"] = report["roc_auc"]
  if log:
    run.writer.log_metrics(record)
  return record, preds, probs


def _report(run: Run, labels: np.ndarray, preds: np.ndarray, probs: np.ndarray) -> dict:
  """metrics.classification_report, scoring class 1 by its probability."""
  num_classes = run.dataset.num_classes
  return metrics_lib.classification_report(
      labels, preds, num_classes, run.dataset.class_names,
      scores=probs[:, 1] if num_classes == 2 else None)


def summarize(run: Run, log: bool = False) -> dict:
  """Final metrics on every split, and where and with what they were obtained. The loop
  has already logged the evaluation of the last step."""
  dataset, config = run.dataset, run.config
  summary = {}
  for name, split in (("test", dataset.test), ("validation", dataset.validation)):
    if name in run.eval_splits:
      summary.update(_split_summary(run, name, split.labels, log))
  if dataset.num_classes == 2:
    summary["positive_class"] = dataset.class_names[1]
  if config.class_weights:
    summary["class_weights"] = list(losses_lib.class_weights(
        config.class_weights, dataset.train.labels, dataset.num_classes))
  if config.final_train_eval:
    if "train_eval" in run.eval_splits and not config.eval_train_size:
      train, _, _ = evaluate_split(run, "train_eval", log)   # the whole split: reuse it
    else:
      losses, preds, _ = run.evaluate(run.state, *run.train_split)
      train = {"accuracy": float(np.mean(preds == dataset.train.labels)),
               "loss": float(losses.mean())}
    summary.update(train_accuracy=train["accuracy"], train_loss=train["loss"],
                   train_metrics="inference mode")
  summary.update(
      dataset=dataset.name, data_source=dataset.source, class_names=list(dataset.class_names),
      model=config.model, num_params=count_params(run.state),
      **compression.size_report(run.state.params, run.state.batch_stats, config.quantize),
      devices=runtime.describe(run.mesh), versions=outputs.library_versions(),
      git_commit=outputs.git_commit())
  return summary


def _split_summary(run: Run, name: str, labels: np.ndarray, log: bool) -> dict:
  """NAME_loss, NAME_accuracy and the rest of NAME's classification report: per-class
  precision, recall and F1 with their averages, the confusion matrix, and for two
  classes the positive class's scores and the ROC AUC."""
  record, preds, probs = evaluate_split(run, name, log)
  report = _report(run, labels, preds, probs)
  return {f"{name}_{key}": value
          for key, value in {**report, "accuracy": record["accuracy"],
                             "loss": record["loss"]}.items()}
