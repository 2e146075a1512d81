#!/usr/bin/env python
"""A default fit's wall time with its fits spread over lanes (worker processes) against run in
turn in one process, in one run, the modes alternated over rounds so they share the machine's load.

Modes, each a default ``FlowGMMClassifier`` fit on ``demo.digits_split(seed)`` (1,297 rows, 5
labels per class: three members of 1,500 steps and twelve calibration fits of 250; no data
outside the installed packages):

* ``lanes``: ``--threads`` torch threads (default 2): the fits dealt to one lane per thread, this
  process and workers, each on one thread (what ``flowgmm train`` does on 2 cores).
* ``in_turn``: the same threads, every fit in this process one after another
  (``crossfit.lane_count`` is replaced for it).
* ``one_thread``: one thread, every fit in this process (``--threads 1``).

``lanes`` and ``one_thread`` run every fit on one thread (at ``--threads 2``), so their models
and temperatures must be bit for bit the same; the script checks it.

    python bench/fit_time.py [--rounds 2] [--threads 2] [--epochs E] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowgmm_cli import FlowGMMClassifier  # noqa: E402
from flowgmm_cli import estimator as estimator_module  # noqa: E402
from flowgmm_cli.demo import digits_split  # noqa: E402

MODES = ("lanes", "in_turn", "one_thread")


def one_fit(mode: str, threads: int, seed: int, epochs: int | None) -> tuple[float, FlowGMMClassifier]:
    """Seconds of one default fit in ``mode``, and the fitted model."""
    X_pool, partial, *_ = digits_split(seed)
    torch.set_num_threads(1 if mode == "one_thread" else threads)
    real = estimator_module.lane_count
    if mode == "in_turn":
        estimator_module.lane_count = lambda device, rows, n_fits: 1
    try:
        start = time.perf_counter()
        model = FlowGMMClassifier(random_state=seed, device="cpu", **({} if epochs is None else {"epochs": epochs})).fit(X_pool, partial)
        return time.perf_counter() - start, model
    finally:
        estimator_module.lane_count = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="fits per mode, alternated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the resolved default (300 on digits)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    models: dict[str, FlowGMMClassifier] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            elapsed, models[mode] = one_fit(mode, args.threads, args.seed, args.epochs)
            seconds[mode].append(elapsed)
    median = {mode: statistics.median(values) for mode, values in seconds.items()}
    same = models["lanes"].temperature_ == models["one_thread"].temperature_ and all(
        torch.equal(a, b)
        for lane_member, one_thread_member in zip(models["lanes"].members_, models["one_thread"].members_, strict=True)
        for a, b in zip(lane_member.state_dict().values(), one_thread_member.state_dict().values(), strict=True)
    )
    result = {
        "case": "digits", "threads": args.threads, "rounds": args.rounds, "epochs": models["lanes"].options_.epochs,
        **{f"{mode}_s": round(value, 1) for mode, value in median.items()},
        "in_turn_over_lanes": round(median["in_turn"] / median["lanes"], 2), "one_thread_over_lanes": round(median["one_thread"] / median["lanes"], 2),
        "temperature": round(models["lanes"].temperature_, 4), "lanes_equal_one_thread": same,
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        for mode in MODES:
            print(f"{mode:<12}{median[mode]:8.1f} s  (runs: {', '.join(f'{v:.1f}' for v in seconds[mode])})")
        print(f"in turn / lanes {result['in_turn_over_lanes']}, one thread / lanes {result['one_thread_over_lanes']}; "
              f"lanes and one thread give the same models and temperature: {same}")  # fmt: skip
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
