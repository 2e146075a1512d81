"""A training callback that records when each step ends, for the throughput scripts."""

from __future__ import annotations

import time


class StepClock:
    """``stamps``: the ``time.perf_counter()`` of each step's end, in order."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_step(self, step: int, total_steps: int) -> None:
        self.stamps.append(time.perf_counter())

    def on_epoch_end(self, report) -> None:
        pass
