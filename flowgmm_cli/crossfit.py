"""A ``fit``'s independent fits, run here or spread over worker processes: each member's model, and
the calibration fits that each hide one fold of a member's labels and score its rows.

The fits do not depend on each other, so on the CPU with two or more threads they are dealt to
*lanes*, this process and up to one worker process per further thread
(:class:`~flowgmm_cli.workers.Worker`), each lane one thread: the longest fits first, each to the
lane with the least work so far. On two cores a default digits fit (three members of 1,500
steps, twelve calibration fits of 250) then takes 3,750 steps' time instead of the 4,500 the
members' models take one after another. A fit seeds itself, so each lane computes bit for bit
what one thread computes running every fit in turn (the tests check it). Under ``torchrun``, on a
GPU or with one thread, the fits run here in turn.

Example:
    >>> from flowgmm_cli import FlowGMMClassifier
    >>> from sklearn.datasets import make_blobs
    >>> X, y = make_blobs(300, centers=2, random_state=0)
    >>> y[20:] = -1
    >>> FlowGMMClassifier(epochs=6, hidden=8, coupling_layers=2).fit(X, y).temperature_ >= 1.0
    True
"""

from __future__ import annotations

import warnings

import torch

from .distributed import world
from .fits import Fit, FitResult, run_fit
from .stores import ArrayStore, FeatureStream, RowStore
from .training import ForwardingCallback, TrainingCallback, announce_phase
from .workers import Worker

__all__ = ["run_fits", "lane_count", "plan_lanes"]

#: Memory a worker needs beside its copy of the rows: the interpreter, torch, a model's steps. A digits
#: fit's worker peaked at 394 MiB of private memory, 280 MiB of it importing torch (2026-12-06).
WORKER_OVERHEAD_BYTES = 512 << 20


def lane_count(device: torch.device, rows: RowStore, n_fits: int) -> int:
    """How many lanes ``n_fits`` fits may use: one per CPU thread (``--threads``), at most one per
    fit, and no more workers than half the available memory holds, each with its own copy of rows
    held in memory (a feature file it opens itself); 1 under ``torchrun`` (several processes
    already), on a GPU, or for rows a worker cannot get."""
    if device.type != "cpu" or world().distributed or not isinstance(rows, (ArrayStore, FeatureStream)):
        return 1
    lanes = min(torch.get_num_threads(), n_fits)
    available = _available_memory()
    if available is not None:
        copy_bytes = rows.x.element_size() * rows.x.numel() if isinstance(rows, ArrayStore) else 0
        lanes = min(lanes, 1 + available // (2 * (copy_bytes + WORKER_OVERHEAD_BYTES)))
    return max(1, lanes)


def _available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux's ``MemAvailable``), or ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def plan_lanes(steps: list[int], lanes: int) -> list[list[int]]:
    """Fits (by index) dealt to ``lanes`` lanes: longest first, each to the lane with the fewest
    steps so far (the first such); each lane's fits in the order they were given.

    Example:
        >>> plan_lanes([1500, 250, 250, 250, 250], 2)   # a model and its calibration fits
        [[0], [1, 2, 3, 4]]
        >>> plan_lanes([1500, 1500, 1500, 500, 500, 500], 2)
        [[0, 2], [1, 3, 4, 5]]
    """
    loads, plan = [0] * lanes, [[] for _ in range(lanes)]
    for index in sorted(range(len(steps)), key=lambda i: -steps[i]):
        lane = loads.index(min(loads))
        loads[lane] += steps[index]
        plan[lane].append(index)
    return [sorted(lane) for lane in plan]


def run_fits(
    fits: list[Fit], callback: TrainingCallback | None = None, lanes: int = 1
) -> list[FitResult]:
    """Every fit's result, in order: in turn here when ``lanes`` is 1 (each fit announcing its
    label), else spread over that many lanes (:func:`plan_lanes`; one phase announced, the
    progress counting every lane's steps). A worker that cannot start or ends without all its
    results (killed for memory) leaves its remaining fits to this process, with a warning; its
    error is raised here as soon as it arrives; leaving stops every worker still running."""
    lanes = min(lanes, len(fits))
    if lanes <= 1:
        return [_run_announced(fit, callback) for fit in fits]
    plan = plan_lanes([fit.steps for fit in fits], lanes)
    threads = torch.get_num_threads()
    worker_threads = max(1, threads // lanes)
    workers: list[tuple[Worker, list[int]]] = []
    results: dict[int, FitResult] = {}
    try:
        for lane in plan[1:]:
            try:
                workers.append((Worker([fits[i] for i in lane], worker_threads), lane))
            except OSError as error:
                warnings.warn(f"a worker process could not start ({error}); its fits run here instead", RuntimeWarning, stacklevel=2)
                plan[0] += lane
        progress = _LanesProgress(callback, [worker for worker, _ in workers], [fits[i].steps for i in plan[0]])
        announce_phase(callback, f"{_describe(fits)} in {len(workers) + 1} processes")
        torch.set_num_threads(max(1, threads - worker_threads * len(workers)))
        for index in plan[0]:
            results[index] = run_fit(fits[index], progress)
            progress.fit_done()
        torch.set_num_threads(threads)
        for worker, lane in workers:
            results.update({lane[position]: result for position, result in worker.wait(progress.report).items()})
            missing = [index for index in lane if index not in results]
            if missing:
                warnings.warn(
                    f"a worker process ended without all its results ({worker.exit_description()}); {len(missing)} of its fits run again here",
                    RuntimeWarning, stacklevel=2,
                )  # fmt: skip
                results.update({index: _run_announced(fits[index], callback) for index in missing})
    finally:
        torch.set_num_threads(threads)
        for worker, _ in workers:
            worker.stop()
    return [results[index] for index in range(len(fits))]


def _run_announced(fit: Fit, callback: TrainingCallback | None) -> FitResult:
    if fit.label:
        announce_phase(callback, fit.label)
    return run_fit(fit, callback)


def _describe(fits: list[Fit]) -> str:
    """``"3 models and 12 calibration fits"``, ``"model and 4 calibration fits"``, ``"8 calibration fits"``."""
    models, folds = sum(fit.fold is None for fit in fits), sum(fit.fold is not None for fit in fits)
    parts = [] if not models else ["model" if models == 1 else f"{models} models"]
    parts += [] if not folds else [f"{folds} calibration fit{'s' if folds > 1 else ''}"]
    return " and ".join(parts)


class _LanesProgress(ForwardingCallback):
    """This lane's fits (``pending``: their steps, in order), reported to the user's callback with
    every worker's steps added; raises a worker's exception at the next step after it arrives."""

    def __init__(self, callback: TrainingCallback | None, workers: list[Worker], pending: list[int]) -> None:
        super().__init__(callback)
        self._workers, self._pending = workers, list(pending)
        self._finished = self._step = self._total = 0

    def on_step(self, step: int, total_steps: int) -> None:
        self._step, self._total = step, total_steps
        self.report()

    def on_phase(self, label: str) -> None:
        pass  # one phase for all lanes, announced when they start

    def fit_done(self) -> None:
        """This lane's current fit has run all its steps."""
        planned = self._pending.pop(0)
        self._finished += self._total or planned
        self._step = self._total = 0

    def report(self) -> None:
        for worker in self._workers:
            worker.raise_error()
        if self._callback is not None:
            current = self._total or (self._pending[0] if self._pending else 0)
            done = self._finished + self._step + sum(worker.progress[0] for worker in self._workers)
            total = self._finished + current + sum(self._pending[1:]) + sum(worker.progress[1] for worker in self._workers)
            self._callback.on_step(done, total)
