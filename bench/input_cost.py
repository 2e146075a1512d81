#!/usr/bin/env python
"""What the square root costs per training step, as ratios measured in one run.

Wide long-tailed features (EfficientNet-Lite0's 1,280 pooled activations) take a square root
before the standardisation and the projection (``--square-root``). The root runs on every batch the
model scores and inside every noisy view (``InputNoise``: root, noise, inverse root), so on a CPU
its elementwise work is a visible share of a step whose flow sees only 64 directions. Timed
side by side, interleaved, on a step's rows (64 labeled + 2 × 256 unlabeled):

* ``root / plain root``: :class:`SquareRoot` against the same map written plainly with
  ``torch.where`` on the sign (one temporary per operation), forward only;
* ``input work, root / standardise``: the chain's forward on the step's rows plus the three noisy
  batches, with the root against standardisation alone (what the step costs without the root).

Usage::

    .venv/bin/python bench/input_cost.py [--repeats 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from flowgmm_cli.factory import prepare
from flowgmm_cli.options import TrainOptions
from flowgmm_cli.stores import ArrayStore
from flowgmm_cli.transforms import InputNoise, SquareRoot, TransformChain

DIM, PROJECTED, LABELED, UNLABELED = 1280, 64, 64, 256


def plain_root(x: torch.Tensor, scale: float, offset: float = SquareRoot.OFFSET) -> tuple[torch.Tensor, torch.Tensor]:
    """The root as first written: a branch on the sign and a difference of roots."""
    positive = x >= 0
    inner = torch.where(positive, x, -x) / scale + offset
    magnitude = torch.sqrt(inner) - math.sqrt(offset)
    return torch.where(positive, magnitude, -magnitude), -(math.log(2 * scale) + 0.5 * torch.log(inner)).sum(-1)


def activations(rows: int, generator: torch.Generator) -> torch.Tensor:
    """Pooled-ReLU-like rows: zero or log-normal."""
    return (torch.rand(rows, DIM, generator=generator) < 0.6) * torch.exp(torch.randn(rows, DIM, generator=generator))


def chain(rows: torch.Tensor, root: bool) -> TransformChain:
    """The input transform ``train`` fits to these rows (one unit, 64 principal directions)."""
    return prepare(ArrayStore(rows, units="shared"), 10, len(rows) - 10, TrainOptions(square_root=root, projection_dim=PROJECTED))[0]


def input_work(transform: TransformChain, noise: InputNoise, labeled: torch.Tensor, unlabeled: torch.Tensor, generator: torch.Generator) -> None:
    """One step's input side: noisy labeled rows, the unlabeled rows and their view, all scored."""
    noisy = [noise(labeled, generator), noise(unlabeled, generator), noise(unlabeled, generator)]
    transform(torch.cat(noisy))


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls of each (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    pool = activations(2000, generator)
    labeled, unlabeled = activations(LABELED, generator), activations(UNLABELED, generator)
    with torch.no_grad():
        chains = {name: chain(pool, name == "root") for name in ("root", "standardise")}
        root = chains["root"].layers[0]
        assert isinstance(root, SquareRoot)
        torch.testing.assert_close(root(pool)[0], plain_root(pool, float(root.scale))[0], rtol=1e-5, atol=1e-5)
        noises = {name: InputNoise(transform, 0.1) for name, transform in chains.items()}
        rows = torch.cat([labeled, unlabeled, unlabeled])
        results: dict[str, list[float]] = {"root": [], "plain root": [], "input root": [], "input standardise": []}
        for _ in range(3):  # interleaved rounds share the machine's load
            results["root"].append(timed(lambda: root(rows), args.repeats))
            results["plain root"].append(timed(lambda: plain_root(rows, float(root.scale)), args.repeats))
            for name in chains:
                results[f"input {name}"].append(timed(lambda: input_work(chains[name], noises[name], labeled, unlabeled, generator), args.repeats))
    best = {name: min(values) for name, values in results.items()}
    report = {
        "rows": len(rows), "dim": DIM, "threads": args.threads,
        "ms": {name: round(seconds * 1e3, 3) for name, seconds in best.items()},
        "root_over_plain_root": round(best["root"] / best["plain root"], 3),
        "input_root_over_standardise": round(best["input root"] / best["input standardise"], 3),
    }  # fmt: skip
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in report["ms"].items():
            print(f"{name:20s} {value:8.3f} ms")
        print(f"root / plain root: {report['root_over_plain_root']}; input work, root / standardise: {report['input_root_over_standardise']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
