"""FlowGMM against the paper's baselines on the same splits: seeds × methods, timing, median ± MAD (Table 1)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from .errors import InputError, OptionError
from .splits import pick_labeled, stratified_subset
from .targets import UNLABELED, require_classes

if TYPE_CHECKING:
    from .baselines import Method

__all__ = [
    "TITLES",
    "FlowGMMMethod",
    "default_methods",
    "select_methods",
    "BenchmarkData",
    "load_benchmark_data",
    "Split",
    "draw_split",
    "default_standardize",
    "standardize_split",
    "score_run",
    "median_mad",
    "run_benchmark",
    "format_table",
    "limited_threads",
    "RunCallback",
]

#: Method names in table order, with the row title the table prints.
TITLES = {
    "knn": "kNN (k by leave-one-out)",
    "logistic-regression": "logistic regression",
    "mlp": "3-layer MLP + dropout",
    "label-spreading-knn": "label spreading (kNN)",
    "label-spreading-rbf": "label spreading (RBF)",
    "pi-model": "Π-model",
    "flowgmm": "FlowGMM",
}


@dataclass
class FlowGMMMethod:
    """:class:`FlowGMMClassifier` on labeled and unlabeled rows; ``options`` override its defaults."""

    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    units: str | None = None
    """The feature file's ``units`` attribute, for the default scaling."""
    image_shape: tuple[int, int, int] | None = None
    """``(C, H, W)`` when the rows are images of pixel values: FlowGMM then fits them with the image flow."""

    def fit_predict(self, X_labeled: np.ndarray, y_labeled: np.ndarray, X_unlabeled: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
        return self.fit_predict_proba(X_labeled, y_labeled, X_unlabeled, X_test, seed).argmax(axis=1)

    def fit_predict_proba(self, X_labeled: np.ndarray, y_labeled: np.ndarray, X_unlabeled: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
        """Class probabilities of the test rows, columns in the order of ``np.unique(y_labeled)``."""
        from .estimator import FlowGMMClassifier

        X = np.concatenate([X_labeled, X_unlabeled])
        y = np.concatenate([y_labeled, np.full(len(X_unlabeled), UNLABELED, dtype=y_labeled.dtype)])
        if self.image_shape is not None:
            X, X_test = X.reshape(len(X), *self.image_shape), X_test.reshape(len(X_test), *self.image_shape)
        return FlowGMMClassifier(random_state=seed, device=self.device, **self.options).fit(X, y, units=self.units).predict_proba(X_test)


def default_methods(device: str = "cpu", units: str | None = None, image_shape: tuple[int, int, int] | None = None) -> dict[str, Method]:
    """Every method of :data:`TITLES` with its benchmark settings; torch ones run on ``device``,
    FlowGMM told the features' ``units`` and, for pixels, the images' shape (the image flow)."""
    from .baselines import KNN, MLP, LabelSpreadingBaseline, LogisticRegressionBaseline, PiModel

    return {
        "knn": KNN(),
        "logistic-regression": LogisticRegressionBaseline(),
        "mlp": MLP(device=device),
        "label-spreading-knn": LabelSpreadingBaseline("knn"),
        "label-spreading-rbf": LabelSpreadingBaseline("rbf"),
        "pi-model": PiModel(device=device),
        "flowgmm": FlowGMMMethod(device=device, units=units, image_shape=image_shape),
    }


def select_methods(spec: str) -> list[str]:
    """Method names from ``"all"`` or a comma-separated list, in table order; unknown names are an :class:`InputError`.

    Example:
        >>> select_methods("flowgmm, knn")
        ['knn', 'flowgmm']
    """
    if spec.strip() == "all":
        return list(TITLES)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in TITLES]
    if unknown or not names:
        raise OptionError("methods", f"Unknown method '{unknown[0] if unknown else spec}' in {{option}}; use 'all' or a comma-separated list of: {', '.join(TITLES)}.")
    return [name for name in TITLES if name in names]


@dataclass
class BenchmarkData:
    """A pool (labeled and unlabeled rows) and labeled test rows; labels are codes into ``classes``, -1 = none."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    units: str | None = None
    """The pool file's ``units`` attribute (see :data:`flowgmm_cli.features.UNITS`)."""
    image_shape: tuple[int, int, int] | None = None
    """``(C, H, W)`` when the pool's rows are images of uint8 pixels (:func:`~flowgmm_cli.stores.image_shape_of`)."""


def load_benchmark_data(features: Path, labels: Path | None, test: Path, test_labels: Path | None) -> BenchmarkData:
    """Read and check the pool and test files: labels from the CSVs or else the files' own /labels.

    The pool needs labeled rows of at least two classes; every test row needs a label of one of
    those classes, and the test features the pool's dimension.
    """
    from .features import align_labels, check_dim, read_features, read_labels
    from .stores import FeatureStream

    pool = read_features(features)
    names = align_labels(pool, read_labels(labels) if labels else None, str(labels))
    classes = sorted(set(names[names != ""]))
    require_classes(classes, f"labels file '{labels}'" if labels else f"the /labels of '{features}'")
    test_file = read_features(test)
    check_dim(test_file, pool.dim, f"the features '{features}'")
    test_names = align_labels(test_file, read_labels(test_labels) if test_labels else None, str(test_labels))
    missing = np.flatnonzero(test_names == "")
    if len(missing):
        raise OptionError(
            "test_labels",
            f"{len(missing)} test rows of '{test}' have no label, first id '{test_file.ids[missing[0]]}'; "
            "pass {option} with a label for every test row.",
        )
    unknown = sorted(set(test_names) - set(classes))
    if unknown:
        raise InputError(f"Test label '{unknown[0]}' is not among the pool's labeled classes ({', '.join(classes)}); label some pool rows of it.")
    code = {name: k for k, name in enumerate(classes)}
    y = np.array([code.get(name, UNLABELED) for name in names], dtype=np.int64)
    return BenchmarkData(pool.features, y, test_file.features, np.array([code[name] for name in test_names], dtype=np.int64), classes,
                         str(pool.attrs.get("units") or "") or None, FeatureStream(features).image_shape)  # fmt: skip


@dataclass
class Split:
    """One seed's rows: the labeled draw, the rest of the pool unlabeled, and the test rows."""

    X_labeled: np.ndarray
    y_labeled: np.ndarray
    X_unlabeled: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def draw_split(data: BenchmarkData, n_labeled: int, seed: int, per_class: bool = False) -> Split:
    """A stratified draw of ``n_labeled`` of the pool's labeled rows (class shares as in the pool),
    or with ``per_class`` of ``n_labeled`` rows of each class (the usual protocol for imbalanced
    classes: a rare class gets as many labels as the others); every other pool row is unlabeled."""
    has_label = np.flatnonzero(data.y != UNLABELED)
    if per_class:
        chosen = has_label[pick_labeled(data.y[has_label], n_labeled, seed, data.classes)]
    else:
        chosen = has_label[stratified_subset(data.y[has_label], n_labeled, seed)]
    rest = np.ones(len(data.y), dtype=bool)
    rest[chosen] = False
    return Split(data.X[chosen], data.y[chosen], data.X[rest], data.X_test, data.y_test)


def default_standardize(units: str | None) -> bool:
    """Whether the baselines get standardised features by default: for a table (``units="per-column"``).

    Each column of a table has its own unit, so unscaled distances and weights follow whichever
    column has the largest numbers, a handicap FlowGMM does not share (it scales each column
    inside its model). Features in one unit (embeddings, pixels) keep their scale: the baselines
    do better on them as they are.
    """
    return units == "per-column"


def standardize_split(split: Split) -> Split:
    """Every part scaled with the pool's (labeled + unlabeled rows') mean and standard deviation, as FlowGMM does.

    So every method sees the same inputs; constant features keep a scale of 1.
    """
    pool = np.concatenate([split.X_labeled, split.X_unlabeled]).astype(np.float64)
    mean, std = pool.mean(axis=0), pool.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)

    def scale(X: np.ndarray) -> np.ndarray:
        return ((X - mean) / std).astype(np.float32)

    return replace(split, X_labeled=scale(split.X_labeled), X_unlabeled=scale(split.X_unlabeled), X_test=scale(split.X_test))


