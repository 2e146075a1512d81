"""Feature files (HDF5) and labels files (CSV): reading with clear errors, writing in chunks, atomically."""

from __future__ import annotations

import datetime as _dt
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import pandas as pd

from .atomic import atomic_path
from .errors import InputError

__all__ = ["FeatureFile", "FeatureWriter", "read_features", "read_labels", "align_labels"]

_STRING = h5py.string_dtype("utf-8")
_CHUNK_ROWS = 4096


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
    with h5py.File(file, "r") as handle:
        if "features" not in handle or not isinstance(handle["features"], h5py.Dataset):
            raise InputError(f"'{file}' has no /features dataset; create the file with 'flowgmm embed'.")
        dataset = handle["features"]
        if dataset.ndim != 2 or dataset.shape[0] == 0 or dataset.shape[1] == 0:
            raise InputError(f"/features in '{file}' has shape {dataset.shape}; expected a non-empty (rows, dims) matrix.")
        features = dataset[...].astype(np.float32, copy=False)
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


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read a labels CSV with columns ``id,label``; an empty label means unlabeled."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"Labels file '{file}' does not exist.")
    try:
        table = pd.read_csv(file, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"Labels file '{file}' is empty; it needs a header 'id,label' and one row per labeled id.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"Labels file '{file}' is not a readable CSV ({error}).") from None
    missing = [c for c in ("id", "label") if c not in table.columns]
    if missing:
        raise InputError(
            f"Labels file '{file}' has no '{missing[0]}' column (columns: {', '.join(table.columns)}); "
            "it needs a header 'id,label'."
        )
    _check_unique(table["id"].to_numpy(dtype=object), f"labels file '{file}'")
    return table[["id", "label"]]


def align_labels(feature_file: FeatureFile, labels: pd.DataFrame | None, labels_path: str = "", allow_missing: bool = False) -> np.ndarray:
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
        message = (
            f"{int(absent.sum())} ids in labels file '{labels_path}' are not in feature file "
            f"'{feature_file.path}', first '{first}'"
        )
        if not allow_missing:
            raise InputError(message + "; fix the ids or pass --allow-missing to ignore them.")
        print(f"Warning: {message}; ignoring them.", file=sys.stderr)
    aligned = np.full(len(feature_file.ids), "", dtype=object)
    aligned[rows[~absent]] = labels["label"].to_numpy(dtype=object)[~absent]
    return aligned


class FeatureWriter:
    """Append rows chunk by chunk to a new feature file that appears, by rename, only when complete.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "f.h5"
        >>> with FeatureWriter(out, dim=2, attrs={"extractor": "tabular"}) as writer:
        ...     writer.append(["a", "b"], np.ones((2, 2), np.float32))
        >>> read_features(out).features.shape
        (2, 2)
    """

    def __init__(self, path: str | os.PathLike, dim: int, attrs: dict[str, Any], with_labels: bool = False) -> None:
        self.path, self.dim, self.attrs, self.with_labels = Path(path), dim, attrs, with_labels
        self.rows = 0

    def __enter__(self) -> "FeatureWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._handle = h5py.File(tmp, "w")
        chunk = (min(_CHUNK_ROWS, max(1, 2**20 // (4 * self.dim))), self.dim)
        self._features = self._handle.create_dataset("features", (0, self.dim), np.float32, maxshape=(None, self.dim), chunks=chunk)
        self._ids = self._handle.create_dataset("ids", (0,), _STRING, maxshape=(None,), chunks=(chunk[0],))
        self._labels = (
            self._handle.create_dataset("labels", (0,), _STRING, maxshape=(None,), chunks=(chunk[0],)) if self.with_labels else None
        )
        return self

    def append(self, ids: Any, features: np.ndarray, labels: Any = None) -> None:
        """Write one chunk of rows."""
        n = len(features)
        end = self.rows + n
        for dataset in filter(lambda d: d is not None, (self._features, self._ids, self._labels)):
            dataset.resize(end, axis=0)
        self._features[self.rows : end] = np.asarray(features, dtype=np.float32)
        self._ids[self.rows : end] = [str(i) for i in ids]
        if self._labels is not None:
            self._labels[self.rows : end] = ["" if label is None else str(label) for label in labels]
        self.rows = end

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        from . import __version__

        try:
            if kind is None:
                self._handle.attrs.update(
                    {"dim": self.dim, "flowgmm_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}
                )
                self._handle.attrs.update({k: ("" if v is None else v) for k, v in self.attrs.items()})
        finally:
            self._handle.close()
            self._atomic.__exit__(kind, error, tb)


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
