"""The protocol between ``flowgmm embed`` and an extractor: the request, the progress display, the extractor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

__all__ = ["EmbedRequest", "Extractor", "RowProgress"]


class RowProgress(Protocol):
    """Progress over input rows, shown by whoever asked for the embedding (a context manager)."""

    def __enter__(self) -> "RowProgress": ...

    def __exit__(self, *exc: object) -> None: ...

    def start_at(self, rows: int) -> None:
        """Rows already done before this run (a resumed embed)."""
        ...

    def advance(self, rows: int) -> None: ...


class _NoProgress:
    """Progress that shows nothing."""

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start_at(self, rows: int) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass


@dataclass
class EmbedRequest:
    """What ``flowgmm embed`` was asked to do; an extractor reads the options that apply to it."""

    source: str
    output: Path
    id_column: str = "id"
    label_column: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    console: Any = None
    """A ``rich.console.Console`` on stderr for warnings; ``None`` is silent."""
    progress: Callable[[int | None], RowProgress] = lambda total: _NoProgress()
    """Makes the progress display for ``total`` inputs (``None`` when unknown); with several
    processes, for this process's share of them."""
    rank: int = 0
    world_size: int = 1
    """This process's rank among ``world_size`` processes (``torch.distributed`` initialized)
    that embed the input together, each its share of the chunks (see ``extractors.streaming``)."""


class Extractor(Protocol):
    """Turns an input (CSV, folder, zip …) into a feature file written with ``FeatureWriter``."""

    name: str
    description: str
    dim: int | None
    """Feature dimension, or ``None`` when it depends on the input (tabular, pixels). The file's
    attributes should include ``units`` (one of ``flowgmm_cli.features.UNITS``): ``per-column`` for
    columns each in its own unit, ``shared`` for one unit; ``train`` scales the features by it."""
    distributed: bool
    """Optional (default ``False``): whether ``embed`` splits its work over ``request.world_size``
    processes (through ``extractors.streaming.stream_to_file``); others run in one process only."""

    def weights_status(self) -> str:
        """Where the weights come from and whether they are on this machine (for ``flowgmm extractors``)."""
        ...

    def embed(self, request: EmbedRequest) -> int:
        """Write ``request.output`` and return the number of rows written."""
        ...
