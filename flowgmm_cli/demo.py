"""``flowgmm demo``: FlowGMM against labeled-only FlowGMM on the paper's 2-D sets and scikit-learn's digits,
then the digit images through the image flow and through EfficientNet-Lite0 features (:mod:`.demo_images`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .demo_images import run_digit_images, run_digit_pixels
from .estimator import FlowGMMClassifier
from .targets import UNLABELED
from .plots import plot_decision_boundaries
from .predictions import prediction_table, write_table
from .splits import pick_labeled
from .toy_data import TOY_DATASETS, make_toy

__all__ = ["digits_rows", "digits_split", "run_demo"]

LABELS_PER_TOY_SET = 10
DIGITS_LABELS_PER_CLASS = 5


def digits_split(seed: int, labels_per_class: int = DIGITS_LABELS_PER_CLASS):
    """scikit-learn's digits as in BENCHMARKS.md: stratified 1,297 pool / 500 test, a few labels per class.

    Returns ``(X_pool, y_pool_partial, y_pool_true, X_test, y_test)`` with ``-1`` for unlabeled rows.
    """
    X, y = load_digits(return_X_y=True)
    pool, test = digits_rows(seed)
    labeled = pick_labeled(y[pool], labels_per_class, seed)
    partial = np.full(len(pool), UNLABELED)
    partial[labeled] = y[pool][labeled]
    return X[pool].astype(np.float32), partial, y[pool], X[test].astype(np.float32), y[test]


def digits_rows(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of :func:`digits_split`'s pool and test rows in scikit-learn's digit order."""
    y = load_digits().target
    pool, test = train_test_split(np.arange(len(y)), test_size=500, stratify=y, random_state=seed)
    return pool, test


def _fit_pair(X: np.ndarray, partial: np.ndarray, seed: int) -> tuple[FlowGMMClassifier, FlowGMMClassifier]:
    """FlowGMM on all rows, and the same model on the labeled rows only; without the calibration
    fits, which would add at least two thirds to the demo's time and leave its accuracies as they are."""
    labeled = partial != UNLABELED
    semi = FlowGMMClassifier(random_state=seed, device="cpu", calibration_folds=0).fit(X, partial)
    supervised = FlowGMMClassifier(random_state=seed, device="cpu", calibration_folds=0).fit(X[labeled], partial[labeled])
    return semi, supervised


def run_demo(output: Path, console: Console, seed: int = 0) -> list[dict]:
    """Run every demo case, write ``<case>_predictions.csv`` and ``<case>_boundary.png``; return the scores."""
    results = []
    for name in TOY_DATASETS:
        start = time.perf_counter()
        X, y = make_toy(name, 1000, seed)
        per_class = max(1, LABELS_PER_TOY_SET // len(np.unique(y)))
        labeled = pick_labeled(y, per_class, seed)
        partial = np.full_like(y, UNLABELED)
        partial[labeled] = y[labeled]
        semi, supervised = _fit_pair(X, partial, seed)
        write_table(prediction_table(semi, np.arange(len(X)), X), output / f"{name}_predictions.csv")
        plot_decision_boundaries(
            [("FlowGMM (labeled + unlabeled)", semi), ("labeled only", supervised)],
            X, labeled, y[labeled], output / f"{name}_boundary.png",
        )  # fmt: skip
        results.append(_row(name, len(labeled), semi.score(X, y), supervised.score(X, y)))
        console.print(f"{name}: FlowGMM {results[-1]['flowgmm']:.3f}, labeled-only {results[-1]['labeled_only']:.3f} ({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    X_pool, partial, _, X_test, y_test = digits_split(seed)
    semi, supervised = _fit_pair(X_pool, partial, seed)
    write_table(prediction_table(semi, np.arange(len(X_test)), X_test), output / "digits_predictions.csv")
    results.append(_row("digits", int((partial != UNLABELED).sum()), semi.score(X_test, y_test), supervised.score(X_test, y_test)))
    console.print(f"digits: FlowGMM {results[-1]['flowgmm']:.3f}, labeled-only {results[-1]['labeled_only']:.3f} ({time.perf_counter() - start:.0f} s)")
    pool, test = digits_rows(seed)
    results.append(run_digit_pixels(output, console, (pool, partial, test, y_test), seed))
    results.append(run_digit_images(output, console, (pool, partial, test, y_test), seed))
    return results


def _row(name: str, n_labeled: int, semi: float, supervised: float) -> dict:
    return {"dataset": name, "n_labeled": n_labeled, "flowgmm": float(semi), "labeled_only": float(supervised)}
