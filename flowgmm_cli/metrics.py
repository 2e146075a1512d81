"""Classification metrics on predicted probabilities: accuracy, NLL, ECE, per-class recall."""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "negative_log_likelihood", "expected_calibration_error", "per_class_recall", "classification_report"]


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose most probable class is ``y`` (class indices)."""
    return float(np.mean(proba.argmax(axis=1) == y))


def negative_log_likelihood(log_proba: np.ndarray, y: np.ndarray) -> float:
    """Mean ``-log p(y | x)`` in nats."""
    return float(-np.mean(log_proba[np.arange(len(y)), y]))


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al., 2017): confidence against accuracy in ``bins`` equal-width bins, weighted by size.

    Example:
        >>> expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), bins=10)
        0.35
    """
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to bin 0
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return round(float(total), 12)


def per_class_recall(proba: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    """Recall of each class (``None`` for a class with no rows)."""
    predicted = proba.argmax(axis=1)
    return {
        str(name): (float(np.mean(predicted[y == k] == k)) if np.any(y == k) else None) for k, name in enumerate(classes)
    }


def classification_report(log_proba: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, object]:
    """The metrics ``flowgmm evaluate`` prints: accuracy, nll, ece, n and per-class recall."""
    proba = np.exp(log_proba)
    return {
        "accuracy": accuracy(proba, y),
        "nll": negative_log_likelihood(log_proba, y),
        "ece": expected_calibration_error(proba, y),
        "n": int(len(y)),
        "per_class_recall": per_class_recall(proba, y, classes),
    }
