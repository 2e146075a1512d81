"""The ``tabular`` extractor: the numeric columns of a CSV become the features, read in chunks."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from flowgmm_cli.errors import InputError
from flowgmm_cli.features import FeatureWriter

from . import EmbedRequest

__all__ = ["TabularExtractor"]

_CHUNK_ROWS = 50_000


class TabularExtractor:
    """Every numeric column other than the id and label columns becomes a feature, in column order."""

    name = "tabular"
    description = "numeric CSV columns as features (no model)"

    def embed(self, request: EmbedRequest) -> int:
        stream, digest, label = _open_source(request.source)
        try:
            chunks = pd.read_csv(stream, dtype=str, keep_default_na=False, chunksize=_CHUNK_ROWS)
            first = next(chunks, None)
        except pd.errors.EmptyDataError:
            raise InputError(f"CSV '{label}' is empty; it needs a header row and at least one data row.") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise InputError(f"CSV '{label}' could not be parsed ({error}).") from None
        if first is None or first.empty:
            raise InputError(f"CSV '{label}' has a header but no data rows.")
        columns = list(first.columns)
        if request.label_column and request.label_column not in columns:
            raise InputError(f"CSV '{label}' has no label column '{request.label_column}' (columns: {', '.join(columns)}).")
        has_id = request.id_column in columns
        feature_columns = [c for c in columns if c not in (request.id_column, request.label_column)]
        if not feature_columns:
            raise InputError(f"CSV '{label}' has no feature columns besides the id and label columns.")
        attrs = {"extractor": self.name, "model": "", "pooling": "", "source_sha256": digest, "columns": feature_columns}
        seen: set[str] = set()
        start = 0
        with FeatureWriter(request.output, len(feature_columns), attrs, with_labels=bool(request.label_column)) as writer:
            for chunk in _chain(first, chunks):
                ids = chunk[request.id_column].to_numpy(dtype=object) if has_id else np.arange(start, start + len(chunk)).astype(str)
                _check_ids(ids, seen, label)
                values = _numeric(chunk[feature_columns], ids, label)
                labels = chunk[request.label_column].to_numpy(dtype=object) if request.label_column else None
                writer.append(ids, values, labels)
                start += len(chunk)
        return start


def _open_source(source: str) -> tuple[IO[bytes], str, str]:
    """A binary stream of the CSV, the SHA-256 of its bytes and a name for messages."""
    if source == "-":
        data = sys.stdin.buffer.read()
        return io.BytesIO(data), hashlib.sha256(data).hexdigest(), "<stdin>"
    path = Path(source)
    if not path.is_file():
        raise InputError(f"Input CSV '{path}' does not exist.")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return path.open("rb"), digest.hexdigest(), str(path)


def _chain(first: pd.DataFrame, rest):
    yield first
    try:
        yield from rest
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"CSV could not be parsed ({error}).") from None


def _check_ids(ids: np.ndarray, seen: set[str], label: str) -> None:
    for value in ids:
        if value in seen:
            raise InputError(f"Id '{value}' appears more than once in CSV '{label}'; ids must be unique.")
        seen.add(value)


def _numeric(frame: pd.DataFrame, ids: np.ndarray, label: str) -> np.ndarray:
    """The feature columns as float32, with an error naming the first bad column and row."""
    converted = frame.apply(pd.to_numeric, errors="coerce")
    blank = frame.apply(lambda col: col.str.strip() == "")
    not_number = converted.isna() & ~frame.apply(lambda col: col.str.strip().str.lower().isin(["nan", "-nan", "+nan"])) & ~blank
    if not_number.to_numpy().any():
        column = not_number.any(axis=0).idxmax()
        row = int(np.flatnonzero(not_number[column].to_numpy())[0])
        raise InputError(
            f"Column '{column}' of CSV '{label}' is not numeric (row id '{ids[row]}' has "
            f"'{frame[column].iloc[row]}'); drop the column or convert it to numbers."
        )
    values = converted.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise InputError(
            f"CSV '{label}' has a missing, NaN or infinite value at row id '{ids[row]}', column "
            f"'{frame.columns[col]}'; fill or drop such rows first."
        )
    return values.astype(np.float32)
