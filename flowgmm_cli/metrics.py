"""Classification and out-of-distribution metrics on predicted probabilities and scores (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy",
    "negative_log_likelihood",
    "expected_calibration_error",
    "reliability_bins",
    "brier_score",
    "precision_recall_f1",
    "confusion_matrix",
    "auroc",
    "fpr_at_tpr",
    "ood_report",
    "classification_report",
]


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose most probable class is ``y`` (class indices)."""
    return float(np.mean(proba.argmax(axis=1) == y))


def negative_log_likelihood(log_proba: np.ndarray, y: np.ndarray) -> float:
    """Mean ``-log p(y | x)`` in nats."""
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


def brier_score(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean over rows of ``Σ_k (p_k − [y = k])²`` (Brier, 1950): 0 is perfect, 2 the worst.

    Example:
        >>> brier_score(np.array([[0.8, 0.2], [0.5, 0.5]]), np.array([0, 1]))
        0.29
    """
    onehot = np.eye(proba.shape[1])[y]
    return round(float(np.mean(np.sum((proba - onehot) ** 2, axis=1))), 12)


def confusion_matrix(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with true classes in rows and predicted classes in columns, shape ``(K, K)``.

    Example:
        >>> confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 2).tolist()
        [[1, 1], [0, 1]]
    """
    return np.bincount(y * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def precision_recall_f1(matrix: np.ndarray, classes: list[str]) -> dict[str, dict[str, float | int | None]]:
    """Precision, recall, F1 and support of each class from a confusion matrix.

    A score whose denominator is zero (no row of the class, or none predicted as it) is ``None``
    rather than a silent 0, so a reader sees that it is undefined; F1 is ``2TP / (2TP + FP + FN)``.

    Example:
        >>> precision_recall_f1(np.array([[1, 1], [0, 1]]), ["a", "b"])["b"]
        {'precision': 0.5, 'recall': 1.0, 'f1': 0.6666666666666666, 'support': 1}
    """
    true_positive = np.diag(matrix)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    report: dict[str, dict[str, float | int | None]] = {}
    for k, name in enumerate(classes):
        tp, either = true_positive[k], predicted[k] + actual[k]
        report[str(name)] = {
            "precision": float(tp / predicted[k]) if predicted[k] else None,
            "recall": float(tp / actual[k]) if actual[k] else None,
            "f1": float(2 * tp / either) if either else None,
            "support": int(actual[k]),
        }
    return report


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of a score that should be higher for ``positive`` rows.

    The Mann-Whitney statistic: the probability that a random positive outscores a random
    negative, ties counting one half.

    Example:
        >>> auroc(np.array([3.0, 2.0, 1.0]), np.array([1.0, 0.0]))
        0.9166666666666666
    """
    scores = np.concatenate([positive, negative])
    ranks = _average_ranks(scores)
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
    """Share of ``negative`` rows accepted by the highest threshold that accepts ``tpr`` of ``positive``.

    A row is accepted when its score is at least the threshold; the threshold is the highest
    score value at which the share of accepted positives reaches ``tpr`` (as ``sklearn.metrics.roc_curve``).

    Example:
        >>> fpr_at_tpr(np.arange(20.0), np.array([0.5, 5.0, 30.0]), tpr=0.95)
        0.6666666666666666
    """
    ordered = np.sort(positive)[::-1]
    threshold = ordered[int(np.ceil(tpr * len(ordered))) - 1]
    return float(np.mean(negative >= threshold))


def ood_report(log_px_in: np.ndarray, log_px_out: np.ndarray) -> dict[str, float | int]:
    """Out-of-distribution detection by ``log p(x)``: in-distribution rows are the positives (paper, Appendix G)."""
    return {
        "auroc": auroc(log_px_in, log_px_out),
        "fpr_at_95_tpr": fpr_at_tpr(log_px_in, log_px_out, 0.95),
        "n_in": len(log_px_in),
        "n_out": len(log_px_out),
    }


def classification_report(log_proba: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, object]:
    """The metrics ``flowgmm evaluate`` prints: accuracy, NLL, ECE, Brier score, n, per-class scores
    and the confusion matrix (true classes in rows, predicted in columns)."""
    proba = np.exp(log_proba)
    matrix = confusion_matrix(y, proba.argmax(axis=1), len(classes))
    return {
        "accuracy": accuracy(proba, y),
        "nll": negative_log_likelihood(log_proba, y),
        "ece": expected_calibration_error(proba, y),
        "brier": brier_score(proba, y),
        "n": len(y),
        "per_class": precision_recall_f1(matrix, classes),
        "confusion_matrix": matrix.tolist(),
    }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 … ends, averaged
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
