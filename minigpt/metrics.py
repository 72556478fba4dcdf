"""Classification metrics: confusion matrix, per-class precision/recall/F1, accuracy, macro and
weighted averages, printed like a classification report. Follows scikit-learn's definitions
(a precision or recall whose denominator is zero is reported as 0)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict:
    """Per-class and averaged precision, recall, F1 and support, plus accuracy and the confusion matrix."""
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0).astype(np.float64), cm.sum(axis=1).astype(np.float64)
    precision, recall = _safe_divide(tp, predicted), _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = support.sum()
    report = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1-score": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    report["accuracy"] = float(tp.sum() / total) if total else 0.0
    weights = support / total if total else np.zeros(n)
    for avg, w in (("macro avg", np.full(n, 1.0 / n)), ("weighted avg", weights)):
        report[avg] = {"precision": float((precision * w).sum()), "recall": float((recall * w).sum()),
                       "f1-score": float((f1 * w).sum()), "support": int(total)}
    report["confusion_matrix"] = cm.tolist()
    return report


def format_report(report: dict, class_names: Sequence[str], digits: int = 4) -> str:
    """The report as an aligned text table."""
    width = max(12, *(len(n) for n in class_names))
    lines = [f"{'':>{width}} {'precision':>10} {'recall':>10} {'f1-score':>10} {'support':>10}", ""]
    row = lambda name, r: (f"{name:>{width}} {r['precision']:>10.{digits}f} {r['recall']:>10.{digits}f} "
                           f"{r['f1-score']:>10.{digits}f} {r['support']:>10}")
    lines += [row(name, report[name]) for name in class_names]
    total = report["macro avg"]["support"]
    lines += ["", f"{'accuracy':>{width}} {'':>10} {'':>10} {report['accuracy']:>10.{digits}f} {total:>10}"]
    lines += [row("macro avg", report["macro avg"]), row("weighted avg", report["weighted avg"])]
    return "\n".join(lines)
