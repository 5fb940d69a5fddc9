"""`train_and_evaluate(config, workdir)`: the loop that ties data, model and steps.

Host work per step is one jitted call: the whole dataset sits on the device, the step
gathers its own batch from an on-device permutation, and metrics stay on the device until
a log step fetches them. On this 2-core CPU, a Python loop over one jitted step ran 9x
faster than `lax.scan` over the steps of an epoch (issue 2), so the loop is in Python.
"""

from collections.abc import Callable
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import configs
from research import data as data_lib
from research import metrics as metrics_lib
from research import outputs
from research import plots
from research import preprocess
from research import progress as progress_lib
from research import sharding
from research.models import create_model
from research.training import optim
from research.training.state import TrainState, count_params, create_train_state
from research.training.step import StepConfig, eval_step, train_step
from research import errors

# Independent random streams, each folded with the step or epoch.
_STEP_STREAM, _SHUFFLE_STREAM = 0, 1


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
  return StepConfig(loss=config.loss, label_smoothing=float(config.label_smoothing),
                    mean=tuple(config.normalize_mean), std=tuple(config.normalize_std),
                    augment=preprocess.parse_augment(config.augment),
                    crop_padding=int(config.crop_padding))


def load_data(config: ml_collections.ConfigDict) -> "data_lib.Dataset":
  dataset = data_lib.load_dataset(
      config.dataset, config.data_dir or None, source=config.data_source,
      validation_size=config.validation_size, split_seed=config.split_seed)
  return dataclasses.replace(
      dataset, train=_subset(dataset.train, config.train_subset, config.split_seed),
      test=_subset(dataset.test, config.test_subset, config.split_seed))


def _subset(split: "data_lib.Split", size: int, seed: int) -> "data_lib.Split":
  """A seeded random subset: the archives are sorted by class, so a head would not do."""
  if not size or size >= len(split.labels):
    return split
  keep = np.sort(np.random.default_rng(seed).permutation(len(split.labels))[:size])
  return dataclasses.replace(split, images=split.images[keep], labels=split.labels[keep])


def put_split(split: "data_lib.Split", mesh) -> tuple[jax.Array, jax.Array]:
  """The whole split, replicated on every device (uint8 keeps it small)."""
  return jax.device_put((split.images, split.labels.astype(np.int32)),
                        sharding.replicated(mesh))


def make_train_fn(cfg: StepConfig, mesh, batch_size: int, seed: int):
  """A jitted (state, images, labels, perm, index) -> (state, metrics) that trains on
  batch `index` of the permutation `perm`."""
  step_key = jax.random.fold_in(jax.random.key(seed), _STEP_STREAM)
  batch_sharding = sharding.batch_sharded(mesh)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_on_batch(state, images, labels, perm, index):
    idx = jax.lax.dynamic_slice_in_dim(perm, index * batch_size, batch_size)
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    batch = {"image": images[idx], "label": labels[idx]}
    return train_step(state, batch, jax.random.fold_in(step_key, state.step), cfg)

  return train_on_batch


