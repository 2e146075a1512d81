"""Classification and out-of-distribution metrics: scikit-learn's where it has them; here only what it
lacks (the reliability table and ECE) and the NLL from log-probabilities."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk

__all__ = [
    "negative_log_likelihood",
    "expected_calibration_error",
    "reliability_bins",
    "fpr_at_tpr",
    "ood_report",
    "classification_report",
]


def negative_log_likelihood(log_proba: np.ndarray, y: np.ndarray) -> float:
    """Mean ``-log p(y | x)`` in nats, from log-probabilities (exact where ``p`` underflows, unlike
    ``sklearn.metrics.log_loss``, which clips probabilities)."""
    return float(-np.mean(log_proba[np.arange(len(y)), y]))


def reliability_bins(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Rows per confidence bin with their mean confidence and accuracy: the reliability diagram's numbers.

    Bin ``b`` holds confidences in ``(b/bins, (b+1)/bins]`` (a confidence of exactly 0 goes to bin 0);
    ``confidence`` and ``accuracy`` are NaN in empty bins.

    Example:
        >>> table = reliability_bins(np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35]]), np.array([0, 1, 0]), bins=2)
        >>> table["count"].tolist(), table["accuracy"].tolist()
        ([0, 3], [nan, 0.6666666666666666])
    """
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(float)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        mean_accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {"lower": edges[:-1], "upper": edges[1:], "count": count, "confidence": mean_confidence, "accuracy": mean_accuracy}


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al., 2017): confidence against accuracy in ``bins`` equal-width bins, weighted by size.

    Example:
        >>> expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), bins=10)
        0.35
    """
    table = reliability_bins(proba, y, bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return round(float(np.sum(table["count"][filled] * gaps) / len(y)), 12)


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
    """Share of ``negative`` rows accepted at the highest threshold that accepts ``tpr`` of ``positive``
    (a row is accepted when its score is at least the threshold; from ``sklearn.metrics.roc_curve``).

    Example:
        >>> fpr_at_tpr(np.arange(20.0), np.array([0.5, 5.0, 30.0]), tpr=0.95)
        0.6666666666666666
    """
    truth = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    false_rate, true_rate, _ = sk.roc_curve(truth, np.r_[positive, negative], drop_intermediate=False)
    return float(false_rate[np.argmax(true_rate >= tpr - 1e-12)])


def ood_report(log_px_in: np.ndarray, log_px_out: np.ndarray) -> dict[str, float | int]:
    """Out-of-distribution detection by ``log p(x)``: in-distribution rows are the positives (paper, Appendix G)."""
    truth = np.r_[np.ones(len(log_px_in)), np.zeros(len(log_px_out))]
    return {
        "auroc": float(sk.roc_auc_score(truth, np.r_[log_px_in, log_px_out])),
        "fpr_at_95_tpr": fpr_at_tpr(log_px_in, log_px_out, 0.95),
        "n_in": len(log_px_in),
        "n_out": len(log_px_out),
    }


def classification_report(log_proba: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, object]:
    """The metrics ``flowgmm evaluate`` prints: accuracy, NLL, ECE, Brier score, n, per-class
    precision, recall, F1 and support (``None`` where undefined), and the confusion matrix (true
    classes in rows, predicted in columns).

    Example:
        >>> report = classification_report(np.log([[0.8, 0.2], [0.5, 0.5], [0.3, 0.7]]), np.array([0, 1, 1]), ["a", "b"])
        >>> report["accuracy"], report["brier"], report["confusion_matrix"]
        (0.6666666666666666, 0.253333333333, [[1, 0], [1, 1]])
    """
    proba = np.exp(log_proba)
    predicted = proba.argmax(axis=1)
    labels = np.arange(len(classes))
    precision, recall, f1, support = sk.precision_recall_fscore_support(y, predicted, labels=labels, zero_division=np.nan)
    per_class = {
        str(name): {"precision": _defined(precision[k]), "recall": _defined(recall[k]), "f1": _defined(f1[k]), "support": int(support[k])}
        for k, name in enumerate(classes)
    }
    return {
        "accuracy": float(sk.accuracy_score(y, predicted)),
        "nll": negative_log_likelihood(log_proba, y),
        "ece": expected_calibration_error(proba, y),
        "brier": round(float(sk.brier_score_loss(y, proba, labels=labels, scale_by_half=False)), 12),
        "n": len(y),
        "per_class": per_class,
        "confusion_matrix": sk.confusion_matrix(y, predicted, labels=labels).tolist(),
    }


def _defined(value: float) -> float | None:
    """A score, or ``None`` where its denominator was zero."""
    return None if np.isnan(value) else float(value)
