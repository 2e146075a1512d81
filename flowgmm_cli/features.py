"""Feature files (HDF5) and labels files (CSV): reading with clear errors, writing in chunks, atomically."""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import pandas as pd

from ._version import __version__
from .atomic import atomic_path, check_output_path
from .errors import InputError, OptionError, reading

__all__ = ["UNITS", "FeatureFile", "FeatureWriter", "read_features", "read_labels", "align_labels", "check_dim", "report_missing_ids"]

#: Values of a feature file's ``units`` attribute, written by the extractor that knows its columns:
#: ``per-column`` when each column has its own unit (a table's columns), ``shared`` when all are in
#: one unit (embeddings, pixels). It chooses the default input scaling (:mod:`flowgmm_cli.defaults`).
UNITS = ("per-column", "shared")

_STRING = h5py.string_dtype("utf-8")
_CHUNK_ROWS = 4096
_PART_CHUNKS = "part_chunks"  # a part's chunks: input position, inputs, inputs skipped, rows


@dataclass
class FeatureFile:
    """The contents of a feature file: ids, a float32 matrix, optional labels ('' = unlabeled)."""

    path: Path
    ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.features.shape[1]


def read_features(path: str | os.PathLike) -> FeatureFile:
    """Read and check a feature file: 2-D finite ``/features``, unique ``/ids`` of the same length."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"Feature file '{file}' does not exist; create it with 'flowgmm embed'.")
    if not h5py.is_hdf5(file):
        raise InputError(f"'{file}' is not an HDF5 feature file; create one with 'flowgmm embed'.")
    with reading(file, "feature file", "embed it again with 'flowgmm embed'"), h5py.File(file, "r") as handle:
        if "features" not in handle or not isinstance(handle["features"], h5py.Dataset):
            raise InputError(f"'{file}' has no /features dataset; create the file with 'flowgmm embed'.")
        dataset = handle["features"]
        if dataset.ndim < 2 or 0 in dataset.shape:
            raise InputError(f"/features in '{file}' has shape {dataset.shape}; expected a non-empty (rows, dims) matrix.")
        # pixel files store (rows, C, H, W) integers; models see each row as one flat vector
        features = dataset[...].reshape(dataset.shape[0], -1).astype(np.float32, copy=False)
        n = features.shape[0]
        ids = _strings(handle["ids"][...]) if "ids" in handle else np.array([str(i) for i in range(n)], dtype=object)
        labels = _strings(handle["labels"][...]) if "labels" in handle else None
        attrs = {k: _plain(v) for k, v in handle.attrs.items()}
    if len(ids) != n or (labels is not None and len(labels) != n):
        raise InputError(f"'{file}' has {n} feature rows but {len(ids)} ids; the file is damaged, embed it again.")
    _check_unique(ids, f"feature file '{file}'")
    bad_rows = ~np.isfinite(features).all(axis=1)
    if bad_rows.any():
        row = int(np.flatnonzero(bad_rows)[0])
        raise InputError(
            f"Feature file '{file}' has NaN or infinite values in {int(bad_rows.sum())} rows, first at row {row} "
            f"(id '{ids[row]}'); fix or drop those rows and embed again."
        )
    return FeatureFile(file, ids, features, labels, attrs)


def check_dim(feature_file: FeatureFile, expected: int, what: str) -> None:
    """A clear error when ``feature_file``'s dimension is not the ``expected`` one of ``what``."""
    if feature_file.dim != expected:
        raise InputError(
            f"'{feature_file.path}' has {feature_file.dim}-dimensional features but {what} expects {expected}; "
            "use features from the same extractor."
        )


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read a labels CSV with columns ``id,label``; an empty label means unlabeled."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"Labels file '{file}' does not exist.")
    with reading(file, "labels file", "it must be a CSV with a header 'id,label'"):
        try:
            table = pd.read_csv(file, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise InputError(f"Labels file '{file}' is empty; it needs a header 'id,label' and one row per labeled id.") from None
    missing = [c for c in ("id", "label") if c not in table.columns]
    if missing:
        raise InputError(
            f"Labels file '{file}' has no '{missing[0]}' column (columns: {', '.join(table.columns)}); "
            "it needs a header 'id,label'."
        )
    _check_unique(table["id"].to_numpy(dtype=object), f"labels file '{file}'")
    return table[["id", "label"]]


def align_labels(feature_file: FeatureFile, labels: pd.DataFrame | None, labels_path: str = "", allow_missing: bool | None = None) -> np.ndarray:
    """One label per feature row ('' = unlabeled), from ``labels`` or else the file's own ``/labels``."""
    if labels is None:
        if feature_file.labels is None:
            return np.full(len(feature_file.ids), "", dtype=object)
        return feature_file.labels.astype(object)
    position = pd.Index(feature_file.ids)
    rows = position.get_indexer(labels["id"].to_numpy(dtype=object))
    absent = rows < 0
    if absent.any():
        first = labels["id"].iloc[int(np.flatnonzero(absent)[0])]
        report_missing_ids(int(absent.sum()), first, labels_path, feature_file.path, allow_missing)
    aligned = np.full(len(feature_file.ids), "", dtype=object)
    aligned[rows[~absent]] = labels["label"].to_numpy(dtype=object)[~absent]
    return aligned


def report_missing_ids(count: int, first: str, labels_path: str, features_path: str | os.PathLike, allow_missing: bool | None) -> None:
    """Ids of a labels file absent from the features: an error, or with ``allow_missing`` a warning
    (``None``: the command has no --allow-missing to suggest)."""
    message = f"{count} ids in labels file '{labels_path}' are not in feature file '{features_path}', first '{first}'"
    if allow_missing is None:
        raise InputError(message + "; fix the ids.")
    if not allow_missing:
        raise OptionError("allow_missing", message + "; fix the ids or pass {option} to ignore them.")
    print(f"Warning: {message}; ignoring them.", file=sys.stderr)


class FeatureWriter:
    """Append rows chunk by chunk to a new feature file that appears, by rename, only when complete.

    Rows are written as they come, so memory stays bounded for any number of rows. With a
    ``resume_key`` (a hash of the input and options) the rows go to ``PATH.partial``, which is
    flushed after every chunk and kept when the writer fails or is interrupted; a later writer with
    ``resume=True`` and the same key continues after the last complete chunk, and ``state`` gives
    back what the caller stored with that chunk (for example how many input rows it had consumed).
    Without a key, a failed write leaves nothing behind.

    ``part=(rank, size)`` makes the writer one of ``size`` processes that each write every
    ``size``-th chunk: its rows go to ``PATH.partial.rank{rank}-of-{size}`` (see :func:`part_path`),
    which stays there, complete or not, for :func:`merge_parts` to interleave into ``PATH`` in
    input order. Each ``append`` then names its chunk (input position, inputs consumed, inputs
    skipped). A part needs a ``resume_key``; with ``resume=True`` a process whose part is missing
    while its siblings' are there starts its part afresh, and partial files of another number of
    processes are an error naming both numbers.

    ``sample_shape`` stores each row as an array of that shape (e.g. ``(1, 28, 28)`` uint8 pixels
    with ``dtype=np.uint8``); readers flatten it into ``dim`` features.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "f.h5"
        >>> with FeatureWriter(out, dim=2, attrs={"extractor": "tabular"}) as writer:
        ...     writer.append(["a", "b"], np.ones((2, 2), np.float32))
        >>> read_features(out).features.shape
        (2, 2)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int,
        attrs: dict[str, Any],
        with_labels: bool = False,
        *,
        resume_key: str | None = None,
        resume: bool = False,
        dtype: Any = np.float32,
        sample_shape: tuple[int, ...] | None = None,
        part: tuple[int, int] | None = None,
    ) -> None:
        if resume and resume_key is None:
            raise ValueError("resume=True needs a resume_key")
        if part is not None and (resume_key is None or not 0 <= part[0] < part[1]):
            raise ValueError(f"part {part} needs a resume_key and 0 <= rank < size")
        self.path, self.dim, self.attrs, self.with_labels = Path(path), dim, attrs, with_labels
        self.resume_key, self.resume = resume_key, resume
        self.dtype, self.sample_shape = np.dtype(dtype), tuple(sample_shape or (dim,))
        if int(np.prod(self.sample_shape)) != dim:
            raise ValueError(f"sample_shape {self.sample_shape} does not hold {dim} values")
        self.part = part
        self.rows = 0
        self.chunks = 0
        self.state: dict[str, Any] = {}

    @property
    def partial_path(self) -> Path:
        """Where a resumable writer keeps its rows until the file is complete (its part's file for a part)."""
        if self.part is not None:
            return part_path(self.path, *self.part)
        return self.path.with_name(self.path.name + ".partial")

    def __enter__(self) -> "FeatureWriter":
        check_output_path(self.path)
        if self.resume_key is None:
            self._atomic = atomic_path(self.path)
            self._handle = h5py.File(self._atomic.__enter__(), "w")
            self._create_datasets()
        elif self.resume and not self._fresh_part():
            self._reopen_partial()
        else:
            self._handle = h5py.File(self.partial_path, "w")
            self._handle.attrs.update({"resume_key": self.resume_key, "rows_complete": 0, "resume_state": "{}"})
            self._create_datasets()
            if self.part is not None:
                self._handle.attrs["chunks_complete"] = 0
                self._handle.create_dataset(_PART_CHUNKS, (0, 4), np.int64, maxshape=(None, 4), chunks=(1024, 4))
        return self

    def _fresh_part(self) -> bool:
        """Whether a resumed part starts afresh: its process was stopped before it made its file."""
        if self.part is None or self.partial_path.is_file():
            return False
        check_resume_world(self.path, self.part[1])
        return self.part[1] in partial_world_sizes(self.path)

    def _create_datasets(self) -> None:
        row_bytes = self.dtype.itemsize * self.dim
        chunk_rows = min(_CHUNK_ROWS, max(1, 2**20 // row_bytes))
        self._handle.create_dataset(
            "features", (0, *self.sample_shape), self.dtype, maxshape=(None, *self.sample_shape),
            chunks=(chunk_rows, *self.sample_shape),
        )  # fmt: skip
        self._handle.create_dataset("ids", (0,), _STRING, maxshape=(None,), chunks=(chunk_rows,))
        if self.with_labels:
            self._handle.create_dataset("labels", (0,), _STRING, maxshape=(None,), chunks=(chunk_rows,))

    def _reopen_partial(self) -> None:
        partial = self.partial_path
        if not partial.is_file():
            check_resume_world(self.path, 1 if self.part is None else self.part[1])
            raise OptionError("resume", f"{{option}} found no partial file '{partial}'; run without {{option}}.")
        damaged = OptionError("resume", f"Partial file '{partial}' is damaged; delete it and run without {{option}}.")
        try:
            self._handle = h5py.File(partial, "a")
        except OSError:
            raise damaged from None
        try:
            key, rows, state = (self._handle.attrs[k] for k in ("resume_key", "rows_complete", "resume_state"))
        except KeyError:
            self._handle.close()
            raise damaged from None
        if _plain(key) != self.resume_key:
            self._handle.close()
            raise OptionError(
                "resume",
                f"Partial file '{partial}' was written from another input or with other options; "
                "delete it or run without {option}.",
            )
        self.rows, self.state = int(rows), json.loads(_plain(state))
        if self.part is not None:
            if _PART_CHUNKS not in self._handle or "chunks_complete" not in self._handle.attrs:
                self._handle.close()
                raise damaged
            self.chunks = int(self._handle.attrs["chunks_complete"])
            self._handle[_PART_CHUNKS].resize(self.chunks, axis=0)
        for name in ("features", "ids", "labels"):
            if name in self._handle:
                self._handle[name].resize(self.rows, axis=0)

    def append(
        self, ids: Any, features: np.ndarray, labels: Any = None, state: dict[str, Any] | None = None,
        chunk: tuple[int, int, int] | None = None,
    ) -> None:  # fmt: skip
        """Write one chunk of rows; a resumable writer records ``state`` with it and flushes to disk.

        A part's writer also needs ``chunk``: the input position of the chunk's first input, the
        inputs it consumed and how many of them were skipped (they have no row).
        """
        if (chunk is None) != (self.part is None):
            raise ValueError("append takes a chunk=(start, inputs, skipped) exactly when writing a part")
        n = len(ids)
        end = self.rows + n
        datasets = [self._handle[name] for name in ("features", "ids", "labels") if name in self._handle]
        for dataset in datasets:
            dataset.resize(end, axis=0)
        if n:
            self._handle["features"][self.rows : end] = np.asarray(features, dtype=self.dtype).reshape(n, *self.sample_shape)
            self._handle["ids"][self.rows : end] = [str(i) for i in ids]
            if self.with_labels:
                self._handle["labels"][self.rows : end] = ["" if label is None else str(label) for label in labels]
        self.rows = end
        if chunk is not None:
            table = self._handle[_PART_CHUNKS]
            table.resize(self.chunks + 1, axis=0)
            table[self.chunks] = [*map(int, chunk), n]
            self.chunks += 1
            self._handle.attrs["chunks_complete"] = self.chunks
        if state is not None:
            self.state = state
        if self.resume_key is not None:
            self._handle.attrs.update({"rows_complete": end, "resume_state": json.dumps(self.state)})
            self._handle.flush()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None and self.part is None:
                for name in ("resume_key", "rows_complete", "resume_state"):
                    self._handle.attrs.pop(name, None)
                self._handle.attrs.update(
                    {"dim": self.dim, "flowgmm_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}
                )
                self._handle.attrs.update({k: ("" if v is None else v) for k, v in self.attrs.items()})
        finally:
            self._handle.close()
            if self.resume_key is None:
                self._atomic.__exit__(kind, error, tb)
            elif kind is None and self.part is None:
                os.replace(self.partial_path, self.path)


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


def _check_unique(ids: np.ndarray, where: str) -> None:
    seen = pd.Index(ids)
    if seen.has_duplicates:
        first = seen[seen.duplicated()][0]
        raise InputError(f"Id '{first}' appears more than once in {where}; ids must be unique.")


# ------------------------------------------------------------------ parts of a multi-process embed
_PART_NAME = "{name}.partial.rank{rank}-of-{size}"


def part_path(path: str | os.PathLike, rank: int, size: int) -> Path:
    """The file where process ``rank`` of ``size`` keeps its rows of ``path`` until they are merged.

    Example:
        >>> part_path("out/f.h5", 1, 2).as_posix()
        'out/f.h5.partial.rank1-of-2'
    """
    target = Path(path)
    return target.with_name(_PART_NAME.format(name=target.name, rank=rank, size=size))


def partial_world_sizes(path: str | os.PathLike) -> list[int]:
    """The numbers of processes whose partial files of ``path`` are there (1 for ``PATH.partial``)."""
    import glob
    import re

    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(re.escape(target.name) + r"\.partial\.rank\d+-of-(\d+)")
    sizes = {int(match[1]) for entry in folder.glob(f"{glob.escape(target.name)}.partial.rank*") if (match := pattern.fullmatch(entry.name))}
    if target.with_name(target.name + ".partial").is_file():
        sizes.add(1)
    return sorted(sizes)


def check_resume_world(path: str | os.PathLike, size: int) -> None:
    """Refuse, naming both numbers, to resume ``path`` with ``size`` processes when only partial
    files of another number of processes are there (no partial file at all passes)."""
    found = partial_world_sizes(path)
    if not found or size in found:
        return
    counts = " or ".join(str(n) for n in found)
    how = " or ".join(f"--nproc {n}" if n > 1 else "one process" for n in found)
    raise OptionError(
        "resume",
        f"The partial files of '{path}' were written by {counts} {'process' if found == [1] else 'processes'}, not {size}; "
        f"resume with {how}, or delete them and run without {{option}}.",
    )


@dataclass(frozen=True)
class PartChunk:
    """One chunk of a multi-process embed: where its inputs are, and where its rows are in which part."""

    start: int
    inputs: int
    skipped: int
    rank: int
    first_row: int
    rows: int


def read_parts(path: str | os.PathLike, size: int) -> tuple[list[dict[str, Any]], list[PartChunk]]:
    """The resume state each of ``size`` parts of ``path`` stored, and all their chunks in input order.

    The chunks must follow each other from input 0 on without gap or overlap; otherwise the parts
    do not belong together and the error says to embed again.
    """
    states, chunks = [], []
    for rank in range(size):
        part = part_path(path, rank, size)
        with reading(part, "partial file", "delete the partial files and embed again without --resume"), h5py.File(part, "r") as handle:
            count = int(handle.attrs["chunks_complete"])
            table = handle[_PART_CHUNKS][:count]
            states.append(json.loads(_plain(handle.attrs["resume_state"])))
        first = np.concatenate([[0], np.cumsum(table[:, 3])[:-1]]) if count else []
        chunks += [PartChunk(int(s), int(i), int(k), rank, int(f), int(r)) for (s, i, k, r), f in zip(table, first)]
    chunks.sort(key=lambda chunk: chunk.start)
    position = 0
    for chunk in chunks:
        if chunk.start != position:
            raise InputError(
                f"The partial files of '{path}' do not fit together (inputs {position} to {chunk.start} are missing "
                "or written twice); delete them and embed again without --resume."
            )
        position += chunk.inputs
    return states, chunks


def merge_parts(
    path: str | os.PathLike, size: int, chunks: list[PartChunk], dim: int, attrs: dict[str, Any], with_labels: bool = False,
    *, dtype: Any = np.float32, sample_shape: tuple[int, ...] | None = None,
) -> int:  # fmt: skip
    """Write ``path`` from its ``size`` parts, chunk by chunk in input order (``chunks`` from
    :func:`read_parts`), through the usual atomic rename; then delete the parts. Returns the rows."""
    import contextlib

    parts = [part_path(path, rank, size) for rank in range(size)]
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(h5py.File(part, "r")) for part in parts]
        with FeatureWriter(path, dim, attrs, with_labels, dtype=dtype, sample_shape=sample_shape) as writer:
            for chunk in chunks:
                handle, rows = handles[chunk.rank], slice(chunk.first_row, chunk.first_row + chunk.rows)
                labels = _strings(handle["labels"][rows]) if with_labels else None
                writer.append(_strings(handle["ids"][rows]), handle["features"][rows], labels)
    for part in parts:
        part.unlink(missing_ok=True)
    return writer.rows
