#!/usr/bin/env python
"""A default training step on the CPU with the fused coupling and the flat optimiser against the
plain implementations they replace, alternated in blocks of steps within one fit.

* **coupling**: each :class:`~flowgmm_cli.layers.AffineCoupling` as one autograd node
  (``_CouplingFunction``) against autograd through its modules (``forward_by_modules``).
* **optimizer**: :class:`~flowgmm_cli.optimizer.FlatAdamW` against torch's ``foreach`` AdamW per
  parameter after ``clip_grad_norm_(foreach=True)``, the optimiser state moved across at each switch.
* **both**: the two together against the two plain ones.

Each part is one default fit (one member, no calibration fits, one thread) whose training
callback switches between the plain and the new implementation every ``--block`` steps; the
first step of each block is dropped, and ``ratio`` is the plain side's median step time over the
new side's, so both sides share the machine's load. ``--check`` first trains the same fit for
``--check-steps`` steps each way and requires the two models to be equal bit for bit.

Cases: ``digits`` (``demo.digits_split(0)``: 64 features, 1,297 rows, 8 couplings of 128),
``images`` (scikit-learn's 1,797 digit images as 8x8 pixels, 50 labeled: the image flow, whose
couplings are convolutional, so only the optimiser part applies) and
``dense`` (synthetic: 384 features, 5,600 rows in 4 classes, 200 labels: 10 couplings of 512 on
32 principal directions, the flow of AG News' MiniLM features). No data outside the installed packages.

    python bench/step_speed.py [--cases digits dense images] [--steps 600] [--block 25] [--check] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowgmm_cli import FlowGMMClassifier, training  # noqa: E402
from flowgmm_cli.defaults import default_batch_sizes, steps_per_epoch  # noqa: E402
from flowgmm_cli.demo import digits_split  # noqa: E402
from flowgmm_cli.image_defaults import IMAGE_BATCH  # noqa: E402
from flowgmm_cli.layers import AffineCoupling  # noqa: E402
from flowgmm_cli.optimizer import FlatAdamW, build_optimizer  # noqa: E402

PARTS = ("coupling", "optimizer", "both")
FUSED_FORWARD = AffineCoupling.forward


def case_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows and labels (``-1``: unlabeled) of a case."""
    if name == "digits":
        X, y, *_ = digits_split(0)
        return X, y
    if name == "images":
        digits = load_digits()
        y = digits.target.copy()
        y[50:] = -1
        return (digits.images * 255 / 16).astype(np.float32).reshape(-1, 1, 8, 8), y
    generator = np.random.default_rng(0)
    centres = generator.normal(0, 1, (4, 384))
    classes = generator.integers(0, 4, 5_600)
    X = (centres[classes] + generator.normal(0, 2, (5_600, 384))).astype(np.float32)
    y = np.full(5_600, -1)
    y[:200] = classes[:200]
    return X, y


class PlainAdamW(torch.optim.AdamW):
    """What training ran before :class:`FlatAdamW`: ``clip_grad_norm_`` and torch's foreach AdamW."""

    def __init__(self, parameters, lr, weight_decay, grad_clip):
        self.clipped, self.grad_clip = list(parameters), grad_clip
        super().__init__(self.clipped, lr=lr, weight_decay=weight_decay, foreach=True)

    def step(self, closure=None):
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.grad_clip, foreach=True)
        return super().step(closure)


class SwitchedAdamW:
    """Both optimisers over the same parameters; :meth:`use` picks one and hands it the state."""

    def __init__(self, parameters, device, lr, weight_decay, grad_clip):
        parameters = list(parameters)
        self.plain = PlainAdamW(parameters, lr, weight_decay, grad_clip)
        self.flat = FlatAdamW(parameters, lr, weight_decay, grad_clip)
        self.active: PlainAdamW | FlatAdamW = self.plain

    @property
    def param_groups(self):
        return self.active.param_groups

    def zero_grad(self) -> None:
        self.active.zero_grad()

    def step(self) -> None:
        self.active.step()

    def use(self, flat: bool) -> None:
        chosen = self.flat if flat else self.plain
        if chosen is not self.active:
            chosen.load_state_dict(self.active.state_dict())
            self.active = chosen


