"""Where training rows live: in memory, or in a feature file read lazily in whole chunks.

A store is a sequence of rows cut into chunks: :meth:`chunk_bounds`, :meth:`read` of one span and
:meth:`read_rows` of given rows, each returning float32 rows. Training, the input statistics and
prediction go through this one interface, so a feature file larger than memory trains like an array.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import h5py
import numpy as np
import torch
from torch import Tensor

from .errors import InputError, reading
from .features import _plain, _strings
from .moments import Moments

__all__ = ["RowStore", "ArrayStore", "FeatureStream", "SubsetStore", "blocks", "moments_of", "stream_labeled_rows", "image_shape_of"]

#: Rows read at a time by :func:`blocks`: 64k rows of 384 float32 features are 96 MiB.
BLOCK_ROWS = 65536


class RowStore(Protocol):
    n_rows: int
    dim: int
    units: str | None
    """What the columns are measured in, as the extractor wrote it (:data:`~flowgmm_cli.features.UNITS`), or ``None``."""
    image_shape: tuple[int, int, int] | None
    """``(C, H, W)`` when each row is an image of uint8 pixels (the ``pixels`` extractor), else ``None``."""

    def chunk_bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each chunk, in order; reading whole chunks is the efficient access."""
        ...

    def read(self, start: int, stop: int) -> Tensor:
        """Rows ``start`` to ``stop`` as a float32 tensor."""
        ...

    def read_rows(self, rows: np.ndarray) -> Tensor:
        """The given rows, in the given order."""
        ...


class ArrayStore:
    """Rows of an in-memory tensor, cut into ``chunks`` equal chunks (one by default).

    Example:
        >>> store = ArrayStore(torch.arange(10.0).reshape(5, 2), chunks=2)
        >>> store.chunk_bounds(), store.read_rows(np.array([4, 0]))[:, 0].tolist()
        ([(0, 3), (3, 5)], [8.0, 0.0])
    """

    def __init__(self, x: Tensor, chunks: int = 1, units: str | None = None, image_shape: tuple[int, int, int] | None = None) -> None:
        self.x, self.chunks, self.units, self.image_shape = x, chunks, units, image_shape
        self.n_rows, self.dim = x.shape[0], x.shape[1]
        self._chunk_rows = max(1, math.ceil(self.n_rows / max(chunks, 1)))

    def chunk_bounds(self) -> list[tuple[int, int]]:
        return [(start, min(start + self._chunk_rows, self.n_rows)) for start in range(0, self.n_rows, self._chunk_rows)]

    def read(self, start: int, stop: int) -> Tensor:
        return self.x[start:stop]

    def read_rows(self, rows: np.ndarray) -> Tensor:
        return self.x[torch.as_tensor(rows, dtype=torch.long)]


class SubsetStore:
    """The rows of ``store`` where ``keep`` is true (for example the unlabeled ones), chunk by chunk."""

    def __init__(self, store: RowStore, keep: np.ndarray) -> None:
        self.store, self.keep, self.units, self.image_shape = store, np.asarray(keep, dtype=bool), store.units, store.image_shape
        self.n_rows, self.dim = int(self.keep.sum()), store.dim

    def chunk_bounds(self) -> list[tuple[int, int]]:
        return self.store.chunk_bounds()

    def read(self, start: int, stop: int) -> Tensor:
        """The kept rows among the underlying rows ``start`` to ``stop``."""
        rows = self.store.read(start, stop)
        keep = self.keep[start:stop]
        return rows if keep.all() else rows[torch.from_numpy(keep)]

    def read_rows(self, rows: np.ndarray) -> Tensor:
        return self.store.read_rows(np.flatnonzero(self.keep)[rows])


