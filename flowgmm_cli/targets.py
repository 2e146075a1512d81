"""Class targets in the library API: class values per row, ``-1`` for an unlabeled row (as in
``sklearn.semi_supervised``), encoded once into class codes; the one check of "two classes".

Files spell "unlabeled" as an empty label; their readers (``features.align_labels``,
``stores.stream_labeled_rows``) hand on the labeled rows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["UNLABELED", "unlabeled_mask", "encode_targets", "require_classes"]

#: The label of an unlabeled row in the library API.
UNLABELED = -1


def unlabeled_mask(y: np.ndarray) -> np.ndarray:
    """Rows marked ``-1`` (as a number or, in object arrays beside string classes, the integer -1)."""
    if y.dtype == object:
        return np.array([isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v == UNLABELED for v in y], dtype=bool)
    return y == UNLABELED


def require_classes(classes: Sequence[Any], source: str = "y", task: str = "FlowGMM") -> None:
    """Raise :class:`InputError` unless ``classes`` (the distinct labeled classes) number at least two.

    ``source`` names where the labels came from, ``task`` what needs them.

    Example:
        >>> require_classes(["a"], "labels file 'l.csv'")
        Traceback (most recent call last):
        ...
        flowgmm_cli.errors.InputError: FlowGMM needs labeled rows of at least 2 classes, but labels file 'l.csv' has only class 'a'; label rows of another class (-1 or an empty label marks an unlabeled row).
    """
    if len(classes) >= 2:
        return
    found = f"only class '{classes[0]}'" if len(classes) else "no labeled rows"
    raise InputError(
        f"{task} needs labeled rows of at least 2 classes, but {source} has {found}; "
        "label rows of another class (-1 or an empty label marks an unlabeled row)."
    )


def encode_targets(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, codes)``: the sorted labeled classes and each row's index among them, -1 if unlabeled.

    Example:
        >>> classes, codes = encode_targets(np.array(["b", -1, "a", "b"], dtype=object))
        >>> classes.tolist(), codes.tolist()
        (['a', 'b'], [1, -1, 0, 1])
    """
    y = np.asarray(y, dtype=object) if np.asarray(y).dtype.kind in "OUS" else np.asarray(y)
    from sklearn.utils.multiclass import check_classification_targets  # scikit-learn takes a second to import

    unlabeled = unlabeled_mask(y)
    check_classification_targets(y[~unlabeled])
    classes = np.unique(y[~unlabeled])
    require_classes(classes.tolist())
    codes = np.full(len(y), UNLABELED, dtype=np.int64)
    codes[~unlabeled] = np.searchsorted(classes, y[~unlabeled])
    return classes, codes
