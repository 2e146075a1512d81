#!/usr/bin/env python
"""Training throughput of FlowGMM against the bare matrix algebra of its s/t networks.

For each shape this measures, side by side and interleaved step by step:

* **real**: the project's own training step, by running ``flowgmm_cli.training.train``
  on synthetic data sized so that one epoch is ``repeats + 1`` steps. A callback stamps the
  clock at every ``on_step``; the first step (optimizer-state creation, allocator warm-up) is
  discarded and the rest give one time per step.
* **bound**: the same s/t networks as plain tensors -- per coupling layer the weights of
  ``split -> hidden (-> hidden)* -> 2 * (dim - split)`` with ``requires_grad`` -- run forward
  with ``torch.addmm``/``torch.relu`` on a ``(batch rows, split)`` input, summed, and run
  backward. No coupling algebra, no permutations, no prior, no loss, no clipping, no optimizer,
  no gradient for the input. The first layer's weight gradient uses the same fast layout as the
  model's ``NarrowInputLinear``, so the bound stays a bound.

The bound step runs inside the same callback, right after each real step, so the two
alternate (bound, real, bound, real, ...) and share whatever load the machine has.
``samples/s`` is batch rows (unlabeled + labeled) over the median seconds per step and
``ratio = samples_per_s / bound_samples_per_s``.

It also times prediction: ``model.joint_log_prob`` under ``torch.inference_mode`` on a large
batch for the D=384 model, in float32 and in float64 (the estimator's inference precision, which
makes results independent of the batch); the bare float32 forward matmuls are timed alongside.

Usage::

    .venv/bin/python bench/train_speed.py              # table
    .venv/bin/python bench/train_speed.py --json       # one JSON line per shape + one for predict
    .venv/bin/python bench/train_speed.py --repeats 5 --threads 2
    .venv/bin/python bench/train_speed.py --device cuda --repeats 10   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Make ``import flowgmm_cli`` work when the script is run as ``python bench/train_speed.py``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import copy  # noqa: E402

from step_clock import wait  # noqa: E402 - bench/ is the script's folder

from flowgmm_cli.data import InMemorySource  # noqa: E402
from flowgmm_cli.layers import RealNVP, _NarrowInputLinearFunction  # noqa: E402
from flowgmm_cli.model import FlowGMM  # noqa: E402
from flowgmm_cli.objective import LabeledNLL, Objective, UnlabeledNLL  # noqa: E402
from flowgmm_cli.prior import GaussianMixturePrior  # noqa: E402
from flowgmm_cli.training import EpochReport, Schedule, train  # noqa: E402
from flowgmm_cli.transforms import Standardize, TransformChain  # noqa: E402

narrow_linear = _NarrowInputLinearFunction.apply


@dataclass(frozen=True)
class Shape:
    name: str
    dim: int
    coupling_layers: int
    hidden: int
    hidden_layers: int
    unlabeled_batch: int
    labeled_batch: int
    n_classes: int
    target: float

    @property
    def rows(self) -> int:
        return self.unlabeled_batch + self.labeled_batch

    @property
    def split(self) -> int:
        # AffineCoupling's default: the first dim // 2 features condition the rest.
        return self.dim // 2

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every Linear of one coupling's s/t network."""
        widths = [self.split] + [self.hidden] * self.hidden_layers + [2 * (self.dim - self.split)]
        return list(zip(widths[:-1], widths[1:]))

    def bound_flops(self) -> float:
        """FLOPs of one bound step: forward 2·r·i·o per Linear, backward weight grads 2·r·i·o
        for every Linear and input grads 2·r·i·o for all but the first Linear."""
        per_layer = 0.0
        for index, (i, o) in enumerate(self.linear_shapes()):
            per_layer += 2 * self.rows * i * o * (2 if index == 0 else 3)
        return per_layer * self.coupling_layers

    def predict_flops(self, rows: int) -> float:
        return 2.0 * rows * self.coupling_layers * sum(i * o for i, o in self.linear_shapes())


