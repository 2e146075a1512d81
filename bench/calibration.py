"""Calibration on digits (paper, section 6.1): test NLL, ECE and Brier before and after ``calibrate``.

Per seed: default FlowGMM on ``demo.digits_split(seed)``, with ``--val-per-class`` unlabeled pool
rows per class held out of training (never test rows); the variance scale is fitted on those
held-out rows with their labels, then the 500 test rows are scored before and after.

    python bench/calibration.py --seeds 4 [--val-per-class 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowgmm_cli import FlowGMMClassifier  # noqa: E402
from flowgmm_cli.demo import digits_split  # noqa: E402
from flowgmm_cli.targets import UNLABELED  # noqa: E402
from flowgmm_cli.metrics import classification_report  # noqa: E402

METRICS = ("accuracy", "nll", "ece", "brier")


def one_seed(seed: int, val_per_class: int) -> dict:
    X_pool, partial, y_true, X_test, y_test = digits_split(seed)
    unlabeled = np.flatnonzero(partial == UNLABELED)
    val_rows, _ = train_test_split(unlabeled, train_size=10 * val_per_class, stratify=y_true[unlabeled], random_state=seed)
    train_rows = np.setdiff1d(np.arange(len(X_pool)), val_rows)
    model = FlowGMMClassifier(random_state=seed, device="cpu").fit(X_pool[train_rows], partial[train_rows])
    classes = [str(c) for c in model.classes_]

    def scores() -> dict:
        report = classification_report(model.predict_log_proba(X_test), y_test, classes)
        return {key: report[key] for key in METRICS}

    before = scores()
    model.calibrate(X_pool[val_rows], y_true[val_rows])
    return {"seed": seed, "temperature": model.temperature_, "before": before, "after": scores()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--val-per-class", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = [one_seed(seed, args.val_per_class) for seed in range(args.seeds)]
    for run in runs:
        print(json.dumps(run))
    print(f"{'median over seeds':<20}{'before':>10}{'after':>10}")
    for key in METRICS:
        before = statistics.median(run["before"][key] for run in runs)
        after = statistics.median(run["after"][key] for run in runs)
        print(f"{key:<20}{before:>10.4f}{after:>10.4f}")
    print(f"{'temperature':<20}{1.0:>10.4f}{statistics.median(run['temperature'] for run in runs):>10.4f}")


if __name__ == "__main__":
    main()
