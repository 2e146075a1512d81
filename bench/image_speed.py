"""Image flow throughput against the bare convolutions of its s/t networks, side by side in one run.

    python bench/image_speed.py                 # MNIST shape (1x28x28), default image options, one thread
    python bench/image_speed.py --json          # one JSON line
    python bench/image_speed.py --hidden 32 --threads 2 --shape 3,32,32
    python bench/image_speed.py --device cuda --json  # on a GPU (the feature visualisation stays on the CPU)

**real**: the project's training step: :func:`flowgmm_cli.training.train` on random pixel
images with the default image options (32 labeled + 32 unlabeled images a step, augmentation,
the pixel logit, the flow, the mixture, the loss terms, AdamW), timed by its step callback; the
first steps (allocation, warm-up) are dropped. **bound**: only the s/t networks of the same
couplings, each fed a random tensor of the shape it sees in the flow, forward and backward over
the same number of images, summed; no coupling arithmetic, no squeeze, no optimiser. The ratio
real/bound is the share of the convolutions' speed the whole step keeps (target ≥ 0.8).
**inference**: images/s of ``predict``'s pass (float64, as the estimator runs it) and of a float32 pass.
**consistency_step_cost**: seconds of a training step with FlowGMM-cons (``--consistency-weight 1``)
over those of a step without, the same run timing both.
**feature_visualisation_seconds**: ``visualize --kind features`` without the PNG (one channel, 9
values of α, 16 images: section 6.3), median of 5 calls on the same model; the target is under 2 s
on CPU. Its cost depends on the architecture, not on the weights, so the briefly trained model
times it as a fully trained one would.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from step_clock import StepClock, wait  # noqa: E402 - bench/ is the script's folder


def _conv_inputs(flow, batch: int, device: torch.device) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """Each coupling's network and a random input of the shape it sees (captured by a forward hook)."""
    from flowgmm_cli.image_layers import ConvResNet

    shapes: list[tuple[torch.nn.Module, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda module, args, out: shapes.append((module, args[0].shape))) for m in flow.modules() if isinstance(m, ConvResNet)]
    with torch.no_grad():
        flow(torch.randn(2, flow.dim, device=device))
    for hook in hooks:
        hook.remove()
    return [(net, torch.randn(batch, *shape[1:], device=device)) for net, shape in shapes]


def _bound(flow, batch: int, repeats: int, device: torch.device) -> float:
    """Seconds per step of the networks alone, forward and backward."""
    pairs = _conv_inputs(flow, batch, device)
    times = []
    for _ in range(repeats + 2):
        wait(device)
        start = time.perf_counter()
        total = sum(net(x).sum() for net, x in pairs)
        total.backward()
        wait(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times[2:]))


def _real(options, shape, steps: int, device: torch.device) -> tuple[float, object]:
    """Seconds per training step of ``train`` (median of the steps after the first two)."""
    from flowgmm_cli.factory import build_model, build_objective, build_schedule, build_source, prepare
    from flowgmm_cli.stores import ArrayStore, SubsetStore
    from flowgmm_cli.training import train

    generator = torch.Generator().manual_seed(0)
    n = 64 * (steps + 2)
    rows = torch.randint(0, 256, (n, int(np.prod(shape))), generator=generator).float()
    store = ArrayStore(rows, image_shape=shape)
    labeled = np.arange(64)
    unlabeled = np.ones(n, dtype=bool)
    unlabeled[labeled] = False
    transform, resolved = prepare(store, len(labeled), n - len(labeled), options)
    resolved = replace(resolved, epochs=1)
    model = build_model(transform, 10, resolved, shape).to(device)
    source = build_source(SubsetStore(store, unlabeled), rows[labeled].to(device), (torch.arange(64) % 10).to(device), model, resolved)
    clock = StepClock(device)
    train(model, source, build_objective(model, resolved), build_schedule(resolved), callback=clock)
    return float(np.median(np.diff(clock.stamps)[2:])), model


def _inference(model, dim: int, dtype: torch.dtype, device: torch.device, images: int = 256) -> float:
    model = copy.deepcopy(model).to(dtype).eval()
    x = torch.randint(0, 256, (images, dim)).to(device, dtype)
    with torch.inference_mode():
        model(x[:8])
        wait(device)
        start = time.perf_counter()
        model(x)
        wait(device)
    return images / (time.perf_counter() - start)


def _feature_visualisation(model, shape: tuple[int, ...], repeats: int = 5) -> float:
    """Median seconds of the ``features`` plot's computation on 16 random images."""
    from flowgmm_cli.estimator import FlowGMMClassifier
    from flowgmm_cli.scene import Scene
    from flowgmm_cli.visualize_images import FEATURE_IMAGES, features

    estimator = FlowGMMClassifier()
    estimator.model_, estimator.classes_, estimator.n_features_in_ = copy.deepcopy(model).cpu().eval(), np.arange(10), model.in_dim
    estimator.members_ = [estimator.model_]
    images = np.random.default_rng(0).integers(0, 256, (FEATURE_IMAGES, int(np.prod(shape)))).astype(np.float32)
    scene = Scene(estimator, images, np.arange(FEATURE_IMAGES), np.full(FEATURE_IMAGES, -1))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        features(scene)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1,28,28", help="C,H,W of the images.")
    parser.add_argument("--hidden", type=int, default=None, help="Channels of the s/t networks (default: the image default).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=12, help="Timed training steps.")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the training steps and the inference run.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    from flowgmm_cli.options import TrainOptions

    shape = tuple(int(v) for v in args.shape.split(","))
    options = TrainOptions(hidden=args.hidden, device=args.device, calibration_folds=0)
    step_seconds, model = _real(options, shape, args.steps, device)
    bound_seconds = _bound(model.flow, 64, args.steps, device)
    consistency_seconds, _ = _real(replace(options, consistency_weight=1.0), shape, args.steps, device)
    result = {
        "shape": list(shape), "hidden": model.flow.spec()["hidden"], "threads": args.threads, "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images_per_s": round(64 / step_seconds, 1), "bound_images_per_s": round(64 / bound_seconds, 1),
        "ratio": round(bound_seconds / step_seconds, 3),
        "predict_images_per_s_float64": round(_inference(model, int(np.prod(shape)), torch.float64, device), 1),
        "inference_images_per_s_float32": round(_inference(model, int(np.prod(shape)), torch.float32, device), 1),
        "consistency_step_cost": round(consistency_seconds / step_seconds, 3),
        "feature_visualisation_seconds": round(_feature_visualisation(model, shape), 3),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<34}{value}")


if __name__ == "__main__":
    main()
