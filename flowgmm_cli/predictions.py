"""The predictions table (``id,label,confidence,p_<class>...,log_px``) shared by ``predict`` and the demo."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .estimator import FlowGMMClassifier, log_evidence
from .stores import FeatureStream, blocks

__all__ = ["prediction_table", "write_table", "write_predictions"]


def prediction_table(estimator: FlowGMMClassifier, ids: Any, X: np.ndarray) -> pd.DataFrame:
    """One row per input row, in input order: the predicted class, its probability, every class's
    probability and ``log p(x)``, from a single pass through the flow."""
    joint = estimator.member_log_joints(X)
    log_px = log_evidence(joint)
    log_proba = estimator.log_proba_from_joint(joint)
    proba = np.exp(log_proba)
    classes = [str(c) for c in estimator.classes_]
    columns: dict[str, Any] = {
        "id": np.asarray(ids),
        "label": np.array(classes, dtype=object)[proba.argmax(axis=1)],
        "confidence": proba.max(axis=1),
    }
    columns.update({f"p_{name}": proba[:, k] for k, name in enumerate(classes)})
    columns["log_px"] = log_px
    return pd.DataFrame(columns)


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write CSV to ``path`` atomically, or to standard output when ``path`` is ``-``."""
    if str(path) == "-":
        frame.to_csv(sys.stdout, index=False, float_format="%.6g")
        return
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def write_predictions(estimator: FlowGMMClassifier, stream: FeatureStream, path: str | os.PathLike) -> int:
    """Predict every row of a feature file block by block and write the table as it goes (to
    ``path`` atomically, or to standard output for ``-``); memory stays bounded for any file.

    Returns the number of rows written.
    """
    if str(path) == "-":
        return _write_blocks(estimator, stream, sys.stdout)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        return _write_blocks(estimator, stream, handle)


def _write_blocks(estimator: FlowGMMClassifier, stream: FeatureStream, handle: Any) -> int:
    for rows, x in blocks(stream):
        frame = prediction_table(estimator, stream.ids(int(rows[0]), int(rows[-1]) + 1), x.numpy())
        frame.to_csv(handle, index=False, header=rows[0] == 0, float_format="%.6g")
    return stream.n_rows