SHAPES = [
    Shape("D=384 L=7 k=1024", dim=384, coupling_layers=7, hidden=1024, hidden_layers=2,
          unlabeled_batch=5000, labeled_batch=200, n_classes=4, target=0.85),
    Shape("D=10 L=10 k=256", dim=10, coupling_layers=10, hidden=256, hidden_layers=2,
          unlabeled_batch=5000, labeled_batch=20, n_classes=2, target=0.75),
]


# ----------------------------------------------------------------------------- bound
class BoundNetworks:
    """The s/t networks of a shape as raw tensors: ``[(weight (out, in), bias (out,)), ...]`` per layer."""

    def __init__(self, shape: Shape, seed: int = 0, device: torch.device = torch.device("cpu")) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for _ in range(shape.coupling_layers):
            linears = []
            for fan_in, fan_out in shape.linear_shapes():
                bound = 1.0 / math.sqrt(fan_in)
                weight = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound
                bias = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
                linears.append((weight.to(device).requires_grad_(), bias.to(device).requires_grad_()))
            self.layers.append(linears)
        # One input per coupling layer, as each coupling sees a different x_a; no grad w.r.t. it.
        self.inputs = [torch.randn(shape.rows, shape.split, generator=generator).to(device) for _ in self.layers]

    def parameters(self) -> list[torch.Tensor]:
        return [t for linears in self.layers for pair in linears for t in pair]

    def train_step(self) -> None:
        total = None
        for linears, x in zip(self.layers, self.inputs):
            h = x
            for index, (weight, bias) in enumerate(linears):
                # the first layer's weight gradient in the fastest layout, as the model computes it
                h = narrow_linear(h, weight, bias) if index == 0 else torch.addmm(bias, h, weight.t())
                if index < len(linears) - 1:
                    h = torch.relu(h)
            part = h.sum()
            total = part if total is None else total + part
        total.backward()
        for p in self.parameters():
            p.grad = None  # like optimizer.zero_grad(set_to_none=True): no accumulation cost

    @torch.inference_mode()
    def forward_only(self, x: torch.Tensor) -> None:
        for linears in self.layers:
            h = x
            for index, (weight, bias) in enumerate(linears):
                h = torch.addmm(bias, h, weight.t())
                if index < len(linears) - 1:
                    h = torch.relu(h)


# ------------------------------------------------------------------------- real + bound
class InterleavingCallback:
    """``train`` callback: after every real step, time one bound step.

    Real step ``k`` takes from the end of the bound step after step ``k-1`` to the moment
    ``on_step(k)`` is called (everything ``train`` does for that step, bookkeeping
    included). Step 1 and the bound step right after it are warm-up and are dropped.
    """

    def __init__(self, bound: BoundNetworks, device: torch.device) -> None:
        self.bound, self.device = bound, device
        self.start = time.perf_counter()
        self.last_end: float | None = None
        self.first_step = float("nan")  # setup + step 1
        self.real_times: list[float] = []
        self.bound_times: list[float] = []
        self.reports: list[EpochReport] = []

    def on_step(self, step: int, total_steps: int) -> None:
        wait(self.device)
        now = time.perf_counter()
        if self.last_end is not None:
            self.real_times.append(now - self.last_end)
        else:
            self.first_step = now - self.start
        t0 = time.perf_counter()
        self.bound.train_step()
        wait(self.device)
        t1 = time.perf_counter()
        if step > 1:
            self.bound_times.append(t1 - t0)
        self.last_end = time.perf_counter()

    def on_epoch_end(self, report: EpochReport) -> None:
        self.reports.append(report)


