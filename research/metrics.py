"""Classification metrics computed on the host from predicted and true labels (and, for
ROC AUC, scores), with scikit-learn's definitions: a class that is never predicted has
precision 0 and one never present has recall 0 (`zero_division=0`)."""

from collections.abc import Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """Rows are true classes, columns predicted classes."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, preds), 1)
  return matrix


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a / b, 0 where b is 0."""
  a = np.asarray(a, np.float64)
  return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support (true examples) of each class."""
  true_pos = np.diag(matrix)
  precision = _ratio(true_pos, matrix.sum(axis=0))
  recall = _ratio(true_pos, matrix.sum(axis=1))
  f1 = _ratio(2 * precision * recall, precision + recall)
  return {"precision": precision, "recall": recall, "f1": f1, "support": matrix.sum(axis=1)}


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
  """Area under the ROC curve of `scores` for class 1 against class 0: the probability
  that a random positive scores above a random negative, ties counting one half (the
  Mann-Whitney U statistic, from average ranks). None when a class is absent."""
  positive = np.asarray(labels) == 1
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not (n_pos and n_neg):
    return None
  import scipy.stats   # here: importing it costs every run a second, and few need it
  ranks = scipy.stats.rankdata(scores)   # ties get their average rank
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_report(labels: np.ndarray, preds: np.ndarray, num_classes: int,
                          class_names: Sequence[str] = (),
                          scores: np.ndarray | None = None) -> dict:
  """Accuracy; precision, recall and F1 per class (keyed by name) and their macro and
  support-weighted averages; the confusion matrix. With two classes, also class 1's
  precision, recall and F1 (the positive class, as in a binary task), and the ROC AUC
  when `scores` (the probability of class 1) are given."""
  matrix = confusion_matrix(labels, preds, num_classes)
  scores_by_class = per_class_scores(matrix)
  support = scores_by_class["support"]
  names = list(class_names) or [str(i) for i in range(num_classes)]
  report = {"accuracy": float(np.trace(matrix) / max(1, matrix.sum()))}
  for key in ("precision", "recall", "f1"):
    values = scores_by_class[key]
    report[f"macro_{key}"] = float(values.mean())
    report[f"weighted_{key}"] = float(values @ support / max(1, support.sum()))
  report["per_class"] = {name: {key: (int if key == "support" else float)(values[i])
                                for key, values in scores_by_class.items()}
                         for i, name in enumerate(names)}
  report["confusion_matrix"] = matrix.tolist()
  if num_classes == 2:
    report.update({key: float(scores_by_class[key][1]) for key in ("precision", "recall",
                                                                   "f1")})
    if scores is not None:
      report["roc_auc"] = roc_auc(labels, scores)
  return report