def epoch_permutation(seed: int, epoch: int, size: int) -> jax.Array:
  """The data order of an epoch is a function of (seed, epoch) only."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SHUFFLE_STREAM), epoch)
  return _permutation(key, size)


@functools.partial(jax.jit, static_argnums=1)
def _permutation(key, size):
  return jax.random.permutation(key, size)


def make_eval_fn(cfg: StepConfig, mesh, batch_size: int):
  batch_sharding = sharding.batch_sharded(mesh)

  @jax.jit
  def eval_batch(state, images, labels, order, index):
    idx = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    return eval_step(state, {"image": images[idx], "label": labels[idx]}, cfg)

  def evaluate(state, images, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per-example losses and predictions for the whole split, fetched once."""
    size = labels.shape[0]
    num_batches = -(-size // batch_size)
    # The last batch wraps around to the start; its extra rows are dropped below.
    order = jnp.arange(num_batches * batch_size, dtype=jnp.int32) % size
    results = [eval_batch(state, images, labels, order, i) for i in range(num_batches)]
    losses, preds = jax.device_get((jnp.concatenate([r[0] for r in results]),
                                    jnp.concatenate([r[1] for r in results])))
    return losses[:size], preds[:size]

  return evaluate


def _mean_metrics(pending: list[dict]) -> dict:
  stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *pending))
  return {k: float(np.mean(v)) for k, v in stacked.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates, writes config.json, metrics.jsonl, summary.json and curves.png;
  returns the summary."""
  return run_training(config, workdir)[1]


def run_training(config: ml_collections.ConfigDict,
                 workdir: str) -> tuple[TrainState, dict]:
  """`train_and_evaluate` that also returns the final train state."""
  start = time.perf_counter()
  run = setup(config, workdir)
  train_seconds, last_train = train(run)
  summary = summarize(run)
  if not config.final_train_eval:  # fall back on the running average of the last log
    summary.update(train_accuracy=last_train["accuracy"], train_loss=last_train["loss"],
                   train_metrics="running average over the last log window, training mode")
  total_steps = run.steps_per_epoch * config.num_epochs
  summary.update(steps=total_steps, epochs=config.num_epochs,
                 wall_time_s=time.perf_counter() - start, train_time_s=train_seconds,
                 examples_per_s=total_steps * config.batch_size / max(train_seconds, 1e-9))
  run.writer.write_summary(summary)
  plots.plot_learning_curves(workdir, title=f"{config.model} on {run.dataset.name}")
  return run.state, summary


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
  train_on_batch: Callable
  evaluate: Callable
  train_split: tuple[jax.Array, jax.Array]
  eval_splits: dict[str, tuple[jax.Array, jax.Array]]
  progress: progress_lib.Progress


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Validates the config, loads the data onto the devices and builds the state and the
  jitted functions. Fails before writing anything if the input is bad."""
  configs.validate(config)
  writer = outputs.RunDir(workdir)
  writer.refuse_existing_results()
  dataset = load_data(config)
  mesh = sharding.make_mesh(config.num_devices)
  sharding.check_batch_size(config.batch_size, mesh)
  steps_per_epoch = len(dataset.train.labels) // config.batch_size
  if steps_per_epoch == 0:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} is larger than the "
                             f"{len(dataset.train.labels)} training examples.")
  model = create_model(config.model, input_shape=dataset.image_shape,
                       num_classes=dataset.num_classes, seed=config.seed,
                       **config.model_kwargs.to_dict())
  tx, schedule = optim.create_optimizer(config, steps_per_epoch)
  writer.create()
  writer.write_config(config)
  cfg = step_config(config)
  eval_batch_size = -(-config.eval_batch_size // mesh.size) * mesh.size
  eval_splits = {"test": put_split(dataset.test, mesh)}
  if dataset.validation is not None:
    eval_splits["validation"] = put_split(dataset.validation, mesh)
  run = Run(config=config, writer=writer, dataset=dataset, mesh=mesh,
            state=jax.device_put(create_train_state(model, tx), sharding.replicated(mesh)),
            schedule=schedule, steps_per_epoch=steps_per_epoch,
            train_on_batch=make_train_fn(cfg, mesh, config.batch_size, config.seed),
            evaluate=make_eval_fn(cfg, mesh, eval_batch_size),
            train_split=put_split(dataset.train, mesh), eval_splits=eval_splits,
            progress=progress_lib.Progress(steps_per_epoch * config.num_epochs,
                                           enabled=config.progress))
  run.progress.log(
      f"{dataset.name} from {dataset.source}: {len(dataset.train.labels)} train, "
      f"{len(dataset.test.labels)} test; model {config.model} with "
      f"{count_params(run.state):,} parameters on {mesh.size} "
      f"{mesh.devices.flat[0].platform} device(s)")
  return run


def train(run: Run) -> tuple[float, dict]:
  """Runs every step; returns (seconds spent training, the last train log record).

  Steps are numbered globally, and the epoch and the batch within it are derived from
  the step, so the data order depends on (seed, step) only."""
  config, spe = run.config, run.steps_per_epoch
  images, labels = run.train_split
  train_seconds, last_train, pending = 0.0, {}, []
  window_start = time.perf_counter()
  for step in range(spe * config.num_epochs):
    epoch, index = divmod(step, spe)
    if index == 0:
      perm = epoch_permutation(config.seed, epoch, len(run.dataset.train.labels))
    run.state, step_metrics = run.train_on_batch(run.state, images, labels, perm, index)
    pending.append(step_metrics)
    done = step + 1
    if done % config.log_every_steps == 0 or index == spe - 1:
      elapsed = time.perf_counter() - window_start
      last_train = _log_train(run, pending, done, elapsed)   # fetching waits for the steps
      train_seconds += time.perf_counter() - window_start
      pending = []
      if index == spe - 1:
        _evaluate_epoch(run, epoch + 1)
      window_start = time.perf_counter()
  run.progress.close()
  return train_seconds, last_train


def _log_train(run: Run, pending: list[dict], step: int, elapsed: float) -> dict:
  record = _mean_metrics(pending)
  record.update(step=step, epoch=step / run.steps_per_epoch, split="train",
                lr=float(run.schedule(step - 1)),
                examples_per_s=len(pending) * run.config.batch_size / elapsed)
  run.writer.log_metrics(record)
  run.progress.update(step)
  run.progress.log(f"epoch {record['epoch']:.2f} train loss {record['loss']:.4f} "
                   f"acc {record['accuracy']:.2%} | {record['examples_per_s']:,.0f} ex/s",
                   {"loss": f"{record['loss']:.3f}"})
  return record


def _evaluate_epoch(run: Run, epoch: int) -> None:
  """Validation and test metrics every `eval_every_epochs`; the last epoch's come from
  `summarize`."""
  every = run.config.eval_every_epochs
  if not every or epoch % every or epoch == run.config.num_epochs:
    return
  for name in run.eval_splits:
    record, _ = evaluate_split(run, name)
    run.progress.log(f"epoch {epoch} {name} loss {record['loss']:.4f} "
                     f"acc {record['accuracy']:.2%}")


def evaluate_split(run: Run, name: str) -> tuple[dict, np.ndarray]:
  """Evaluates one split in inference mode, logs the record, returns it and the
  predictions."""
  images, labels = run.eval_splits[name]
  losses, preds = run.evaluate(run.state, images, labels)
  step = int(run.state.step)
  record = {"step": step, "epoch": step / run.steps_per_epoch, "split": name,
            "loss": float(losses.mean()),
            "accuracy": float(np.mean(preds == np.asarray(labels)))}
  run.writer.log_metrics(record)
  return record, preds


def summarize(run: Run) -> dict:
  """Final metrics on every split, and where and with what they were obtained."""
  dataset, config = run.dataset, run.config
  test, test_preds = evaluate_split(run, "test")
  report = metrics_lib.classification_report(dataset.test.labels, test_preds,
                                             dataset.num_classes)
  summary = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
             "test_macro_precision": report["macro_precision"],
             "test_macro_recall": report["macro_recall"],
             "test_macro_f1": report["macro_f1"],
             "test_confusion_matrix": report["confusion_matrix"]}
  if "validation" in run.eval_splits:
    val, _ = evaluate_split(run, "validation")
    summary.update(validation_accuracy=val["accuracy"], validation_loss=val["loss"])
  if config.final_train_eval:
    losses, preds = run.evaluate(run.state, *run.train_split)
    summary.update(train_accuracy=float(np.mean(preds == dataset.train.labels)),
                   train_loss=float(losses.mean()), train_metrics="inference mode")
  summary.update(
      dataset=dataset.name, data_source=dataset.source, class_names=list(dataset.class_names),
      model=config.model, num_params=count_params(run.state),
      devices=sharding.describe_devices(run.mesh), versions=outputs.library_versions(),
      git_commit=outputs.git_commit())
  return summary