def synthetic_data(shape: Shape, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised-looking features: class-shifted Gaussians for the labeled rows, a mixture for the rest."""
    generator = torch.Generator().manual_seed(seed)
    n_unlabeled = shape.unlabeled_batch * steps
    n_labeled = shape.labeled_batch * 2
    centers = torch.randn(shape.n_classes, shape.dim, generator=generator) * 0.5
    y_labeled = torch.arange(n_labeled) % shape.n_classes
    x_labeled = centers[y_labeled] + torch.randn(n_labeled, shape.dim, generator=generator)
    y_unlabeled = torch.randint(shape.n_classes, (n_unlabeled,), generator=generator)
    x_unlabeled = centers[y_unlabeled] + torch.randn(n_unlabeled, shape.dim, generator=generator)
    return x_labeled, y_labeled, x_unlabeled


def measure_training(shape: Shape, repeats: int, device: torch.device) -> tuple[dict, FlowGMM]:
    steps = repeats + 1  # one warm-up step + ``repeats`` timed ones, all in one epoch
    torch.manual_seed(0)
    x_labeled, y_labeled, x_unlabeled = (t.to(device) for t in synthetic_data(shape, steps))
    transform = TransformChain([Standardize.fit(torch.cat([x_labeled, x_unlabeled]))])
    flow = RealNVP(shape.dim, shape.coupling_layers, shape.hidden, shape.hidden_layers)
    model = FlowGMM(transform, flow, GaussianMixturePrior(shape.n_classes, shape.dim)).to(device)
    source = InMemorySource(x_labeled, y_labeled, x_unlabeled, shape.unlabeled_batch, shape.labeled_batch)
    objective = Objective([(LabeledNLL(), 1.0), (UnlabeledNLL(), 1.0)], dim=shape.dim)
    bound = BoundNetworks(shape, device=device)
    callback = InterleavingCallback(bound, device)
    train(model, source, objective, Schedule(epochs=1), callback=callback)
    assert len(callback.real_times) == repeats == len(callback.bound_times), (callback.real_times, callback.bound_times)

    step_s = statistics.median(callback.real_times)
    bound_step_s = statistics.median(callback.bound_times)
    samples_per_s = shape.rows / step_s
    bound_samples_per_s = shape.rows / bound_step_s
    flops = shape.bound_flops()
    result = {
        "shape": shape.name,
        "samples_per_s": round(samples_per_s, 1),
        "bound_samples_per_s": round(bound_samples_per_s, 1),
        "ratio": round(samples_per_s / bound_samples_per_s, 4),
        # Median over adjacent (real, bound) pairs of bound_time / real_time: a cross-check that is
        # less sensitive to load that changes between pairs.
        "pair_ratio_median": round(statistics.median(b / r for r, b in zip(callback.real_times, callback.bound_times)), 4),
        "target": shape.target,
        "meets_target": samples_per_s / bound_samples_per_s >= shape.target,
        "rows_per_step": shape.rows,
        "step_s": round(step_s, 4),
        "bound_step_s": round(bound_step_s, 4),
        "step_times_s": [round(t, 4) for t in callback.real_times],
        "bound_step_times_s": [round(t, 4) for t in callback.bound_times],
        "warmup_step_s": round(callback.first_step, 4),
        "bound_gflop_per_step": round(flops / 1e9, 2),
        "bound_gflops": round(flops / bound_step_s / 1e9, 1),
        "train_loss": round(callback.reports[-1].loss, 4) if callback.reports else None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    return result, model


# ------------------------------------------------------------------------------ predict
def measure_predict(shape: Shape, model: FlowGMM, rows: int, repeats: int, device: torch.device) -> dict:
    model.eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(rows, shape.dim, generator=generator).to(device)
    bound = BoundNetworks(shape, device=device)
    bound_x = torch.randn(rows, shape.split, generator=generator).to(device)
    model64, x64 = copy.deepcopy(model).double(), x.double()
    real_times, bound_times, float64_times = [], [], []
    for index in range(repeats + 1):  # first round is warm-up
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.joint_log_prob(x)
        wait(device)
        t1 = time.perf_counter()
        bound.forward_only(bound_x)
        wait(device)
        t2 = time.perf_counter()
        with torch.inference_mode():
            model64.joint_log_prob(x64)
        wait(device)
        t3 = time.perf_counter()
        assert out.shape == (rows, shape.n_classes)
        if index:
            real_times.append(t1 - t0)
            bound_times.append(t2 - t1)
            float64_times.append(t3 - t2)
    predict_s, bound_s = statistics.median(real_times), statistics.median(bound_times)
    float64_s = statistics.median(float64_times)
    return {
        "predict": shape.name,
        "predict_rows_per_s": round(rows / predict_s, 1),
        "predict_bound_rows_per_s": round(rows / bound_s, 1),
        "predict_ratio": round(bound_s / predict_s, 4),
        "predict_float64_rows_per_s": round(rows / float64_s, 1),
        "predict_float64_ratio": round(bound_s / float64_s, 4),
        "predict_rows": rows,
        "predict_s": round(predict_s, 4),
        "predict_times_s": [round(t, 4) for t in real_times],
        "predict_gflops": round(shape.predict_flops(rows) / predict_s / 1e9, 1),
    }


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per shape after one warm-up step (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON line per shape and one for predict")
    parser.add_argument("--predict-rows", type=int, default=8192, help="rows per predict call (default 8192)")
    parser.add_argument("--shape", action="append", choices=[s.name for s in SHAPES],
                        help="only this shape (repeatable; default all)")
    parser.add_argument("--no-predict", action="store_true", help="skip the predict measurement")
    parser.add_argument("--device", default="cpu", help="where the model, the data and the bound run: cpu (default) or cuda[:N]")
    parser.add_argument("--hidden-layers", type=int, default=2,
                        help="hidden layers per s/t network (default 2, as the paper's tabular code that the "
                             "targets were measured against; flowgmm train defaults to 1)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = [dataclasses.replace(s, hidden_layers=args.hidden_layers) for s in SHAPES if not args.shape or s.name in args.shape]
    results, predict = [], None
    for shape in shapes:
        result, model = measure_training(shape, args.repeats, device)
        result["threads"], result["device"] = args.threads, str(device)
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
        if shape.name == SHAPES[0].name and not args.no_predict:
            predict = measure_predict(shape, model, args.predict_rows, args.repeats, device)
            predict["threads"], predict["device"] = args.threads, str(device)
        del model
    if predict is not None and args.json:
        print(json.dumps(predict), flush=True)

    if not args.json:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPU(s), "
              f"{where}, repeats={args.repeats} (median per step)")
        header = f"{'shape':<18} {'rows':>5} {'step s':>8} {'bound s':>8} {'samples/s':>10} {'bound/s':>10} " \
                 f"{'ratio':>6} {'target':>6}  {'bound GFLOP/s':>13}"
        print(f"1-min load average at the end: {os.getloadavg()[0]:.2f} (other processes share the CPUs; "
              "the interleaving keeps the ratio fair, absolute samples/s move with the load)")
        print(header)
        print("-" * len(header))
        for r in results:
            flag = "ok" if r["meets_target"] else "LOW"
            print(f"{r['shape']:<18} {r['rows_per_step']:>5} {r['step_s']:>8.3f} {r['bound_step_s']:>8.3f} "
                  f"{r['samples_per_s']:>10.1f} {r['bound_samples_per_s']:>10.1f} {r['ratio']:>6.3f} "
                  f">={r['target']:<4} {flag:<3} {r['bound_gflops']:>9.1f}")
        for r in results:
            print(f"  {r['shape']}: real steps {r['step_times_s']} s, bound steps {r['bound_step_times_s']} s, "
                  f"median pair ratio {r['pair_ratio_median']:.3f}, warm-up (setup + step 1) {r['warmup_step_s']:.3f} s")
        if predict is not None:
            print(f"predict ({predict['predict']}, {predict['predict_rows']} rows, inference_mode): "
                  f"{predict['predict_rows_per_s']:.1f} rows/s "
                  f"(bare forward matmuls {predict['predict_bound_rows_per_s']:.1f} rows/s, "
                  f"ratio {predict['predict_ratio']:.3f}, {predict['predict_gflops']:.1f} GFLOP/s); "
                  f"float64 as the estimator predicts: {predict['predict_float64_rows_per_s']:.1f} rows/s "
                  f"(ratio {predict['predict_float64_ratio']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
