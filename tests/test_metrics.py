"""Binary tasks and the metrics a user chooses on: per-class and averaged precision,
recall and F1 against hand-counted confusion matrices, ROC AUC with ties, the binary
and weighted losses against hand-computed values, class selection, the sweep's choice
on validation, and a binary run end to end on MNIST 0 against 1."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import configs, errors, inference, losses, metrics
from research import sweep as sweep_lib, sweep_results
from research.data import DataError, load_dataset
from research.models import create_model
from research.training import loop, step
from research.training.state import apply_model, create_train_state


def test_report_against_a_hand_counted_matrix_with_a_class_never_predicted():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  preds = np.array([0, 0, 1, 1, 1, 0, 1, 1, 0])   # class 2 is never predicted
  report = metrics.classification_report(labels, preds, 3, ("a", "b", "c"))
  assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [2, 2, 0]]
  # Precision: 2/4, 2/5, 0 (no prediction); recall: 2/3, 2/2, 0/4; F1: 4/7, 4/7, 0.
  assert report["per_class"] == {
      "a": {"precision": 0.5, "recall": pytest.approx(2 / 3), "f1": pytest.approx(4 / 7),
            "support": 3},
      "b": {"precision": 0.4, "recall": 1.0, "f1": pytest.approx(4 / 7), "support": 2},
      "c": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4}}
  assert report["accuracy"] == pytest.approx(4 / 9)
  assert report["macro_precision"] == pytest.approx(0.3)
  assert report["macro_recall"] == pytest.approx(5 / 9)
  assert report["macro_f1"] == pytest.approx(8 / 21)
  # Weighted by support (3, 2, 4): weighted recall is the accuracy.
  assert report["weighted_precision"] == pytest.approx(2.3 / 9)
  assert report["weighted_recall"] == pytest.approx(4 / 9)
  assert report["weighted_f1"] == pytest.approx(20 / 63)
  assert "roc_auc" not in report and "precision" not in report   # not a binary task


def test_a_class_never_present_has_recall_zero_and_counts_in_the_macro_average():
  report = metrics.classification_report(np.array([0, 0, 1]), np.array([0, 2, 1]), 3)
  assert report["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
  assert report["per_class"]["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                      "support": 0}
  assert report["macro_recall"] == pytest.approx((0.5 + 1 + 0) / 3)
  assert report["weighted_recall"] == pytest.approx((2 * 0.5 + 1) / 3)


def test_binary_scores_and_roc_auc_with_ties():
  labels = np.array([0, 0, 1, 1, 0, 1])
  scores = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.4])
  preds = (scores > 0.5).astype(int)            # [0, 0, 0, 1, 1, 0]
  report = metrics.classification_report(labels, preds, 2, scores=scores)
  # TP 1, FP 1, FN 2, TN 2.
  assert report["confusion_matrix"] == [[2, 1], [2, 1]]
  assert (report["precision"], report["recall"]) == (0.5, pytest.approx(1 / 3))
  assert report["f1"] == pytest.approx(0.4)
  assert report["accuracy"] == 0.5
  # Positive-negative pairs: 0.35 beats 0.1 (1); 0.8 beats 0.1 and 0.4 and ties 0.8
  # (2.5); 0.4 beats 0.1 and ties 0.4 (1.5): 5 of 9 pairs.
  assert report["roc_auc"] == pytest.approx(5 / 9)
  assert metrics.roc_auc(labels, -scores) == pytest.approx(4 / 9)
  assert metrics.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None


def test_binary_cross_entropy_by_hand_and_with_label_smoothing():
  logits, labels = jnp.array([[0.0], [2.0]]), jnp.array([1, 0])
  got = losses.per_example_loss("binary_cross_entropy", logits, labels)
  np.testing.assert_allclose(got, [math.log(2), math.log(1 + math.e ** 2)], rtol=1e-6)
  # Smoothed targets y (1 - s) + s / 2: label 1 with s = 0.2 is the target 0.9.
  smoothed = losses.per_example_loss("binary_cross_entropy", jnp.array([[2.0]]),
                                     jnp.array([1]), label_smoothing=0.2)
  hand = 0.9 * math.log(1 + math.e ** -2) + 0.1 * math.log(1 + math.e ** 2)
  np.testing.assert_allclose(smoothed, [hand], rtol=1e-6)
  # The one-unit head is the two-class softmax with logits (0, x).
  softmax = losses.per_example_loss("cross_entropy", jnp.array([[0.0, 2.0]]),
                                    jnp.array([1]), label_smoothing=0.2)
  np.testing.assert_allclose(smoothed, softmax, rtol=1e-6)
  assert losses.predictions("binary_cross_entropy", jnp.array([[-0.1], [0.0], [0.3]])
                            ).tolist() == [0, 0, 1]
  np.testing.assert_allclose(
      losses.probabilities("binary_cross_entropy", jnp.array([[0.0], [math.log(3)]])),
      [[0.5, 0.5], [0.25, 0.75]], rtol=1e-6)


@pytest.mark.parametrize("name, logits, hand", [
    # label 1 weighs 3: 3 log 2; label 0 weighs 1: log(1 + e^2).
    ("binary_cross_entropy", [[0.0], [2.0]], [3 * math.log(2), math.log(1 + math.e ** 2)]),
    # softmax of (0, 0) gives class 1 one half; of (log 3, 0) class 0 three quarters.
    ("cross_entropy", [[0.0, 0.0], [math.log(3), 0.0]],
     [3 * math.log(2), math.log(4 / 3)])])
def test_class_weights_multiply_each_example_by_its_class_weight(name, logits, hand):
  got = losses.per_example_loss(name, jnp.array(logits), jnp.array([1, 0]),
                                class_weights=(1.0, 3.0))
  np.testing.assert_allclose(got, hand, rtol=1e-6)


def test_class_weights_from_the_config():
  labels = np.array([0, 0, 0, 1])
  assert losses.class_weights("", labels, 2) == ()
  # n / (k * count): 4 / (2 * 3) and 4 / (2 * 1).
  assert losses.class_weights("balanced", labels, 2) == pytest.approx((2 / 3, 2.0))
  assert losses.class_weights("1,4.5", labels, 2) == (1.0, 4.5)
  with pytest.raises(errors.ConfigError, match="3 weights for 2 classes"):
    losses.class_weights("1,2,3", labels, 2)
  for bad in ("heavy", "1,-1", "0,0", "1,,2"):
    c = configs.base_config()
    c.class_weights = bad
    with pytest.raises(errors.ConfigError, match="config.class_weights"):
      configs.validate(c)


@pytest.fixture(scope="module")
def one_unit_state():
  model = create_model("mlp", input_shape=(3, 3, 1), num_classes=1, seed=0, widths=(8,))
  return create_train_state(model, optax.sgd(0.0))


@pytest.mark.parametrize("micro_batch_size", [0, 2])
def test_the_weighted_binary_train_step_reports_the_hand_computed_loss(one_unit_state,
                                                                       micro_batch_size):
  """The step's loss is the batch mean of weight x loss from the one-unit head's logits,
  with micro-batches too; its accuracy counts logit > 0 as class 1."""
  c = configs.base_config()
  c.loss, c.batch_size, c.micro_batch_size = "binary_cross_entropy", 4, micro_batch_size
  c.normalize_mean, c.normalize_std = (0.0,), (1.0,)
  state = one_unit_state
  images = jax.random.uniform(jax.random.key(1), (4, 3, 3, 1))
  labels = jnp.array([0, 1, 1, 1])
  cfg = step.StepConfig.from_config(c, 1, class_weights=(3.0, 1.0))
  train_step = jax.jit(step.train_step, static_argnums=3)
  _, got = train_step(state, {"image": images, "label": labels}, jax.random.key(0), cfg)
  logits = np.asarray(apply_model(state, state.params, images, train=False)[0])[:, 0]
  p = 1 / (1 + np.exp(-logits))
  per_example = -np.where(labels == 1, np.log(p), np.log(1 - p)) * np.array([3, 1, 1, 1])
  assert float(got["loss"]) == pytest.approx(per_example.mean(), rel=1e-5)
  assert float(got["accuracy"]) == np.mean((logits > 0) == np.asarray(labels))


def test_classes_are_selected_by_index_or_name_before_the_validation_split(tiny_folder):
  whole = load_dataset("folder", tiny_folder, source="local")
  picked = load_dataset("folder", tiny_folder, source="local", classes=("c", 0),
                        validation_size=0.25)
  assert picked.class_names == ("c", "a")
  assert len(picked.train) + len(picked.validation) == 24    # 12 each of c and a
  assert len(picked.validation) == 6 and np.bincount(picked.validation.labels).tolist() == [3, 3]
  # Relabelled in the order given: c -> 0, a -> 1.
  np.testing.assert_array_equal(picked.test.images[picked.test.labels == 0],
                                whole.test.images[whole.test.labels == 2])
  np.testing.assert_array_equal(picked.test.images[picked.test.labels == 1],
                                whole.test.images[whole.test.labels == 0])
  for classes, message in ((("dog", 1), "no class named 'dog'"), ((0, 3), "out of range"),
                           ((0, "a"), "names a class twice")):
    with pytest.raises(DataError, match=message):
      load_dataset("folder", tiny_folder, source="local", classes=classes)
  for classes in ((1,), (1, 1), (0, -1), (0, True)):
    c = configs.base_config()
    c.classes = classes
    with pytest.raises(errors.ConfigError, match="config.classes"):
      configs.validate(c)


def _tiny_run_config(tiny_folder, **overrides):
  c = configs.base_config()
  c.dataset, c.data_dir, c.data_source, c.progress = "folder", str(tiny_folder), "local", False
  c.model, c.batch_size, c.num_epochs = "mlp", 12, 1
  for key, value in overrides.items():
    c[key] = value
  return c


def test_config_checks_against_the_data(tiny_folder, tmp_path):
  binary = _tiny_run_config(tiny_folder, loss="binary_cross_entropy")
  with pytest.raises(errors.ConfigError, match=r"needs exactly 2 classes; folder has 3: "
                     r"pick two with config.classes"):
    loop.train_and_evaluate(binary, tmp_path / "a")
  weights = _tiny_run_config(tiny_folder, class_weights="1,2")
  with pytest.raises(errors.ConfigError, match=r"config.class_weights='1,2' gives 2 "
                     r"weights for 3 classes"):
    loop.train_and_evaluate(weights, tmp_path / "b")
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _stats(sweep, rows):
  table = [{"point": p, "seed": s, **values} for p, s, values in rows]
  return sweep_results.per_point(sweep, table)


def test_sweep_table_gains_validation_and_reports_the_test_score_of_the_point_chosen_on_it(
    tmp_path):
  sweep = sweep_lib.Sweep([sweep_lib.Point({}, name=n) for n in ("a", "b")], title="t")
  run = lambda val, test: {"validation_accuracy": val, "test_accuracy": test,
                           "train_accuracy": 1.0, "generalization_gap": 1 - test,
                           "steps": 10, "wall_time_s": 1.0}
  # b is best on validation; a would be chosen on test.
  stats = _stats(sweep, [("a", 0, run(0.80, 0.95)), ("a", 1, run(0.82, 0.97)),
                         ("b", 0, run(0.90, 0.91)), ("b", 1, run(0.92, 0.93))])
  sweep_results.write_markdown(sweep, stats, 2, tmp_path / "results.md")
  text = (tmp_path / "results.md").read_text()
  assert "| point | seeds | train acc (%) | val acc (%) | test acc (%) |" in text
  assert "| b | 2 | 100.00 ± 0.00 | 91.00 ± 1.41 | 92.00 ± 1.41 |" in text
  assert text.count("Chosen on validation") == 1
  assert "Chosen on validation accuracy: **b** (validation 91.00 ± 1.41%). Its test " \
         "accuracy, 92.00 ± 1.41%," in text

  without = {k: v for k, v in run(0.0, 0.9).items() if k != "validation_accuracy"}
  sweep_results.write_markdown(sweep, _stats(sweep, [("a", 0, without)]), 1,
                               tmp_path / "plain.md")
  plain = (tmp_path / "plain.md").read_text()
  assert "val acc" not in plain and "Chosen" not in plain
  assert "| point | seeds | train acc (%) | test acc (%) |" in plain
  assert "Train accuracy is measured in inference mode" in plain
  # Runs without a final train evaluation say so, and so does the table.
  sweep_results.write_markdown(sweep, _stats(sweep, [("a", 0, without)]), 1,
                               tmp_path / "running.md", train_metrics=[
                                   "running average over the last log window, training mode"])
  running = (tmp_path / "running.md").read_text()
  assert "inference mode" not in running
  assert "Train accuracy is the running average over the last log window" in running


def test_binary_run_end_to_end_on_mnist_0_against_1(data_dir, tmp_path):
  """A one-unit sigmoid head on MNIST 0 vs 1 with balanced class weights, validated every
  epoch and choosing its best checkpoint on validation F1: the metrics land in
  summary.json and metrics.jsonl, the confusion matrix is drawn, and the checkpoint
  re-evaluates to the same numbers, in the run and in research.predict's model."""
  c = configs.base_config()
  c.dataset, c.data_dir, c.classes = "mnist", str(data_dir), (0, 1)
  c.loss, c.class_weights, c.label_smoothing = "binary_cross_entropy", "balanced", 0.1
  c.model_kwargs.widths = (16,)
  c.train_subset, c.validation_size, c.batch_size, c.num_epochs = 600, 0.1, 50, 2
  c.best_metric, c.restore_best, c.progress = "validation_macro_f1", True, False
  workdir = tmp_path / "run"
  state, summary = loop.run_training(c, str(workdir))
  assert {x.shape for x in jax.tree.leaves(state.params["head"])} == {(16, 1), (1,)}
  assert summary["class_names"] == ["0", "1"] and summary["positive_class"] == "1"
  w0, w1 = summary["class_weights"]   # balanced: MNIST has more ones than zeros
  assert w0 > 1 > w1
  assert summary["test_accuracy"] > 0.98 and summary["test_roc_auc"] > 0.99
  matrix = np.array(summary["test_confusion_matrix"])
  assert matrix.sum(axis=1).tolist() == [980, 1135]   # MNIST's test zeros and ones
  assert summary["test_recall"] == pytest.approx(matrix[1, 1] / 1135)
  assert summary["test_per_class"]["0"]["support"] == 980
  assert summary["validation_accuracy"] > 0.95 and "validation_roc_auc" in summary
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  validation = [r for r in records if r["split"] == "validation"]
  assert [r["epoch"] for r in validation] == [1, 2]
  assert {"macro_f1", "roc_auc"} <= set(validation[0])
  best = max(validation, key=lambda r: r["macro_f1"])   # the first of equals
  assert summary["best"] == {"metric": "validation_macro_f1", "value": best["macro_f1"],
                             "step": best["step"]}
  assert (workdir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
  c.mode = "eval"
  again = loop.train_and_evaluate(c, str(workdir))
  assert again["test_accuracy"] == summary["test_accuracy"]
  assert again["test_roc_auc"] == summary["test_roc_auc"]
  # research.predict's model: two probabilities from the one unit.
  test = load_dataset("mnist", data_dir, classes=(0, 1)).test
  probs = np.asarray(inference.restore(workdir)(test.images)["probabilities"])
  np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
  assert np.mean(probs.argmax(axis=1) == test.labels) == summary["test_accuracy"]
