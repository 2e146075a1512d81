"""Choosing the projection's size with the labels: each candidate's calibration fits, compared by
the held-out labels' NLL at their own fitted temperature, the fewest directions kept unless more
predict clearly better (by more than one standard error: the "one-standard-error rule" of
cross-validation).

How many principal directions the flow needs does not follow from the data's shape or variance
(:func:`~flowgmm_cli.defaults.projection_candidates`), but the calibration fits already hide folds
of the labels. Run for each candidate size, they say which size predicts hidden labels best, and
the winner's scores are then the first member's calibration scores, so its temperature costs
nothing more. The short fits are noisy judges (on MNIST pixels they once favoured 64 directions
by 0.07 ± 0.08 nats, where the full model lost 2.7 points with them), hence the rule. With two
or more CPU threads the candidates' fits are spread over worker processes
(:func:`~flowgmm_cli.crossfit.run_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .calibration import held_out_losses
from .crossfit import run_fits
from .fits import FoldJob, fold_fits, fold_scores
from .factory import prepare
from .options import TrainOptions
from .stores import RowStore
from .training import TrainingCallback
from .transforms import TransformChain

__all__ = ["ProjectionChoice", "choose_projection", "pick_within_one_standard_error"]


@dataclass
class ProjectionChoice:
    """The chosen candidate's transform, resolved options and held-out scores (``log p(x, y=k)`` of
    the scored labeled rows and their codes), and the evidence: each candidate size, the mean
    held-out NLL of its fits, and the standard error of its mean difference from the lowest."""

    transform: TransformChain
    options: TrainOptions
    scores: tuple[np.ndarray, np.ndarray]
    evidence: dict[str, list]


def choose_projection(
    rows: RowStore, labeled: np.ndarray, codes: np.ndarray, n_classes: int, sizes: tuple[int, ...], options: TrainOptions,
    class_counts: np.ndarray, callback: TrainingCallback | None = None, lanes: int = 1,
    prepared: tuple[TransformChain, TrainOptions] | None = None,
) -> ProjectionChoice:  # fmt: skip
    """The fewest directions among ``sizes`` whose calibration fits' held-out NLL is within one
    standard error of the lowest (:func:`pick_within_one_standard_error`), with everything the
    model's fit needs at that size.

    ``options`` are the user's (``projection_dim`` unset); each candidate's transform and options
    are chosen as :func:`~flowgmm_cli.factory.prepare` would for it, on the labeled rows
    ``labeled`` (indices into ``rows``) with classes ``codes``; ``lanes``: how many processes
    the fits may use (:func:`~flowgmm_cli.crossfit.run_fits`); ``prepared``: one size's transform and options,
    already computed (a pass over the rows fewer where they are streamed from a file).
    """
    n_labeled, n_unlabeled = len(labeled), rows.n_rows - len(labeled)
    known = {} if prepared is None else {prepared[1].projection_dim: prepared}
    candidates = [known.get(size) or prepare(rows, n_labeled, n_unlabeled, replace(options, projection_dim=size), class_counts) for size in sizes]
    jobs = [FoldJob(rows, transform, n_classes, labeled, codes, resolved) for transform, resolved in candidates]
    fits = [fit for size, job in zip(sizes, jobs) for fit in fold_fits(job, f"{size} principal directions, ")]
    results = run_fits(fits, callback, lanes)
    scores = [fold_scores(job, fits, results) for job in jobs]
    losses = [held_out_losses(*scores[index]) for index in range(len(sizes))]
    chosen, evidence = pick_within_one_standard_error(losses, sizes)
    transform, resolved = candidates[chosen]
    return ProjectionChoice(transform, resolved, scores[chosen], evidence)


def pick_within_one_standard_error(losses: list[np.ndarray], sizes: tuple[int, ...]) -> tuple[int, dict[str, list]]:
    """The index of the smallest size whose mean loss exceeds the lowest mean by at most the
    standard error of its rows' paired differences from it, and the evidence: sizes, mean losses,
    those standard errors (0 for the lowest). The losses are of the same rows in the same order.

    Example:
        >>> lowest, close = np.array([0.2, 0.4, 0.3, 0.5]), np.array([0.3, 0.3, 0.4, 0.5])
        >>> pick_within_one_standard_error([close, lowest], (32, 64))[0]   # 0.025 more, ± 0.048: the smaller
        0
        >>> pick_within_one_standard_error([close + 0.2, lowest], (32, 64))[0]
        1
    """
    means = [float(np.mean(loss)) for loss in losses]
    best = int(np.argmin(means))
    errors = [_standard_error(loss - losses[best]) for loss in losses]
    chosen = min((index for index in range(len(sizes)) if means[index] - means[best] <= errors[index]), key=lambda index: sizes[index])
    evidence = {"sizes": [int(size) for size in sizes], "held_out_nll": [round(m, 4) for m in means], "standard_error": [round(e, 4) for e in errors]}
    return chosen, evidence


def _standard_error(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
