"""The ``tabular`` extractor: the numeric columns of a CSV become the features, read in chunks."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from flowgmm_cli.errors import InputError
from flowgmm_cli.features import FeatureWriter

from .base import EmbedRequest
from .csv_input import CsvSource

__all__ = ["TabularExtractor"]

_CHUNK_ROWS = 8192


class TabularExtractor:
    """Every numeric column other than the id and label columns becomes a feature, in column order."""

    name = "tabular"
    description = "numeric CSV columns as features (no model)"
    dim = None

    def weights_status(self) -> str:
        return "none needed"

    def embed(self, request: EmbedRequest) -> int:
        source = CsvSource(request.source, request.options.get("encoding", "utf-8"), _CHUNK_ROWS)
        chunks = source.chunks({}, request.id_column, request.label_column)
        first = next(chunks)
        feature_columns = [c for c in first.frame.columns if c not in (request.id_column, request.label_column)]
        if not feature_columns:
            raise InputError(f"CSV '{source.label}' has no feature columns besides the id and label columns.")
        attrs = {"extractor": self.name, "model": "", "pooling": "", "columns": feature_columns, "units": "per-column"}
        with FeatureWriter(request.output, len(feature_columns), attrs, with_labels=bool(request.label_column)) as writer:
            for chunk in itertools.chain([first], chunks):
                writer.append(chunk.ids, _numeric(chunk.frame[feature_columns], chunk.ids, source.label), chunk.labels)
            attrs["source_sha256"] = source.sha256()
        return writer.rows


def _numeric(frame: pd.DataFrame, ids: np.ndarray, label: str) -> np.ndarray:
    """The feature columns as float32, with an error naming the first bad column and row."""
    converted = frame.apply(pd.to_numeric, errors="coerce")
    stripped = frame.apply(lambda col: col.str.strip().str.lower())
    blank = (stripped == "").to_numpy(dtype=bool)
    nan_text = stripped.isin(["nan", "-nan", "+nan"]).to_numpy(dtype=bool)
    not_number = converted.isna().to_numpy(dtype=bool) & ~nan_text & ~blank
    if not_number.any():
        position = int(np.flatnonzero(not_number.any(axis=0))[0])
        column = frame.columns[position]
        row = int(np.flatnonzero(not_number[:, position])[0])
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
