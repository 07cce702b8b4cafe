"""Classification metrics (NumPy only): per-class precision/recall/F1, confusion matrix, calibration."""

from __future__ import annotations

import numpy as np

from . import CLASS_NAMES


def confusion_matrix(y_true, y_pred, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """``C[i, j]`` = frames of true class i predicted as j."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def classification_report(y_true, y_pred, names=CLASS_NAMES) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (JSON-serialisable)."""
    cm = confusion_matrix(y_true, y_pred, len(names))
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.full(len(names), np.nan), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.full(len(names), np.nan), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.full(len(names), np.nan), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "per_class": {
            name: {"precision": _r(p), "recall": _r(r), "f1": _r(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, actual)
        },
        "confusion": cm.tolist(),
    }


def _r(x: float):
    return None if not np.isfinite(x) else round(float(x), 4)


def expected_calibration_error(probabilities, y_true, bins: int = 15) -> float:
    """Mean |confidence - accuracy| over confidence bins, weighted by the bin population."""
    probabilities = np.asarray(probabilities)
    conf = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(y_true)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return round(float(ece), 5)
