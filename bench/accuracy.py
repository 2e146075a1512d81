"""Accuracy of default FlowGMM against labeled-only baselines on the same splits, median over seeds.

    python bench/accuracy.py digits --seeds 4        # BENCHMARKS.md: digits, 5 labels per class
    python bench/accuracy.py two-moons --seeds 4     # 1,000 points, noise 0.05, 10 labels
    python bench/accuracy.py ag-size                 # time of a default fit on 5,600 x 384 features

Prints one JSON line per method and a summary table; wall times are per fit.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, LeaveOneOut
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.demo import digits_split
from flowgmm_cli.estimator import UNLABELED
from flowgmm_cli.toy_data import make_toy, pick_labeled


def _split(case: str, seed: int):
    if case == "digits":
        X, partial, _, X_test, y_test = digits_split(seed)
        return X, partial, X_test, y_test
    X, y = make_toy(case, 1000, seed)
    partial = np.full_like(y, UNLABELED)
    labeled = pick_labeled(y, 10 // len(np.unique(y)), seed)
    partial[labeled] = y[labeled]
    return X, partial, X, y


def _knn(X, y):
    search = GridSearchCV(KNeighborsClassifier(), {"n_neighbors": [1, 3, 5, 7]}, cv=LeaveOneOut())
    return make_pipeline(StandardScaler(), search).fit(X, y)


METHODS = {
    "flowgmm": lambda X, p, s: FlowGMMClassifier(random_state=s).fit(X, p),
    "flowgmm-labeled-only": lambda X, p, s: FlowGMMClassifier(random_state=s).fit(X[p != UNLABELED], p[p != UNLABELED]),
    "knn": lambda X, p, s: _knn(X[p != UNLABELED], p[p != UNLABELED]),
    "logistic-regression": lambda X, p, s: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X[p != UNLABELED], p[p != UNLABELED]),
    "mlp": lambda X, p, s: make_pipeline(StandardScaler(), MLPClassifier((256, 256), alpha=1e-3, max_iter=2000, random_state=s)).fit(X[p != UNLABELED], p[p != UNLABELED]),
    "label-spreading": lambda X, p, s: make_pipeline(StandardScaler(), LabelSpreading(kernel="knn", n_neighbors=10, max_iter=200)).fit(X, p),
}


def accuracy_table(case: str, seeds: int, methods: list[str]) -> list[dict]:
    rows = []
    for method in methods:
        scores, seconds = [], []
        for seed in range(seeds):
            X, partial, X_test, y_test = _split(case, seed)
            start = time.perf_counter()
            model = METHODS[method](X, partial, seed)
            seconds.append(time.perf_counter() - start)
            scores.append(100 * float(np.mean(model.predict(X_test) == y_test)))
        row = {"case": case, "method": method, "median": float(np.median(scores)), "runs": scores, "seconds_per_fit": float(np.median(seconds))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def ag_size_timing() -> dict:
    """Default fit on 5,600 x 384 synthetic features with 200 labels (AG News size)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 384))
    y = np.repeat(np.arange(4), 1400)
    X = (centres[y] + rng.normal(0, 1.5, (5600, 384))).astype(np.float32)
    partial = np.full_like(y, UNLABELED)
    partial[pick_labeled(y, 50, 0)] = y[pick_labeled(y, 50, 0)]
    start = time.perf_counter()
    model = FlowGMMClassifier().fit(X, partial)
    row = {"case": "ag-size 5600x384", "seconds": time.perf_counter() - start, "epochs": model.training_options_.epochs, "hidden": model.architecture_.hidden}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["digits", "two-moons", "two-circles", "pinwheel", "8-gaussians", "ag-size"])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    args = parser.parse_args()
    if args.case == "ag-size":
        ag_size_timing()
        return
    rows = accuracy_table(args.case, args.seeds, args.methods.split(","))
    print(f"\n{args.case}, {args.seeds} seeds (median accuracy %, seconds per fit)")
    for row in rows:
        print(f"  {row['method']:<22}{row['median']:>7.1f}{row['seconds_per_fit']:>8.1f}s")


if __name__ == "__main__":
    main()
