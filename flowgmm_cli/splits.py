"""Seeded stratified draws of labeled rows: a fixed number per class, a total split by class share,
a share of each class held out for validation, or folds for cross-fitting."""

from __future__ import annotations

import numpy as np

from .errors import OptionError

__all__ = ["pick_labeled", "stratified_counts", "stratified_subset", "hold_out", "stratified_folds"]


def pick_labeled(y: np.ndarray, per_class: int, seed: int = 0, names: list[str] | None = None) -> np.ndarray:
    """Indices of ``per_class`` random rows of each class, grouped by class.

    Raises :class:`OptionError` when a class has fewer rows, naming it as ``names[class]`` when
    given (``y`` then holds class codes), else by its value in ``y``.

    Example:
        >>> pick_labeled(np.array([0, 0, 0, 1, 1, 1]), 2, seed=0).shape
        (4,)
    """
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < per_class:
        scarce = classes[counts.argmin()]
        name = names[int(scarce)] if names is not None else scarce
        raise OptionError("n_labeled", f"Class '{name}' has {counts.min()} labeled rows in the pool; {{option}} {per_class} per class needs as many.")
    return _draw(y, classes, np.full(len(classes), per_class), seed)


def stratified_subset(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` random rows whose class shares follow ``y``'s, at least one row per class.

    The same ``seed`` gives the same rows; rows are grouped by class, as :func:`pick_labeled`
    (with which it coincides when ``n`` divides evenly over balanced classes).

    Example:
        >>> y = np.array([0] * 6 + [1] * 3)
        >>> np.bincount(y[stratified_subset(y, 6, seed=0)]).tolist()
        [4, 2]
    """
    classes, counts = np.unique(y, return_counts=True)
    return _draw(y, classes, stratified_counts(counts, n), seed)


def stratified_counts(counts: np.ndarray, n: int) -> np.ndarray:
    """How many of ``n`` rows each class gets: its share of ``counts``, rounded by largest remainder, at least 1.

    Raises :class:`InputError` when ``n`` is fewer than the classes or more than the rows.

    Example:
        >>> stratified_counts(np.array([50, 30, 20]), 7).tolist()
        [4, 2, 1]
    """
    counts = np.asarray(counts, dtype=np.int64)
    if n > counts.sum():
        raise OptionError("n_labeled", f"Asked for {n} labeled rows but only {counts.sum()} rows have labels; lower {{option}} or label more rows.")
    if n < len(counts):
        raise OptionError(
            "n_labeled",
            f"Asked for {n} labeled rows but there are {len(counts)} classes; a stratified draw needs at least one row "
            "per class, so raise {option}.",
        )
    quota = n * counts / counts.sum()
    take = np.minimum(np.maximum(np.floor(quota), 1), counts).astype(np.int64)
    while take.sum() < n:  # the largest shortfall first, among classes with rows left
        take[np.argmax(np.where(take < counts, quota - take, -np.inf))] += 1
    while take.sum() > n:  # only when the minimum of one row pushed the total over
        take[np.argmin(np.where(take > 1, quota - take, np.inf))] -= 1
    return take


def _draw(y: np.ndarray, classes: np.ndarray, take: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == k), m, replace=False) for k, m in zip(classes, take, strict=True)])


def hold_out(codes: np.ndarray, fraction: float, seed: int, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(training, validation)`` indices of the labeled rows (``codes >= 0``): ``fraction`` of each
    class's rows, rounded up, held out, at least one row of each class kept for training.

    Example:
        >>> train, val = hold_out(np.array([0, 0, 0, 1, 1, -1]), 0.3, 0, np.array(["a", "b"]))
        >>> len(train), len(val)
        (3, 2)
    """
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for code, name in enumerate(classes):
        rows = rng.permutation(np.flatnonzero(codes == code))
        n_val = int(np.ceil(fraction * len(rows)))
        if n_val >= len(rows):
            raise OptionError(
                "val_fraction",
                f"Class '{name}' has no labeled row left after the validation split ({len(rows)} labeled); "
                "lower {option} or label more rows of it.",
            )
        val_parts.append(rows[:n_val])
        train_parts.append(rows[n_val:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def stratified_folds(codes: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0 to ``folds`` − 1) of each labeled row, each class's rows dealt round-robin in a
    seeded order from a seeded first fold, so folds differ in size by at most one row per class;
    ``-1`` for the rows of a class with a single labeled row, which no fold may take from training.

    Example:
        >>> stratified_folds(np.array([0, 0, 0, 0, 1, 1, 2]), 2, seed=0).tolist()
        [1, 0, 0, 1, 0, 1, -1]
    """
    rng = np.random.default_rng(seed)
    assigned = np.full(len(codes), -1, dtype=np.int64)
    for code in np.unique(codes):
        rows = rng.permutation(np.flatnonzero(codes == code))
        if len(rows) > 1:
            assigned[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds
    return assigned
