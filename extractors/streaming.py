"""The embedding loop every model extractor shares: chunks in, a resumable feature file out.

An extractor yields :class:`Chunk` s from a given input position; this module writes them through
``FeatureWriter`` (one flushed chunk at a time, so memory stays bounded and ``--resume`` can
continue after the last complete chunk), drives the progress bar and keeps the running counts
(truncated texts, skipped images) that the extractor reports at the end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console

from flowgmm_cli.features import FeatureWriter

from .base import EmbedRequest

__all__ = ["Chunk", "EmbedState", "resume_key", "stream_to_file"]


@dataclass
class Chunk:
    """Rows embedded from consecutive inputs; ``inputs`` counts the inputs consumed, skipped ones included."""

    inputs: int
    ids: Any
    features: np.ndarray
    labels: Any = None
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


@dataclass
class EmbedState:
    """What survives an interruption: inputs consumed, running counts and the ids of skipped inputs."""

    inputs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def add(self, chunk: Chunk) -> None:
        self.inputs += chunk.inputs
        for name, value in chunk.counts.items():
            self.counts[name] = self.counts.get(name, 0) + value
        self.skipped.extend(chunk.skipped)


def resume_key(source_sha256: str, **settings: Any) -> str:
    """A hash of the input and of every setting that changes the features, to refuse a mismatched resume."""
    text = json.dumps({"source": source_sha256, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def stream_to_file(
    request: EmbedRequest,
    *,
    dim: int,
    attrs: dict[str, Any],
    key: str | None,
    chunks: Callable[[int], Iterable[Chunk]],
    total: int | None = None,
    with_labels: bool = False,
    dtype: Any = np.float32,
    sample_shape: tuple[int, ...] | None = None,
    finish: Callable[[EmbedState], dict[str, Any]] | None = None,
) -> EmbedState:
    """Write ``chunks(start)`` (inputs from position ``start`` on) to ``request.output``.

    ``key`` makes the write resumable (see ``FeatureWriter``); ``None`` (standard input) does not.
    ``finish`` turns the final state into extra file attributes, written with the complete file.
    """
    console = request.console or Console(quiet=True)
    writer = FeatureWriter(
        request.output, dim, attrs, with_labels, resume_key=key, resume=request.resume and key is not None,
        dtype=dtype, sample_shape=sample_shape,
    )  # fmt: skip
    with writer, request.progress(total) as progress:
        state = EmbedState(**writer.state) if writer.state else EmbedState()
        if state.inputs:
            console.print(f"resuming after {state.inputs} inputs ({writer.rows} rows) in {writer.partial_path}")
            progress.start_at(state.inputs)
        for chunk in chunks(state.inputs):
            state.add(chunk)
            writer.append(chunk.ids, chunk.features, chunk.labels, state=vars(state))
            progress.advance(chunk.inputs)
        if finish is not None:
            attrs.update(finish(state))
    return state
