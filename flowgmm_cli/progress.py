"""Progress on stderr: Rich bars for training, embedding and benchmarks, silent with --quiet,
a plain line now and then instead when stderr is not a terminal."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from .training import EpochReport

__all__ = ["stderr_console", "TrainingProgress", "RowProgress", "RunProgress"]


def stderr_console(quiet: bool = False) -> Console:
    """A console on stderr; no colour when stderr is not a terminal or ``NO_COLOR`` is set; a message
    is one line however narrow the terminal (log files and ``grep`` see whole lines)."""
    return Console(stderr=True, quiet=quiet, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, soft_wrap=True)


class _Bar:
    """One titled bar with a free text field, drawn only on a terminal; a context manager."""

    def __init__(self, console: Console, title: str, total: int | None = None) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn(f"[bold]{title}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=console.quiet or not console.is_terminal,
        )  # fmt: skip
        self._task = self._progress.add_task(title, total=total, status="")

    @property
    def _plain_lines(self) -> bool:
        """Whether to print progress as lines: on a non-terminal stderr, unless quiet."""
        return not self._console.is_terminal and not self._console.quiet

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


class TrainingProgress(_Bar):
    """A training callback that drives one progress bar over all steps and shows the last epoch's numbers."""

    def __init__(self, console: Console) -> None:
        super().__init__(console, "train")
        self._phase = ""

    def on_phase(self, label: str) -> None:
        """Another fit starts (a calibration fit): the bar starts over and its status says which."""
        self._phase = f"{label}: "
        self._progress.reset(self._task, status=label)
        if self._plain_lines:
            self._console.print(label)

    def on_step(self, step: int, total_steps: int) -> None:
        self._progress.update(self._task, completed=step, total=total_steps)

    def on_epoch_end(self, report: EpochReport) -> None:
        status = f"{self._phase}epoch {report.epoch}/{report.epochs} loss {report.loss:.3f}"
        if report.val_accuracy is not None:
            status += f" val acc {report.val_accuracy:.3f}"
        self._progress.update(self._task, status=status)
        if self._plain_lines and (report.epoch == report.epochs or report.epoch % max(1, report.epochs // 10) == 0):
            self._console.print(status)


class RowProgress(_Bar):
    """A progress bar over input rows (texts, images) with the rate; a line every 15 s when not a terminal."""

    def __init__(self, console: Console, what: str, total: int | None = None) -> None:
        super().__init__(console, what, total)
        self._what = what
        self._started = self._last_line = time.monotonic()
        self._done = self._first = 0

    def start_at(self, rows: int) -> None:
        """Rows already done before this run (a resumed embed); they do not count in the rate."""
        self._done = self._first = rows
        self._progress.update(self._task, completed=rows)

    def advance(self, rows: int) -> None:
        self._done += rows
        now = time.monotonic()
        rate = f"{(self._done - self._first) / max(now - self._started, 1e-9):.1f} rows/s"
        self._progress.update(self._task, completed=self._done, status=rate)
        if self._plain_lines and now - self._last_line >= 15:
            self._console.print(f"{self._what}: {self._done} rows, {rate}")
            self._last_line = now


class RunProgress(_Bar):
    """``flowgmm benchmark``'s bar over methods × seeds; one line per run when not a terminal."""

    def __init__(self, console: Console, total: int) -> None:
        super().__init__(console, "benchmark", total)

    def start(self, method: str, seed: int) -> None:
        self._progress.update(self._task, status=f"{method} seed {seed}")

    def done(self, method: str, seed: int, accuracy: float, seconds: float) -> None:
        self._progress.advance(self._task)
        if self._plain_lines:
            self._console.print(f"{method} seed {seed}: {accuracy:.1f}% in {seconds:.1f} s")
