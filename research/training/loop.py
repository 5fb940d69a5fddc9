"""`train_and_evaluate(config, workdir)`: the loop that ties data, model and steps.

Host work per step is one jitted call: the whole dataset sits on the device, the step
gathers its own batch from an on-device permutation, and metrics stay on the device until
a log step fetches them. On this 2-core CPU, a Python loop over one jitted step ran 9x
faster than `lax.scan` over the steps of an epoch (issue 2), so the loop is in Python.
"""

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
  """Trains, evaluates, writes config.json, metrics.jsonl and summary.json; returns the
  summary."""
  return run_training(config, workdir)[1]


def run_training(config: ml_collections.ConfigDict,
                 workdir: str) -> tuple[TrainState, dict]:
  """`train_and_evaluate` that also returns the final train state."""
  configs.validate(config)
  run = outputs.RunDir(workdir)
  run.refuse_existing_results()
  start = time.perf_counter()
  dataset = load_data(config)
  mesh = sharding.make_mesh(config.num_devices)
  sharding.check_batch_size(config.batch_size, mesh)
  eval_batch_size = -(-config.eval_batch_size // mesh.size) * mesh.size
  steps_per_epoch = len(dataset.train.labels) // config.batch_size
  if steps_per_epoch == 0:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} is larger than the "
                     f"{len(dataset.train.labels)} training examples.")
  run.create()
  run.write_config(config)

  model = create_model(config.model, input_shape=dataset.image_shape,
                       num_classes=dataset.num_classes, seed=config.seed,
                       **config.model_kwargs.to_dict())
  tx, schedule = optim.create_optimizer(config, steps_per_epoch)
  state = jax.device_put(create_train_state(model, tx), sharding.replicated(mesh))
  cfg = step_config(config)
  train_on_batch = make_train_fn(cfg, mesh, config.batch_size, config.seed)
  evaluate = make_eval_fn(cfg, mesh, eval_batch_size)
  train_images, train_labels = put_split(dataset.train, mesh)
  eval_splits = {"test": put_split(dataset.test, mesh)}
  if dataset.validation is not None:
    eval_splits["validation"] = put_split(dataset.validation, mesh)

  total_steps = steps_per_epoch * config.num_epochs
  progress = progress_lib.Progress(total_steps, enabled=config.progress)
  progress.log(f"{dataset.name} from {dataset.source}: {len(dataset.train.labels)} train, "
               f"{len(dataset.test.labels)} test; model {config.model} with "
               f"{count_params(state):,} parameters on {mesh.size} "
               f"{mesh.devices.flat[0].platform} device(s)")
  train_seconds, last_train = 0.0, {}

  def evaluate_split(name, epoch, step):
    images, labels = eval_splits[name]
    losses, preds = evaluate(state, images, labels)
    record = {"step": step, "epoch": epoch, "split": name, "loss": float(losses.mean()),
              "accuracy": float(np.mean(preds == np.asarray(labels)))}
    run.log_metrics(record)
    return record, preds

  for epoch in range(config.num_epochs):
    epoch_start = time.perf_counter()
    perm = epoch_permutation(config.seed, epoch, len(dataset.train.labels))
    pending, window_start = [], time.perf_counter()
    for index in range(steps_per_epoch):
      state, step_metrics = train_on_batch(state, train_images, train_labels, perm, index)
      pending.append(step_metrics)
      step = epoch * steps_per_epoch + index + 1
      if step % config.log_every_steps == 0 or index == steps_per_epoch - 1:
        record = _mean_metrics(pending)   # fetching them also waits for the steps
        elapsed = time.perf_counter() - window_start
        record.update(step=step, epoch=epoch + (index + 1) / steps_per_epoch,
                      split="train", lr=float(schedule(step - 1)),
                      examples_per_s=len(pending) * config.batch_size / elapsed)
        run.log_metrics(record)
        last_train = record
        progress.update(step)
        progress.log(f"epoch {record['epoch']:.2f} train loss {record['loss']:.4f} "
                     f"acc {record['accuracy']:.2%} | {record['examples_per_s']:,.0f} ex/s",
                     {"loss": f"{record['loss']:.3f}"})
        pending, window_start = [], time.perf_counter()
    train_seconds += time.perf_counter() - epoch_start
    last = epoch + 1 == config.num_epochs
    if config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0 and not last:
      for name in eval_splits:
        record, _ = evaluate_split(name, epoch + 1, step)
        progress.log(f"epoch {epoch + 1} {name} loss {record['loss']:.4f} "
                     f"acc {record['accuracy']:.2%}")
  progress.close()

  summary = _final_summary(config, dataset, state, evaluate, evaluate_split,
                           train_images, train_labels, mesh)
  if not config.final_train_eval:  # fall back on the running average of the last log
    summary.update(train_accuracy=last_train["accuracy"], train_loss=last_train["loss"],
                   train_metrics="running average over the last log window, training mode")
  summary.update(steps=total_steps, epochs=config.num_epochs,
                 wall_time_s=time.perf_counter() - start, train_time_s=train_seconds,
                 examples_per_s=total_steps * config.batch_size / max(train_seconds, 1e-9))
  run.write_summary(summary)
  plots.plot_learning_curves(workdir, title=f"{config.model} on {dataset.name}")
  return state, summary


def _final_summary(config, dataset, state, evaluate, evaluate_split, train_images,
                   train_labels, mesh) -> dict:
  step, epoch = int(state.step), config.num_epochs
  test, test_preds = evaluate_split("test", epoch, step)
  report = metrics_lib.classification_report(dataset.test.labels, test_preds,
                                             dataset.num_classes)
  summary = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
             "test_macro_precision": report["macro_precision"],
             "test_macro_recall": report["macro_recall"],
             "test_macro_f1": report["macro_f1"],
             "test_confusion_matrix": report["confusion_matrix"]}
  if dataset.validation is not None:
    val, _ = evaluate_split("validation", epoch, step)
    summary.update(validation_accuracy=val["accuracy"], validation_loss=val["loss"])
  if config.final_train_eval:
    losses, preds = evaluate(state, train_images, train_labels)
    summary.update(train_accuracy=float(np.mean(preds == dataset.train.labels)),
                   train_loss=float(losses.mean()), train_metrics="inference mode")
  summary.update(
      dataset=dataset.name, data_source=dataset.source, class_names=list(dataset.class_names),
      model=config.model, num_params=count_params(state),
      devices=sharding.describe_devices(mesh), versions=outputs.library_versions(),
      git_commit=outputs.git_commit())
  return summary
