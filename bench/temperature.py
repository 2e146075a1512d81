"""How far the default calibration is from the temperature the scored rows want, on suite cases.

For each case and seed of ``bench/suite.py`` (validation rows by default, never the test files),
one default fit; then, on the scored rows: the cross-fitted temperature ``fit`` chose, the
temperature that minimises those rows' NLL (which no default can see), the ECE at each, and the
ECE *floor*: the median ECE of a perfectly calibrated model with the same probabilities on as many
rows (labels drawn from the model itself), i.e. what the estimator reports for a model that is right.

It also asks where the cross-fitted temperature goes wrong: the calibration fits' accuracy on the
labeled rows they held out (``accuracy_folds``), and the temperature at which the final model's
mean confidence on its own unlabeled rows equals its accuracy on the scored rows (``t_at_accuracy``,
an oracle: it reads the scored rows' labels), with the ECE there; and the same for the accuracy the
calibration fits measured, ``(right + 1) / (held out + 2)`` (``t_at_fold_accuracy``: a rule that
needs no scored labels). ``--step-share`` sets the calibration fits' share of the model's steps,
``--min-steps`` the fewest steps a fit runs behind a principal projection and ``--least-steps``
without one (unless the model runs fewer; ``--least-steps 0`` gives a run cut short with ``epochs``
the fits of a sixth it had before 2026-12-06).

    python bench/temperature.py --cases digits mnist htru2 letter --seeds 1 --json
    python bench/temperature.py --cases mnist --set calibration_folds=8 --json
    python bench/temperature.py --cases digits ag-news --labels-per-class 5 --seeds 4 --step-share 0.25 --json
    python bench/temperature.py --cases digits two-moons --seeds 4 --set epochs=40 --least-steps 0 --json

One JSON line per case and seed: ``case``, ``seed``, ``accuracy``, ``rows``, ``accuracy_folds``,
``t_cross``, ``t_wanted``, ``t_at_accuracy``, ``t_at_fold_accuracy``, ``ece_`` at each of the four,
``ece_floor``, ``seconds`` (the fit, one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import brentq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402

from flowgmm_cli import FlowGMMClassifier, benchmark  # noqa: E402
from flowgmm_cli import defaults  # noqa: E402
from flowgmm_cli import estimator as estimator_module  # noqa: E402
from flowgmm_cli.calibration import LOG_TEMPERATURE_BOUNDS, cross_fitted_log_temperature, fit_temperature, tempered_log_proba  # noqa: E402
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


class FoldRecorder:
    """Stands in for the estimator's ``cross_fitted_log_temperature`` to keep what the calibration fits scored."""

    def __init__(self) -> None:
        self.log_joint, self.codes = np.zeros((0, 0)), np.zeros(0, dtype=np.int64)

    def __call__(self, log_joint: np.ndarray, codes: np.ndarray) -> float:
        self.log_joint, self.codes = np.asarray(log_joint), np.asarray(codes)
        return cross_fitted_log_temperature(log_joint, codes)


def temperature_at_confidence(log_joint: np.ndarray, confidence: float) -> float:
    """``log T`` at which the mean top-class probability of ``log_joint``'s rows is ``confidence``
    (it falls as ``T`` grows); a bound of :data:`LOG_TEMPERATURE_BOUNDS` when out of reach."""

    def excess(log_t: float) -> float:
        return float(np.exp(tempered_log_proba(log_joint, log_t)).max(axis=1).mean()) - confidence

    low, high = LOG_TEMPERATURE_BOUNDS
    if excess(low) <= 0:
        return low
    if excess(high) >= 0:
        return high
    return float(brentq(excess, low, high, xtol=1e-9))