class FeatureStream:
    """A feature file whose rows are read on demand, chunk by chunk, never all at once.

    The HDF5 file is opened in each process when first read (h5py handles survive neither fork nor
    pickling). Reading checks that the file has not changed since it was opened (size and
    modification time), and that the rows read are finite.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"Feature file '{self.path}' does not exist; create it with 'flowgmm embed'.")
        if not h5py.is_hdf5(self.path):
            raise InputError(f"'{self.path}' is not an HDF5 feature file; create one with 'flowgmm embed'.")
        with reading(self.path, "feature file", "embed it again with 'flowgmm embed'"), h5py.File(self.path, "r") as handle:
            dataset = handle.get("features")
            if not isinstance(dataset, h5py.Dataset):
                raise InputError(f"'{self.path}' has no /features dataset; create the file with 'flowgmm embed'.")
            if dataset.ndim < 2 or 0 in dataset.shape:
                raise InputError(f"/features in '{self.path}' has shape {dataset.shape}; expected a non-empty (rows, dims) matrix.")
            self.n_rows, self.dim = int(dataset.shape[0]), int(np.prod(dataset.shape[1:]))
            self.chunk_rows = int(dataset.chunks[0]) if dataset.chunks else min(self.n_rows, 4096)
            self.has_labels = "labels" in handle
            self.attrs = {key: _plain(value) for key, value in handle.attrs.items()}
            self.units = str(self.attrs.get("units") or "") or None
            self.image_shape = image_shape_of(self.attrs, dataset)
            for name in ("ids", "labels"):
                if name in handle and len(handle[name]) != self.n_rows:
                    raise InputError(f"'{self.path}' has {self.n_rows} feature rows but {len(handle[name])} {name}; the file is damaged, embed it again.")
        self.signature = self._stat()
        """The file's size and modification time when opened; reads refuse a file that changed."""
        self._handle: h5py.File | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": -1}

    def _stat(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            with reading(self.path, "feature file", "embed it again with 'flowgmm embed'"):
                self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Close this process's handle (a later read opens the file again)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def check_unchanged(self) -> None:
        """Raise :class:`InputError` if the file was replaced or written since it was opened."""
        if self._stat() != self.signature:
            raise InputError(f"Feature file '{self.path}' changed while it was being read; no model was written. Train again on a file that stays put.")

    def chunk_bounds(self) -> list[tuple[int, int]]:
        return [(start, min(start + self.chunk_rows, self.n_rows)) for start in range(0, self.n_rows, self.chunk_rows)]

    def read(self, start: int, stop: int) -> Tensor:
        self.check_unchanged()
        with reading(self.path, "feature file", "embed it again with 'flowgmm embed'"):
            rows = self._file()["features"][start:stop]
        return self._checked(rows.reshape(len(rows), -1).astype(np.float32, copy=False), np.arange(start, stop))

    def read_rows(self, rows: np.ndarray) -> Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        ascending = rows[order]
        unique, inverse = np.unique(ascending, return_inverse=True)
        self.check_unchanged()
        with reading(self.path, "feature file", "embed it again with 'flowgmm embed'"):
            values = self._file()["features"][unique] if len(unique) else np.empty((0, self.dim), np.float32)
        values = values.reshape(len(unique), -1).astype(np.float32, copy=False)[inverse]
        result = np.empty_like(values)
        result[order] = values
        return self._checked(result, rows)

    def ids(self, start: int, stop: int) -> np.ndarray:
        """Row ids ``start`` to ``stop`` (row numbers when the file has no /ids)."""
        handle = self._file()
        if "ids" not in handle:
            return np.arange(start, stop).astype(str).astype(object)
        return _strings(handle["ids"][start:stop])

    def labels(self, start: int, stop: int) -> np.ndarray | None:
        """The file's own class names of rows ``start`` to ``stop`` ('' = unlabeled), or ``None``."""
        return _strings(self._file()["labels"][start:stop]) if self.has_labels else None

    def _checked(self, values: np.ndarray, rows: np.ndarray) -> Tensor:
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            row = int(rows[np.flatnonzero(~finite)[0]])
            raise InputError(
                f"Feature file '{self.path}' has NaN or infinite values at row {row} (id '{self.ids(row, row + 1)[0]}'); "
                "fix or drop those rows and embed again."
            )
        return torch.from_numpy(np.ascontiguousarray(values))


def image_shape_of(attrs: dict[str, Any], dataset: h5py.Dataset) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of a feature file whose rows are uint8 images with a ``shape`` attribute, else ``None``."""
    shape = attrs.get("shape")
    if dataset.dtype != np.uint8 or shape is None or len(shape) != 3 or tuple(dataset.shape[1:]) != tuple(int(v) for v in shape):
        return None
    return tuple(int(v) for v in shape)  # type: ignore[return-value]


def blocks(store: RowStore, rows: np.ndarray | None = None, block_rows: int | None = None) -> Iterator[tuple[np.ndarray, Tensor]]:
    """``(row numbers, features)`` of ``store`` in order, reading ``block_rows`` (default
    :data:`BLOCK_ROWS`) consecutive rows at a time; with ``rows`` (ascending row numbers), only those
    rows of each block are kept.

    Reading whole spans rather than scattered rows keeps HDF5 reads sequential, and memory is
    bounded by one block whatever the file's size.
    """
    step = block_rows or BLOCK_ROWS
    for start in range(0, store.n_rows, step):
        stop = min(start + step, store.n_rows)
        if rows is None:
            yield np.arange(start, stop), store.read(start, stop)
            continue
        wanted = rows[np.searchsorted(rows, start) : np.searchsorted(rows, stop)]
        if len(wanted):
            yield wanted, store.read(start, stop)[torch.from_numpy(wanted - start)]


def moments_of(store: RowStore, full: bool, transform: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None) -> Moments:
    """Mean and (co)variance of every row of ``store`` (mapped by ``transform`` when given, an
    input transform returning ``(rows, log_term)``), one pass over its chunks."""
    moments = Moments(store.dim, full=full)  # the transforms used here keep the dimension
    for start, stop in store.chunk_bounds():
        block = store.read(start, stop)
        if transform is not None:
            with torch.no_grad():
                block = transform(block)[0]
        moments.update(block)
    return moments


def stream_labeled_rows(stream: FeatureStream, labels: dict[str, str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The labeled rows of a streamed file and their class names, reading its ids chunk by chunk.

    Labels come from ``labels`` (id → class name; '' = unlabeled) or else the file's /labels.
    Returns ``(rows, names, ids_not_found)``; memory grows with the labeled rows, not the file.
    """
    rows, names, found = [], [], set()
    for start, stop in stream.chunk_bounds():
        if labels is None:
            chunk = stream.labels(start, stop)
            if chunk is None:
                break
            hits = np.flatnonzero(chunk != "")
            rows.append(start + hits)
            names.append(chunk[hits])
            continue
        ids = stream.ids(start, stop)
        for offset, row_id in enumerate(ids):
            name = labels.get(row_id)
            if name is not None:
                if row_id in found:
                    raise InputError(f"Id '{row_id}' appears more than once in feature file '{stream.path}'; ids must be unique.")
                found.add(row_id)
                if name != "":
                    rows.append(np.array([start + offset]))
                    names.append(np.array([name], dtype=object))
    missing = [] if labels is None else [row_id for row_id in labels if row_id not in found]
    rows_all = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    names_all = np.concatenate(names) if names else np.empty(0, dtype=object)
    return rows_all.astype(np.int64), names_all.astype(object), missing

