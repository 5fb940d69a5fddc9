"""Classification metrics computed on the host from predicted and true labels."""

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """Rows are true classes, columns predicted classes."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, preds), 1)
  return matrix


def classification_report(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> dict:
  """Accuracy, macro-averaged precision/recall/F1 and the confusion matrix.

  A class that is never predicted has precision 0 (and one never present has recall 0),
  as in scikit-learn's `zero_division=0`.
  """
  matrix = confusion_matrix(labels, preds, num_classes)
  true_pos = np.diag(matrix).astype(np.float64)
  predicted = matrix.sum(axis=0)
  actual = matrix.sum(axis=1)
  precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos),
                        where=predicted > 0)
  recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos),
                 where=denom > 0)
  return {
      "accuracy": float(true_pos.sum() / max(1, matrix.sum())),
      "macro_precision": float(precision.mean()),
      "macro_recall": float(recall.mean()),
      "macro_f1": float(f1.mean()),
      "confusion_matrix": matrix.tolist(),
  }
