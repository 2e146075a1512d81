"""How far the default calibration is from the temperature the scored rows want, on suite cases.

For each case and seed of ``bench/suite.py`` (validation rows by default, never the test files),
one default fit; then, on the scored rows: the cross-fitted temperature ``fit`` chose, the
temperature that minimises those rows' NLL (which no default can see), the ECE at each, and the
ECE *floor*: the median ECE of a perfectly calibrated model with the same probabilities on as many
rows (labels drawn from the model itself), i.e. what the estimator reports for a model that is right.

    python bench/temperature.py --cases digits mnist htru2 letter --seeds 1 --json
    python bench/temperature.py --cases mnist --set calibration_folds=8 --json

One JSON line per case and seed: ``case``, ``seed``, ``accuracy``, ``rows``, ``t_cross``,
``t_wanted``, ``ece_cross``, ``ece_wanted``, ``ece_floor``, ``seconds`` (the fit, one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402

from flowgmm_cli import FlowGMMClassifier, benchmark  # noqa: E402
from flowgmm_cli.calibration import fit_temperature, tempered_log_proba  # noqa: E402
from flowgmm_cli.metrics import expected_calibration_error  # noqa: E402
from flowgmm_cli.targets import UNLABELED  # noqa: E402

FLOOR_DRAWS = 200


def ece_floor(proba: np.ndarray, seed: int = 0, draws: int = FLOOR_DRAWS) -> float:
    """Median ECE of ``proba`` against labels drawn from ``proba`` itself (a calibrated model's ECE)."""
    rng = np.random.default_rng(seed)
    cumulative = proba.cumsum(axis=1)
    values = []
    for _ in range(draws):
        labels = (rng.random((len(proba), 1)) > cumulative).sum(axis=1).clip(max=proba.shape[1] - 1)
        values.append(expected_calibration_error(proba, labels))
    return float(np.median(values))


def one_case(case: str, seed: int, split: str, data: Path, options: dict) -> dict:
    loaded, n_labeled = suite.load_case(case, data, split)
    drawn = benchmark.draw_split(loaded, n_labeled, seed)
    X = np.concatenate([drawn.X_labeled, drawn.X_unlabeled])
    y = np.concatenate([drawn.y_labeled, np.full(len(drawn.X_unlabeled), UNLABELED, dtype=drawn.y_labeled.dtype)])
    start = time.perf_counter()
    model = FlowGMMClassifier(random_state=seed, device="cpu", **options).fit(X, y, units=loaded.units)
    seconds = time.perf_counter() - start
    joint = model.joint_log_prob(drawn.X_test)
    codes = np.searchsorted(model.classes_, drawn.y_test)
    cross, wanted = np.log(model.temperature_), fit_temperature(joint, codes)
    proba_cross, proba_wanted = (np.exp(tempered_log_proba(joint, t)) for t in (cross, wanted))
    return {
        "case": case, "seed": seed, "split": split, "options": options, "rows": len(codes),
        "accuracy": round(100 * float((joint.argmax(1) == codes).mean()), 2),
        "t_cross": round(float(np.exp(cross)), 3), "t_wanted": round(float(np.exp(wanted)), 3),
        "ece_cross": round(expected_calibration_error(proba_cross, codes), 4),
        "ece_wanted": round(expected_calibration_error(proba_wanted, codes), 4),
        "ece_floor": round(ece_floor(proba_wanted), 4), "seconds": round(seconds, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/flowgmm-data"))
    parser.add_argument("--cases", nargs="+", default=["digits", "mnist", "htru2", "letter"], choices=list(suite.CASES))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--split", choices=["test", "validation"], default="validation")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="a FlowGMM option (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON line per fit (else a table at the end)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = dict(suite._option(text) for text in args.set)
    first = suite.VALIDATION_SEED if args.split == "validation" else 0
    lines = []
    for case in args.cases:
        for seed in range(first, first + args.seeds):
            lines.append(one_case(case, seed, args.split, args.data, options))
            if args.json:
                print(json.dumps(lines[-1]), flush=True)
    if not args.json:
        keys = ("accuracy", "t_cross", "t_wanted", "ece_cross", "ece_wanted", "ece_floor")
        print(f"{'case':<10}{'seed':>6}" + "".join(f"{key:>12}" for key in keys))
        for line in lines:
            print(f"{line['case']:<10}{line['seed']:>6}" + "".join(f"{line[key]:>12}" for key in keys))


if __name__ == "__main__":
    main()