def one_case(case: str, seed: int, split: str, data: Path, options: dict, labels_per_class: int | None = None) -> dict:
    loaded, n_labeled, per_class = suite.load_case(case, data, split)
    if labels_per_class is not None:
        n_labeled, per_class = labels_per_class, True
    drawn = benchmark.draw_split(loaded, n_labeled, seed, per_class)
    X = np.concatenate([drawn.X_labeled, drawn.X_unlabeled])
    y = np.concatenate([drawn.y_labeled, np.full(len(drawn.X_unlabeled), UNLABELED, dtype=drawn.y_labeled.dtype)])
    folds = FoldRecorder()
    estimator_module.cross_fitted_log_temperature = folds
    start = time.perf_counter()
    try:
        model = FlowGMMClassifier(random_state=seed, device="cpu", **options).fit(X, y, units=loaded.units)
    finally:
        estimator_module.cross_fitted_log_temperature = cross_fitted_log_temperature
    seconds = time.perf_counter() - start
    joint = model.member_log_joints(drawn.X_test)  # (members, rows, classes)
    codes = np.searchsorted(model.classes_, drawn.y_test)
    accuracy = float((tempered_log_proba(joint, 0.0).argmax(1) == codes).mean())
    cross, wanted = np.log(model.temperature_), fit_temperature(joint, codes)
    unlabeled_joint = model.member_log_joints(drawn.X_unlabeled)
    right = int((tempered_log_proba(folds.log_joint, 0.0).argmax(1) == folds.codes).sum())
    accuracy_folds = right / len(folds.codes) if len(folds.codes) else float("nan")
    at_accuracy = temperature_at_confidence(unlabeled_joint, accuracy)
    at_fold_accuracy = temperature_at_confidence(unlabeled_joint, (right + 1) / (len(folds.codes) + 2))
    temperatures = {"cross": cross, "wanted": wanted, "at_accuracy": at_accuracy, "at_fold_accuracy": at_fold_accuracy}
    proba = {name: np.exp(tempered_log_proba(joint, t)) for name, t in temperatures.items()}
    return {
        "case": case, "seed": seed, "split": split, "options": options, "labels": len(drawn.y_labeled), "rows": len(codes),
        "accuracy": round(100 * accuracy, 2), "accuracy_folds": round(100 * accuracy_folds, 2),
        "t_cross": round(float(np.exp(cross)), 3), "t_wanted": round(float(np.exp(wanted)), 3),
        "t_at_accuracy": round(float(np.exp(at_accuracy)), 3), "t_at_fold_accuracy": round(float(np.exp(at_fold_accuracy)), 3),
        "step_share": round(defaults.CALIBRATION_STEP_SHARE, 4), "min_steps": defaults.CALIBRATION_MIN_STEPS,
        "least_steps": defaults.CALIBRATION_LEAST_STEPS,
        **{f"ece_{name}": round(expected_calibration_error(p, codes), 4) for name, p in proba.items()},
        "ece_floor": round(ece_floor(proba["wanted"]), 4), "seconds": round(seconds, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/flowgmm-data"))
    parser.add_argument("--cases", nargs="+", default=["digits", "mnist", "htru2", "letter"], choices=list(suite.CASES))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--split", choices=["test", "validation"], default="validation")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="a FlowGMM option (repeatable)")
    parser.add_argument("--labels-per-class", type=suite.positive_int, help="this many labels of each class instead of the case's count")
    parser.add_argument("--step-share", type=float, default=defaults.CALIBRATION_STEP_SHARE, help="the calibration fits' share of the model's steps")
    parser.add_argument("--min-steps", type=int, default=defaults.CALIBRATION_MIN_STEPS, help="the fewest steps a calibration fit runs behind a principal projection")
    parser.add_argument("--least-steps", type=int, default=defaults.CALIBRATION_LEAST_STEPS, help="the fewest steps a calibration fit runs without one")
    parser.add_argument("--json", action="store_true", help="one JSON line per fit (else a table at the end)")
    args = parser.parse_args()
    for name in ("min_steps", "least_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 (a sixth of the model's steps only) or more, got {getattr(args, name)}")
    torch.set_num_threads(1)
    defaults.CALIBRATION_STEP_SHARE, defaults.CALIBRATION_MIN_STEPS, defaults.CALIBRATION_LEAST_STEPS = args.step_share, args.min_steps, args.least_steps
    options = dict(suite.parse_option(text) for text in args.set)
    first = suite.VALIDATION_SEED if args.split == "validation" else 0
    lines = []
    for case in args.cases:
        for seed in range(first, first + args.seeds):
            lines.append(one_case(case, seed, args.split, args.data, options, args.labels_per_class))
            if args.json:
                print(json.dumps(lines[-1]), flush=True)
    if not args.json:
        keys = ("accuracy", "accuracy_folds", "t_cross", "t_wanted", "t_at_accuracy", "t_at_fold_accuracy")
        keys += ("ece_cross", "ece_wanted", "ece_at_accuracy", "ece_at_fold_accuracy", "ece_floor")
        print(f"{'case':<10}{'seed':>6}" + "".join(f"{key:>16}" for key in keys))
        for line in lines:
            print(f"{line['case']:<10}{line['seed']:>6}" + "".join(f"{line[key]:>16}" for key in keys))


if __name__ == "__main__":
    main()
