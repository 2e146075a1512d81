"""Progress on stderr: a Rich bar for training, silent with --quiet, colourless when not a terminal."""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .training import EpochReport

__all__ = ["stderr_console", "TrainingProgress", "RowProgress"]


def stderr_console(quiet: bool = False) -> Console:
    """A console on stderr; no colour when stderr is not a terminal or ``NO_COLOR`` is set."""
    return Console(stderr=True, quiet=quiet, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


class TrainingProgress:
    """A training callback that drives one progress bar over all steps and shows the last epoch's numbers."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=console.quiet or not console.is_terminal,
            transient=False,
        )
        self._task = self._progress.add_task("train", total=None, status="")
        self._console = console

    def __enter__(self) -> "TrainingProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def on_step(self, step: int, total_steps: int) -> None:
        self._progress.update(self._task, completed=step, total=total_steps)

    def on_epoch_end(self, report: EpochReport) -> None:
        status = f"epoch {report.epoch}/{report.epochs} loss {report.loss:.3f}"
        if report.val_accuracy is not None:
            status += f" val acc {report.val_accuracy:.3f}"
        self._progress.update(self._task, status=status)
        if not self._console.is_terminal and not self._console.quiet and (report.epoch == report.epochs or report.epoch % max(1, report.epochs // 10) == 0):
            self._console.print(status)


class RowProgress:
    """A progress bar over input rows (texts, images) with the rate; a line every 15 s when not a terminal."""

    def __init__(self, console: Console, what: str, total: int | None = None) -> None:
        self._progress = Progress(
            TextColumn(f"[bold]{what}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=console.quiet or not console.is_terminal,
        )
        self._task = self._progress.add_task(what, total=total, rate="")
        self._console, self._what = console, what
        self._started = self._last_line = time.monotonic()
        self._done = self._first = 0

    def __enter__(self) -> "RowProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start_at(self, rows: int) -> None:
        """Rows already done before this run (a resumed embed); they do not count in the rate."""
        self._done = self._first = rows
        self._progress.update(self._task, completed=rows)

    def advance(self, rows: int) -> None:
        self._done += rows
        now = time.monotonic()
        rate = f"{(self._done - self._first) / max(now - self._started, 1e-9):.1f} rows/s"
        self._progress.update(self._task, completed=self._done, rate=rate)
        if not self._console.is_terminal and not self._console.quiet and now - self._last_line >= 15:
            self._console.print(f"{self._what}: {self._done} rows, {rate}")
            self._last_line = now
