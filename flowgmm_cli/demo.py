"""``flowgmm demo``: FlowGMM against labeled-only FlowGMM on the paper's 2-D sets and scikit-learn's digits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .estimator import UNLABELED, FlowGMMClassifier
from .plots import plot_decision_boundaries
from .predictions import prediction_table, write_table
from .toy_data import TOY_DATASETS, make_toy, pick_labeled

__all__ = ["run_demo", "digits_split"]

LABELS_PER_TOY_SET = 10
DIGITS_LABELS_PER_CLASS = 5


def digits_split(seed: int, labels_per_class: int = DIGITS_LABELS_PER_CLASS):
    """scikit-learn's digits as in BENCHMARKS.md: stratified 1,297 pool / 500 test, a few labels per class.

    Returns ``(X_pool, y_pool_partial, y_pool_true, X_test, y_test)`` with ``-1`` for unlabeled rows.
    """
    X, y = load_digits(return_X_y=True)
    X_pool, X_test, y_pool, y_test = train_test_split(X.astype(np.float32), y, test_size=500, stratify=y, random_state=seed)
    labeled = pick_labeled(y_pool, labels_per_class, seed)
    partial = np.full_like(y_pool, UNLABELED)
    partial[labeled] = y_pool[labeled]
    return X_pool, partial, y_pool, X_test, y_test


def _fit_pair(X: np.ndarray, partial: np.ndarray, seed: int) -> tuple[FlowGMMClassifier, FlowGMMClassifier]:
    """FlowGMM on all rows, and the same model on the labeled rows only."""
    labeled = partial != UNLABELED
    semi = FlowGMMClassifier(random_state=seed, device="cpu").fit(X, partial)
    supervised = FlowGMMClassifier(random_state=seed, device="cpu").fit(X[labeled], partial[labeled])
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
    return results


def _row(name: str, n_labeled: int, semi: float, supervised: float) -> dict:
    return {"dataset": name, "n_labeled": n_labeled, "flowgmm": float(semi), "labeled_only": float(supervised)}