def score_run(method: Method, split: Split, seed: int) -> tuple[float, float, float | None]:
    """Fit ``method`` on ``split`` and predict its test rows: (accuracy in percent, wall seconds,
    expected calibration error for a method with ``fit_predict_proba``, else ``None``)."""
    from .metrics import expected_calibration_error

    start = time.perf_counter()
    proba = None
    if hasattr(method, "fit_predict_proba"):
        proba = method.fit_predict_proba(split.X_labeled, split.y_labeled, split.X_unlabeled, split.X_test, seed)
        predicted = np.unique(split.y_labeled)[proba.argmax(axis=1)]
    else:
        predicted = method.fit_predict(split.X_labeled, split.y_labeled, split.X_unlabeled, split.X_test, seed)
    seconds = time.perf_counter() - start
    ece = None
    if proba is not None:
        full = np.zeros((len(proba), int(max(split.y_test.max(), split.y_labeled.max())) + 1))
        full[:, np.unique(split.y_labeled)] = proba
        ece = expected_calibration_error(full, split.y_test)
    return 100.0 * float(np.mean(np.asarray(predicted) == split.y_test)), seconds, ece


def median_mad(values: list[float]) -> tuple[float, float]:
    """The median and the median absolute deviation from it (unscaled), as in the paper's Table 1.

    Example:
        >>> median_mad([1.0, 2.0, 3.0, 4.0, 100.0])
        (3.0, 1.0)
    """
    median = float(np.median(values))
    return median, float(np.median(np.abs(np.asarray(values) - median)))


