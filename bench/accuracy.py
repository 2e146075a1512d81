"""Default FlowGMM, labeled-only FlowGMM and the `flowgmm benchmark` baselines on fresh splits per seed.

    python bench/accuracy.py digits --seeds 4        # BENCHMARKS.md: digits, a new 1,297 / 500 split per seed
    python bench/accuracy.py two-moons --seeds 4     # 1,000 points, noise 0.05, 10 labels, scored on all points
    python bench/accuracy.py ag-size                 # time of a default fit on 5,600 x 384 features
    python bench/accuracy.py 8-gaussians --seeds 8 --first-seed 1000 --methods flowgmm --set consistency_weight=1

Unlike `flowgmm benchmark` (fixed pool and test files, one labeled draw per seed), each seed here
also draws a new digits test split, and the 2-D sets are scored on every point; the methods, the
optional standardisation and the scoring are the benchmark's own (flowgmm_cli.benchmark). Prints one JSON
line per method and a summary table; wall times are medians per fit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.baselines import Method
from flowgmm_cli.benchmark import FlowGMMMethod, Split, default_methods, median_mad, score_run, standardize_split
from flowgmm_cli.demo import digits_split
from flowgmm_cli.targets import UNLABELED
from flowgmm_cli.splits import pick_labeled
from flowgmm_cli.toy_data import TOY_DATASETS, make_toy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import parse_option  # noqa: E402


class LabeledOnly:
    """A method fitted without the unlabeled rows (for FlowGMM: the paper's "FlowGMM Sup")."""

    def __init__(self, method: Method) -> None:
        self.method = method

    def fit_predict(self, X_labeled: np.ndarray, y_labeled: np.ndarray, X_unlabeled: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
        return self.method.fit_predict(X_labeled, y_labeled, X_unlabeled[:0], X_test, seed)


METHODS: dict[str, Method] = {**default_methods(), "flowgmm-labeled-only": LabeledOnly(FlowGMMMethod())}


def _split(case: str, seed: int) -> Split:
    if case == "digits":
        X, partial, _, X_test, y_test = digits_split(seed)
        labeled = partial != UNLABELED
        return Split(X[labeled], partial[labeled], X[~labeled], X_test, y_test)
    X, y = make_toy(case, 1000, seed)
    labeled = np.zeros(len(y), dtype=bool)
    labeled[pick_labeled(y, 10 // len(np.unique(y)), seed)] = True
    return Split(X[labeled], y[labeled], X[~labeled], X, y)


def accuracy_table(case: str, seeds: int, methods: list[str], standardize: bool = False, first_seed: int = 0, options: dict | None = None) -> list[dict]:
    """One row per method: its median over the splits of seeds ``first_seed`` onwards (another
    first seed gives draws that no default was chosen on); ``options`` override FlowGMM's defaults."""
    chosen = {**METHODS, "flowgmm": FlowGMMMethod(options=options or {})}
    splits = {seed: _split(case, seed) for seed in range(first_seed, first_seed + seeds)}
    if standardize:
        splits = {seed: standardize_split(split) for seed, split in splits.items()}
    rows = []
    for method in methods:
        runs = [score_run(chosen[method], split, seed) for seed, split in splits.items()]
        median, mad = median_mad([accuracy for accuracy, _, _ in runs])
        row = {"case": case, "method": method, "median": round(median, 2), "mad": round(mad, 2), "runs": [round(a, 1) for a, _, _ in runs], "seconds_per_fit": float(np.median([s for _, s, _ in runs]))}
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
    row = {"case": "ag-size 5600x384", "seconds": time.perf_counter() - start, "epochs": model.options_.epochs, "hidden": model.options_.hidden}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["digits", *TOY_DATASETS, "ag-size"])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--standardize", action="store_true", help="give the baselines standardised features, as `flowgmm benchmark --standardize`")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds of the splits start here (the demo's 2-D sets use 0)")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="a FlowGMM option, e.g. consistency_weight=1 (repeatable)")
    args = parser.parse_args()
    if args.case == "ag-size":
        ag_size_timing()
        return
    rows = accuracy_table(args.case, args.seeds, args.methods.split(","), args.standardize, args.first_seed, dict(map(parse_option, args.set)))
    print(f"\n{args.case}, {args.seeds} seeds (median ± MAD accuracy %, seconds per fit)")
    for row in rows:
        print(f"  {row['method']:<22}{row['median']:>7.1f} ± {row['mad']:<5.1f}{row['seconds_per_fit']:>8.1f}s")


if __name__ == "__main__":
    main()
