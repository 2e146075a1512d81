"""A training callback that records when each step ends, for the throughput scripts."""

from __future__ import annotations

import time

import torch


def wait(device: torch.device | str) -> None:
    """Block until ``device`` has finished its queued work, so that a clock read after this
    times finished work (CUDA kernels run asynchronously); nothing to wait for on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """``stamps``: the ``time.perf_counter()`` of each step's end, in order (after the
    ``device``'s queued work has finished)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self.stamps: list[float] = []

    def on_step(self, step: int, total_steps: int) -> None:
        wait(self.device)
        self.stamps.append(time.perf_counter())

    def on_epoch_end(self, report) -> None:
        pass
