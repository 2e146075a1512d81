"""The embedding loop every model extractor shares: chunks in, a resumable feature file out.

An extractor yields :class:`Chunk` s from a given input position; this module writes them through
``FeatureWriter`` (one flushed chunk at a time, so memory stays bounded and ``--resume`` can
continue after the last complete chunk), drives the progress bar and keeps the running counts
(truncated texts, skipped images) that the extractor reports at the end.

Several processes (``torchrun``, or ``flowgmm embed --nproc N``) split the work by chunks: chunk
``k``, the inputs ``k * chunk_size`` up to ``(k + 1) * chunk_size``, is embedded by process
``k % N``, which writes it to its own part file (``OUT.partial.rank{r}-of-{N}``, resumable on its
own). When every process is done, process 0 merges the parts into ``OUT`` in input order, with the
counts summed and the skipped ids in input order, and deletes them: the same file one process
writes. Every process reads the whole input listing; only the model's work is split.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console

from flowgmm_cli.errors import InputError
from flowgmm_cli.features import FeatureWriter, PartChunk, merge_parts, read_parts

from .base import EmbedRequest

__all__ = ["Chunk", "EmbedState", "Owns", "ProcessFailed", "chunk_ranges", "every_chunk", "resume_key", "stream_to_file"]

Owns = Callable[[int], bool]
"""Whether this process embeds the chunk that begins at the given input position."""

#: How long process 0 waits for the others to finish their share; the default 10 (NCCL) or 30
#: (gloo) minutes of torch.distributed is too short when the processes run at different speeds.
_WAIT = datetime.timedelta(days=7)


class ProcessFailed(RuntimeError):
    """Another process of a multi-process embed failed while this one waited for it."""


def every_chunk(start: int) -> bool:
    """One process embeds every chunk."""
    return True


def chunk_ranges(start: int, total: int, chunk_size: int, owns: Owns = every_chunk) -> list[tuple[int, int]]:
    """The ``[begin, end)`` input ranges of the chunks from ``start`` on that ``owns`` selects.

    Chunks begin at multiples of ``chunk_size``, so that every process sees the same chunks
    whichever position it resumes from; a ``start`` inside a chunk begins with the rest of it.

    Example:
        >>> chunk_ranges(0, 10, 4), chunk_ranges(5, 10, 4), chunk_ranges(0, 10, 4, lambda begin: begin // 4 % 2 == 1)
        ([(0, 4), (4, 8), (8, 10)], [(5, 8), (8, 10)], [(4, 8)])
    """
    begins = [start, *range((start // chunk_size + 1) * chunk_size, total, chunk_size)] if start < total else []
    return [(begin, min(total, (begin // chunk_size + 1) * chunk_size)) for begin in begins if owns(begin)]


@dataclass
class Chunk:
    """Rows embedded from consecutive inputs; ``inputs`` counts the inputs consumed, skipped ones included.

    ``start`` is the input position of the chunk's first input (``None``: right after the previous
    chunk, which only one process can say).
    """

    inputs: int
    ids: Any
    features: np.ndarray
    labels: Any = None
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    start: int | None = None


@dataclass
class EmbedState:
    """What survives an interruption: inputs consumed, running counts, the ids of skipped inputs and
    the input position after the last chunk written, where a resumed run continues."""

    inputs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    position: int = 0

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> "EmbedState":
        """The state a writer kept (files of earlier versions have no position: it was ``inputs``)."""
        return cls(**{"position": saved.get("inputs", 0), **saved})

    def add(self, chunk: Chunk) -> None:
        self.inputs += chunk.inputs
        self.position = (self.position if chunk.start is None else chunk.start) + chunk.inputs
        for name, value in chunk.counts.items():
            self.counts[name] = self.counts.get(name, 0) + value
        self.skipped.extend(chunk.skipped)

    @classmethod
    def merged(cls, states: list[dict[str, Any]], chunks: list[PartChunk]) -> "EmbedState":
        """The state of the whole input from the parts' ``states``, skipped ids in input order."""
        parts = [cls.restore(state) for state in states]
        whole = cls(inputs=sum(part.inputs for part in parts), position=sum(chunk.inputs for chunk in chunks))
        for part in parts:
            for name, value in part.counts.items():
                whole.counts[name] = whole.counts.get(name, 0) + value
        taken = [0] * len(parts)
        for chunk in chunks:
            whole.skipped += parts[chunk.rank].skipped[taken[chunk.rank] : taken[chunk.rank] + chunk.skipped]
            taken[chunk.rank] += chunk.skipped
        return whole


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
    chunks: Callable[[int, Owns], Iterable[Chunk]],
    chunk_size: int,
    total: int | None = None,
    with_labels: bool = False,
    dtype: Any = np.float32,
    sample_shape: tuple[int, ...] | None = None,
    finish: Callable[[EmbedState], dict[str, Any]] | None = None,
) -> EmbedState:
    """Write ``chunks(start, owns)`` to ``request.output`` and return the state of the whole input.

    ``chunks`` yields, in input order, the chunks (of ``chunk_size`` inputs, beginning at
    multiples of it: see :func:`chunk_ranges`) from input position ``start`` on that ``owns``
    selects by their first input's position, each with its ``start``; ``total`` is the number of
    inputs when known (for the progress). ``key`` makes the write resumable (see
    ``FeatureWriter``); ``None`` (standard input) does not. ``finish`` turns the final state into
    extra file attributes, written with the complete file. With ``request.world_size`` processes
    (``torch.distributed`` initialized), each writes its share and process 0 merges them.
    """
    if request.world_size > 1:
        return _stream_share(request, dim=dim, attrs=attrs, key=key, chunks=chunks, chunk_size=chunk_size, total=total,
                             with_labels=with_labels, dtype=dtype, sample_shape=sample_shape, finish=finish)  # fmt: skip
    console = request.console or Console(quiet=True)
    writer = FeatureWriter(
        request.output, dim, attrs, with_labels, resume_key=key, resume=request.resume and key is not None,
        dtype=dtype, sample_shape=sample_shape,
    )  # fmt: skip
    with writer, request.progress(total) as progress:
        state = EmbedState.restore(writer.state)
        if state.inputs:
            console.print(f"resuming after {state.inputs} inputs ({writer.rows} rows) in {writer.partial_path}")
            progress.start_at(state.inputs)
        for chunk in chunks(state.position, every_chunk):
            state.add(chunk)
            writer.append(chunk.ids, chunk.features, chunk.labels, state=vars(state))
            progress.advance(chunk.inputs)
        if finish is not None:
            attrs.update(finish(state))
    return state