def use_coupling(fused: bool) -> None:
    AffineCoupling.forward = FUSED_FORWARD if fused else AffineCoupling.forward_by_modules  # type: ignore[method-assign]


class BlockClock:
    """Switches the part under test every ``block`` steps and records each step's seconds by side."""

    def __init__(self, part: str, block: int) -> None:
        self.part, self.block = part, block
        self.seconds: dict[bool, list[float]] = {False: [], True: []}
        self.optimizers: list[SwitchedAdamW] = []
        self.last: float | None = None

    def build_optimizer(self, *args):
        self.optimizers.append(SwitchedAdamW(*args))
        return self.optimizers[-1]

    def new_side(self, step: int) -> bool:
        """Whether step ``step`` (counted from 1) runs the new implementation."""
        return ((step - 1) // self.block) % 2 == 1

    def on_step(self, step: int, total_steps: int) -> None:
        now = time.perf_counter()
        if self.last is not None and (step - 1) % self.block:  # not the first step of a block
            self.seconds[self.new_side(step)].append(now - self.last)
        side = self.new_side(step + 1)
        if self.part in ("coupling", "both"):
            use_coupling(side)
        if self.part in ("optimizer", "both"):
            self.optimizers[-1].use(side)
        self.last = time.perf_counter()

    def on_epoch_end(self, report) -> None:
        pass


def fit(X: np.ndarray, y: np.ndarray, steps: int, callback=None) -> FlowGMMClassifier:
    """A default fit of one member without calibration fits, of at least ``steps`` steps."""
    n_labeled = int((y >= 0).sum())
    batches = (IMAGE_BATCH, min(n_labeled, IMAGE_BATCH)) if X.ndim == 4 else default_batch_sizes(n_labeled, len(y) - n_labeled)
    epoch_steps = steps_per_epoch(n_labeled, len(y) - n_labeled, *batches)
    model = FlowGMMClassifier(random_state=0, device="cpu", members=1, calibration_folds=0, epochs=math.ceil(steps / epoch_steps))
    return model.fit(X, y, callback=callback)


def same_model(X: np.ndarray, y: np.ndarray, steps: int) -> bool:
    """The fit with every plain implementation and with every new one, bit for bit."""
    states = []
    for new in (False, True):
        use_coupling(new)
        training.build_optimizer = build_optimizer if new else (lambda parameters, device, *args: PlainAdamW(parameters, *args))
        states.append(fit(X, y, steps).model_.state_dict())
    training.build_optimizer = build_optimizer
    return all(torch.equal(states[0][name], states[1][name]) for name in states[0])


def measure(X: np.ndarray, y: np.ndarray, part: str, steps: int, block: int) -> dict:
    clock = BlockClock(part, block)
    use_coupling(False)
    training.build_optimizer = clock.build_optimizer
    try:
        fit(X, y, steps, clock)
    finally:
        training.build_optimizer = build_optimizer
        use_coupling(True)
    plain, new = (statistics.median(clock.seconds[side]) for side in (False, True))
    return {"part": part, "plain_step_ms": round(plain * 1e3, 3), "new_step_ms": round(new * 1e3, 3), "ratio": round(plain / new, 3), "steps_timed": [len(clock.seconds[False]), len(clock.seconds[True])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["digits", "dense", "images"], choices=["digits", "dense", "images"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="first require the plain and new fits to be equal bit for bit")
    parser.add_argument("--check-steps", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for case in args.cases:
        X, y = case_data(case)
        identical = same_model(X, y, args.check_steps) if args.check else None
        for part in PARTS if case != "images" else ("optimizer",):
            line = {"case": case, **measure(X, y, part, args.steps, args.block), "identical": identical, "threads": args.threads}
            print(json.dumps(line) if args.json else f"{case:7} {part:9} plain {line['plain_step_ms']:7.2f} ms  new {line['new_step_ms']:7.2f} ms  ratio {line['ratio']:.3f}  identical {identical}")


if __name__ == "__main__":
    main()
