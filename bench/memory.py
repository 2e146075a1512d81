"""Training beyond memory and across processes: peak memory against rows, samples/s against processes.

    python bench/memory.py memory --rows 200000 1000000 4000000      # streaming training, peak RSS, seconds per epoch
    python bench/memory.py throughput --rows 100000 --repeats 5      # 1 process x 1 thread, 1 x 2, 2 processes x 1

``memory`` writes a synthetic feature file per size (64 features, a mixture of 4 Gaussians, 10
labels per class; the largest is about 1 GiB of float32), trains one epoch on it with
``flowgmm train --stream`` in a fresh process, and reports that process's peak resident memory and
its seconds (start-up, the statistics pass over the file and the epoch). ``throughput`` trains on one such file in the three process layouts, one epoch each,
alternated for several rounds, and reports the median samples/s (labeled + unlabeled rows per second of training
steps, the first ten steps dropped as warm-up) and the median of the rounds' ratios to one process with one thread. One JSON line per layout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from step_clock import StepClock  # noqa: E402 - bench/ is the script's folder

DIM, CLASSES = 64, 4
TRAIN = ["--epochs", "1", "--hidden", "128", "--coupling-layers", "8", "--batch-size", "256", "--labeled-noise", "0", "-q"]


def make_file(path: Path, rows: int, seed: int = 0) -> None:
    """A feature file of ``rows`` rows written chunk by chunk (memory stays small whatever ``rows``)."""
    from flowgmm_cli.features import FeatureWriter

    if path.exists():
        return
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (CLASSES, DIM)).astype(np.float32)
    with FeatureWriter(path, DIM, {"extractor": "synthetic"}, with_labels=True) as writer:
        for start in range(0, rows, 1 << 16):
            n = min(1 << 16, rows - start)
            y = rng.integers(0, CLASSES, n)
            labels = np.where(np.arange(start, start + n) < 10 * CLASSES, np.array(list("abcd"))[np.arange(start, start + n) % CLASSES], "")
            y = np.where(labels != "", np.arange(start, start + n) % CLASSES, y)
            writer.append(np.arange(start, start + n).astype(str), centres[y] + rng.normal(size=(n, DIM)).astype(np.float32), labels)


def run_measured(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident memory (bytes) of a child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return time.perf_counter() - started, usage.ru_maxrss * 1024


def memory(folder: Path, sizes: list[int]) -> None:
    for rows in sizes:
        path = folder / f"synthetic-{rows}.h5"
        make_file(path, rows)
        command = [sys.executable, "-m", "flowgmm_cli", "train", str(path), "-o", str(folder / "m.flowgmm"), "--stream", "--threads", "1", *TRAIN]
        seconds, peak = run_measured(command)
        print(json.dumps({"case": "memory", "rows": rows, "file_gib": round(path.stat().st_size / 2**30, 3), "peak_rss_mib": round(peak / 2**20, 1),
                          "seconds": round(seconds, 1)}), flush=True)  # fmt: skip


def _steps_per_second(rank: int, world: int, threads: int, path: str, out: str, rendezvous: str) -> None:
    """Train one epoch on ``path`` in this process (rank of world); rank 0 writes samples/s to ``out``.

    ``rendezvous`` names a file that does not exist yet: gloo's file store waits forever on a file
    left over from a killed run.
    """
    import torch
    import torch.distributed as dist

    from flowgmm_cli.estimator import FlowGMMClassifier
    from flowgmm_cli.stores import FeatureStream, stream_labeled_rows

    torch.set_num_threads(threads)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    stream = FeatureStream(path)
    labeled, names, _ = stream_labeled_rows(stream, None)
    clock = StepClock()
    clf = FlowGMMClassifier(epochs=1, hidden=128, coupling_layers=8, batch_size=256, labeled_noise=0.0, device="cpu")
    clf.fit_rows(stream, labeled, names, callback=clock)
    if rank == 0:
        warm = 10
        rows_per_step = (256 + min(64, len(labeled))) * world
        Path(out).write_text(json.dumps(rows_per_step * (len(clock.stamps) - 1 - warm) / (clock.stamps[-1] - clock.stamps[warm])))
    if world > 1:
        dist.destroy_process_group()


def throughput(folder: Path, rows: int, repeats: int) -> None:
    """Samples/s of each layout, the layouts alternated in ``repeats`` rounds (the machine's speed
    drifts by 20-30% between minutes): the median per layout, and each round's ratio to 1 x 1."""
    import statistics
    import tempfile

    import torch.multiprocessing as mp

    path = folder / f"synthetic-{rows}.h5"
    make_file(path, rows)
    layouts = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
    rates: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(repeats):
        for name, (world, threads) in layouts.items():
            out = folder / f"rate-{world}-{threads}.json"
            with tempfile.TemporaryDirectory() as scratch:
                mp.spawn(_steps_per_second, args=(world, threads, str(path), str(out), f"{scratch}/rendezvous"), nprocs=world, join=True)
            rates[name].append(json.loads(out.read_text()))
    base = rates["1 process x 1 thread"]
    for name, values in rates.items():
        ratios = [value / reference for value, reference in zip(values, base)]
        print(json.dumps({"case": "throughput", "layout": name, "rows": rows, "samples_per_s": round(statistics.median(values), 1),
                          "ratio_to_1x1": round(statistics.median(ratios), 3), "rounds": [round(r, 3) for r in ratios]}), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "throughput"])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000, 4_000_000])
    parser.add_argument("--folder", type=Path, default=Path("bench-data"))
    parser.add_argument("--repeats", type=int, default=3, help="throughput: rounds of the three layouts, alternated")
    args = parser.parse_args()
    args.folder.mkdir(exist_ok=True)
    if args.what == "memory":
        memory(args.folder, args.rows)
    else:
        throughput(args.folder, args.rows[0], args.repeats)


if __name__ == "__main__":
    main()
