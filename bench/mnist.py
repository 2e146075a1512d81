"""MNIST on raw pixels with the image flow: test accuracy against training time.

    python bench/mnist.py --minutes 30 --json                          # FlowGMM, 1,000 labels, default image options
    python bench/mnist.py --minutes 30 --consistency-weight 1 --json   # FlowGMM-cons
    python bench/mnist.py --minutes 30 --labeled-only --json           # the same flow on the labeled images alone
    python bench/mnist.py --minutes 10 --split validation --set hidden=32 --json   # for choosing defaults
    python bench/mnist.py --baselines --json                           # flowgmm benchmark's methods on the same split
    python bench/mnist.py --minutes 5 --device cuda --json             # on a GPU

Labels: ``--labels`` images (an equal number per class) drawn with ``--seed`` from the 60,000
training images; every other training image is unlabeled. ``--split test`` scores the 10,000 test
images; ``--split validation`` never reads them: it holds out 10,000 training images (seed 1000)
and draws labels and unlabeled images from the other 50,000.

The run's schedule (cosine learning rate) is sized to end at ``--minutes``: a few timed steps
measure the step time first. Every ``--eval-minutes`` and at the end the model is scored; each
score is one JSON line with ``minutes`` (training time, scoring excluded), ``step``,
``accuracy`` and ``bits_per_dim`` (of the scored images, at their bins' centres).

``--baselines`` runs ``flowgmm benchmark``'s methods instead, on the same labeled draw and the
same unlabeled and scored images, pixels as vectors (FlowGMM included, with the vector flow);
label spreading with the RBF graph is left out: its dense 59k × 59k affinity does not fit in memory.
One JSON line per method with ``method``, ``accuracy``, ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from step_clock import wait  # noqa: E402 - bench/ is the script's folder

MNIST = ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz"
VALIDATION_SEED, VALIDATION_ROWS = 1000, 10_000


class _Clock:
    """Training time without the time spent scoring, and the stop when the budget is spent."""

    def __init__(self) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    def minutes(self) -> float:
        return (time.perf_counter() - self.start - self.paused) / 60


class _OutOfTime(Exception):
    pass


def _load(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not MNIST.is_file():
        sys.exit(f"bench/mnist.py needs {MNIST} (the team's shared data); it is not on this machine.")
    with np.load(MNIST) as data:
        x_train, x_test = data["x_train"], data["x_test"]
        y_train, y_test = data["y_train"].astype(np.int64), data["y_test"].astype(np.int64)  # uint8 has no -1 for "unlabeled"
    if split == "validation":
        order = np.random.default_rng(VALIDATION_SEED).permutation(len(x_train))
        held, kept = order[:VALIDATION_ROWS], order[VALIDATION_ROWS:]
        x_train, y_train, x_test, y_test = x_train[kept], y_train[kept], x_train[held], y_train[held]
    return x_train, y_train, x_test, y_test


def _draw_labels(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == k), per_class, replace=False) for k in np.unique(y)])


@torch.no_grad()
def _score(model, x: torch.Tensor, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and bits per dimension (float32, blocks of 500, on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    joints = torch.cat([model(x[i : i + 500].to(device)).cpu() for i in range(0, len(x), 500)])
    model.train()
    accuracy = float((joints.argmax(1).numpy() == y).mean())
    bits = float(-torch.logsumexp(joints, 1).mean() / (x.shape[1] * math.log(2)))
    return accuracy, bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="Training time (scoring excluded).")
    parser.add_argument("--eval-minutes", type=float, default=None, help="Minutes between scores (default: a sixth of --minutes).")
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--consistency-weight", type=float, default=0.0)
    parser.add_argument("--labeled-only", action="store_true", help="No unlabeled images (the supervised flow).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the flow trains and scores.")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="Another training option.")
    parser.add_argument("--baselines", action="store_true", help="The benchmark's methods on the same split instead.")
    parser.add_argument("--save", type=Path, default=None, help="Write the final model here (for visualize, predict).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from flowgmm_cli.factory import build_model, build_objective, build_schedule, build_source, prepare
    from flowgmm_cli.options import TrainOptions
    from flowgmm_cli.stores import ArrayStore, SubsetStore
    from flowgmm_cli.training import train

    x_train, y_train, x_test, y_test = _load(args.split)
    labeled = _draw_labels(y_train, args.labels // 10, args.seed if args.split == "test" else VALIDATION_SEED + args.seed)
    if args.baselines:
        _baselines(x_train, y_train, x_test, y_test, labeled, args)
        return
    rows = torch.from_numpy(x_train.reshape(len(x_train), -1).astype(np.float32))
    store = ArrayStore(rows, image_shape=(1, 28, 28))
    unlabeled = np.ones(len(rows), dtype=bool)
    unlabeled[labeled] = False
    if args.labeled_only:
        unlabeled[:] = False
    extra = {key: json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value for key, value in (s.split("=", 1) for s in args.set)}
    options = TrainOptions(consistency_weight=args.consistency_weight, random_state=args.seed, device=args.device, **extra)
    transform, options = prepare(store, len(labeled), int(unlabeled.sum()), options)
    torch.manual_seed(options.random_state)
    device = torch.device(args.device)
    model = build_model(transform, 10, options, store.image_shape).to(device)
    x_labeled, y_labeled = rows[labeled].to(device), torch.from_numpy(y_train[labeled].astype(np.int64)).to(device)
    x_test_rows = torch.from_numpy(x_test.reshape(len(x_test), -1).astype(np.float32))

    # Size the schedule to the budget: time a few steps of a throwaway copy.
    probe_source = build_source(SubsetStore(store, unlabeled), x_labeled, y_labeled, model, options)
    probe = build_model(transform, 10, options, store.image_shape).to(device)
    objective, optimizer = build_objective(probe, options), torch.optim.AdamW(probe.parameters(), lr=options.lr)
    started = None
    for index, batch in zip(range(6), probe_source.epoch()):
        if index == 1:
            wait(device)
            started = time.perf_counter()
        loss, _ = objective(probe, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    wait(device)
    step_seconds = (time.perf_counter() - started) / 5
    source = build_source(SubsetStore(store, unlabeled), x_labeled, y_labeled, model, options)
    steps = max(1, int(args.minutes * 60 / step_seconds))
    options = replace(options, epochs=math.ceil(steps / source.steps_per_epoch))
    eval_every = args.eval_minutes or args.minutes / 6
    clock, next_eval = _Clock(), eval_every
    lines: list[dict] = []

    def report(step: int) -> None:
        scoring = time.perf_counter()
        accuracy, bits = _score(model, x_test_rows, y_test)
        clock.paused += time.perf_counter() - scoring
        line = {
            "minutes": round(clock.minutes(), 2), "step": step, "accuracy": round(accuracy, 4), "bits_per_dim": round(bits, 4),
            "split": args.split, "labels": len(labeled), "consistency_weight": args.consistency_weight,
            "labeled_only": args.labeled_only, "seed": args.seed, "set": args.set, "device": args.device,
        }  # fmt: skip
        lines.append(line)
        print(json.dumps(line) if args.json else f"{line['minutes']:7.2f} min  step {step:6d}  accuracy {accuracy:.4f}  {bits:.3f} bits/dim", flush=True)

    class Callback:
        def on_step(self, step: int, total_steps: int) -> None:
            nonlocal next_eval
            if clock.minutes() >= next_eval or step == total_steps:
                report(step)
                next_eval += eval_every
            if clock.minutes() >= args.minutes * 1.05 and step < total_steps:
                raise _OutOfTime

        def on_epoch_end(self, report) -> None:
            pass

    if not args.json:
        print(f"{len(labeled)} labels, {int(unlabeled.sum())} unlabeled, {options.epochs} epochs x {source.steps_per_epoch} steps "
              f"({step_seconds:.3f} s per step), hidden {options.hidden}, scales {options.scales}", flush=True)  # fmt: skip
    try:
        history = train(model, source, build_objective(model, options), replace(build_schedule(options), max_steps=steps), callback=Callback())
    except _OutOfTime:
        history = []
    if args.save is not None:
        _save(model.eval().cpu(), options, history, len(labeled), int(unlabeled.sum()), args.save)


def _baselines(x_train, y_train, x_test, y_test, labeled: np.ndarray, args) -> None:
    """Each of the benchmark's methods (but the RBF graph) on pixel vectors of this split."""
    from flowgmm_cli.benchmark import default_methods

    rows = x_train.reshape(len(x_train), -1).astype(np.float32)
    unlabeled = np.ones(len(rows), dtype=bool)
    unlabeled[labeled] = False
    test_rows = x_test.reshape(len(x_test), -1).astype(np.float32)
    for name, method in default_methods("cpu", units="shared").items():
        if name == "label-spreading-rbf":
            continue
        start = time.perf_counter()
        predicted = method.fit_predict(rows[labeled], y_train[labeled], rows[unlabeled], test_rows, args.seed)
        line = {"method": name, "accuracy": round(float(np.mean(predicted == y_test)), 4), "seconds": round(time.perf_counter() - start, 1),
                "split": args.split, "labels": len(labeled), "seed": args.seed}  # fmt: skip
        print(json.dumps(line) if args.json else f"{name:<22}{line['accuracy']:.4f}  {line['seconds']:.0f} s", flush=True)


def _save(model, options, history: list, n_labeled: int, n_unlabeled: int, path: Path) -> None:
    """The trained model as a model file, as ``flowgmm train`` writes it."""
    from flowgmm_cli.estimator import FlowGMMClassifier

    estimator = FlowGMMClassifier(**{k: getattr(options, k) for k in ("consistency_weight", "random_state")})
    estimator.model_, estimator.classes_, estimator.n_features_in_ = model, np.arange(10), model.in_dim
    estimator.members_ = [model]
    estimator.options_, estimator.history_, estimator.n_labeled_, estimator.n_unlabeled_ = options, history, n_labeled, n_unlabeled
    estimator.save(path, extractor="pixels")


if __name__ == "__main__":
    main()