class RunCallback(Protocol):
    """Told when each fit starts and ends (for a progress display)."""

    def start(self, method: str, seed: int) -> None: ...

    def done(self, method: str, seed: int, accuracy: float, seconds: float) -> None: ...


def run_benchmark(
    data: BenchmarkData,
    methods: dict[str, Method],
    n_labeled: int,
    seeds: int,
    on_run: RunCallback | None = None,
    standardize: bool | None = None,
    first_seed: int = 0,
    per_class: bool = False,
) -> dict[str, Any]:
    """Every method on the splits of seeds ``first_seed`` to ``first_seed + seeds - 1``; the report
    ``flowgmm benchmark --json`` prints.

    With ``standardize`` every method gets :func:`standardize_split`'s features; without, the
    features as they are (FlowGMM standardises inside its model either way); ``None`` follows the
    data's units (:func:`default_standardize`). With ``per_class``, ``n_labeled`` rows of each class
    are drawn (:func:`draw_split`). ``on_run`` hears of each fit. ``seconds`` in a
    result is the median wall time of one fit and prediction.
    """
    standardize = default_standardize(data.units) if standardize is None else standardize
    accuracies: dict[str, list[float]] = {name: [] for name in methods}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    eces: dict[str, list[float]] = {name: [] for name in methods}
    for seed in range(first_seed, first_seed + seeds):
        split = draw_split(data, n_labeled, seed, per_class)
        split = standardize_split(split) if standardize else split
        for name, method in methods.items():
            if on_run is not None:
                on_run.start(name, seed)
            accuracy, elapsed, ece = score_run(method, split, seed)
            accuracies[name].append(round(accuracy, 4))
            if ece is not None:
                eces[name].append(round(ece, 4))
            seconds[name].append(elapsed)
            if on_run is not None:
                on_run.done(name, seed, accuracy, elapsed)
    results = []
    for name in methods:
        median, mad = median_mad(accuracies[name])
        results.append({"method": name, "median": round(median, 4), "mad": round(mad, 4), "runs": accuracies[name], "seconds": round(float(np.median(seconds[name])), 3)})
        if eces[name]:
            results[-1]["ece"] = round(float(np.median(eces[name])), 4)
            results[-1]["ece_runs"] = eces[name]
    drawn = n_labeled * len(data.classes) if per_class else n_labeled
    return {"results": results, "n_labeled": drawn, "n_unlabeled": len(data.y) - drawn, "n_test": len(data.y_test), "seeds": seeds}


def format_table(report: dict[str, Any], n_classes: int) -> str:
    """The report as a Table 1-style text table: median ± MAD accuracy, the runs, seconds per run."""
    header = (
        f"{report['n_labeled']} labeled / {report['n_unlabeled']} unlabeled rows, {n_classes} classes, "
        f"{report['n_test']} test rows; median ± MAD test accuracy (%) over {report['seeds']} seeds"
    )
    lines = [header, f"{'method':<26}{'accuracy':>14}  {'s/run':>7}  runs"]
    for row in report["results"]:
        accuracy = f"{row['median']:.1f} ± {row['mad']:.1f}"
        runs = ", ".join(f"{r:.1f}" for r in row["runs"])
        lines.append(f"{TITLES[row['method']]:<26}{accuracy:>14}  {row['seconds']:>7.1f}  {runs}")
    return "\n".join(lines)


@contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """Run torch, BLAS and OpenMP with at most ``threads`` threads, restoring torch's setting after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)