def _stream_share(
    request: EmbedRequest, *, dim: int, attrs: dict[str, Any], key: str | None, chunks: Callable[[int, Owns], Iterable[Chunk]],
    chunk_size: int, total: int | None, with_labels: bool, dtype: Any, sample_shape: tuple[int, ...] | None,
    finish: Callable[[EmbedState], dict[str, Any]] | None,
) -> EmbedState:  # fmt: skip
    """This process's chunks to its part file; then process 0 merges the parts into ``request.output``."""
    import torch.distributed as dist

    rank, size = request.rank, request.world_size
    if key is None:
        raise InputError("Standard input cannot be embedded by several processes; save it to a file and give its path.")
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() == size):
        raise RuntimeError(f"embedding with {size} processes needs torch.distributed initialized with them (flowgmm_cli.distributed.setup)")
    # all processes make this group now, so that the wait for the slowest is a gloo barrier with a long timeout
    group = dist.new_group(backend="gloo", timeout=_WAIT)
    console = request.console or Console(quiet=True)

    def owns(begin: int) -> bool:
        return begin // chunk_size % size == rank

    share = None if total is None else sum(end - begin for begin, end in chunk_ranges(0, total, chunk_size, owns))
    writer = FeatureWriter(  # the chunk size decides which process has which chunk: part of the key
        request.output, dim, attrs, with_labels, resume_key=resume_key(key, chunk_size=chunk_size), resume=request.resume,
        dtype=dtype, sample_shape=sample_shape, part=(rank, size),
    )  # fmt: skip
    with writer, request.progress(share) as progress:
        state = EmbedState.restore(writer.state)
        if state.inputs:
            console.print(f"resuming: process {rank} of {size} has {state.inputs} of its inputs ({writer.rows} rows) in {writer.partial_path}")
            progress.start_at(state.inputs)
        for chunk in chunks(state.position, owns):
            if chunk.start is None or not owns(chunk.start):
                raise RuntimeError(f"the extractor gave a chunk at input {chunk.start}, not one of process {rank}'s")
            state.add(chunk)
            writer.append(chunk.ids, chunk.features, chunk.labels, state=vars(state), chunk=(chunk.start, chunk.inputs, len(chunk.skipped)))
            progress.advance(chunk.inputs)
    _together(dist.barrier, group=group)
    whole = None
    if rank == 0:
        states, order = read_parts(request.output, size)
        whole = EmbedState.merged(states, order)
        if finish is not None:
            attrs.update(finish(whole))
        merge_parts(request.output, size, order, dim, attrs, with_labels, dtype=dtype, sample_shape=sample_shape)
    box = [whole]
    _together(dist.broadcast_object_list, box, src=0, group=group)
    dist.destroy_process_group(group)
    return box[0]


def _together(collective: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run a collective; a peer that died meanwhile is a :class:`ProcessFailed`, not a transport error."""
    try:
        collective(*args, **kwargs)
    except RuntimeError:  # gloo: "Connection closed by peer" (or, after days, a timeout)
        raise ProcessFailed("another process of this embed failed (its error is above); the part files are kept for --resume") from None
