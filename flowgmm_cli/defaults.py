"""Defaults that adapt to the data: architecture, noise, loss weight and schedule from its size and shape.

Every rule here was chosen on validation rows (the unlabeled pool rows of digits splits with seeds
1000-1001, two moons / pinwheel with seed 0, and 1,000 AG News pool rows outside the labeled draw),
never on the test rows that BENCHMARKS.md reports; every value can be overridden. The two regimes:

- low-dimensional data (at most :data:`LOW_DIM` features, e.g. the paper's 2-D sets) needs
  expressive couplings (each sees few inputs) and trusts the unlabeled density fully (the paper's
  loss weight 1);
- higher-dimensional data does better with a down-weighted unlabeled term and noisy labeled rows;
  its flow is as wide as the low-dimensional one where there are many rows per dimension
  (:data:`DENSE_ROWS_PER_DIM`), and narrower where there are few (digits: 1,297 rows in 64-D).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .errors import OptionError
from .options import FlowKind, Precision, Scaling, TrainOptions

__all__ = [
    "resolve_input",
    "resolve",
    "LOW_DIM",
    "DENSE_ROWS_PER_DIM",
    "DEFAULT_HIDDEN_LAYERS",
    "DEFAULT_VARIANCE",
    "is_dense",
    "default_hidden",
    "default_coupling_layers",
    "default_unlabeled_weight",
    "default_means_separation",
    "default_labeled_noise",
    "default_perturbation",
    "default_batch_sizes",
    "default_epochs",
    "steps_per_epoch",
    "default_projection_dim",
    "projection_candidates",
    "ACTIVATION_PROJECTION_DIM",
    "PROJECTION_CANDIDATES",
    "default_scaling",
    "default_power_transform",
    "default_square_root",
    "has_long_tail",
    "EXPONENTIAL_TAIL",
    "default_classification_weight",
    "default_learn_weights",
    "default_members",
    "ENSEMBLE_MEMBERS",
    "ENSEMBLE_MIN_CLASSES",
    "CONSISTENCY_WEIGHT",
    "PERTURBATION_SHARE",
    "default_calibration_folds",
    "calibration_epochs",
    "CALIBRATION_FOLDS",
    "CALIBRATION_STEP_SHARE",
    "CALIBRATION_MIN_STEPS",
    "CALIBRATION_LEAST_STEPS",
]

#: At most this many features counts as low-dimensional.
LOW_DIM = 8
#: Optimiser steps of a default run: at most this many ...
TARGET_STEPS = 3000
#: ... and, above :data:`LOW_DIM` features, fewer where that is more than :data:`ENOUGH_EPOCHS`
#: passes over the unlabeled rows, but not under this many.
MIN_STEPS = 1500
ENOUGH_EPOCHS = 120
#: Hidden layers per s/t network; one beat two on digits (83.2 vs 82.4 validation accuracy).
DEFAULT_HIDDEN_LAYERS = 1
#: Component variance σ²; 1.72 (the paper's tabular code's effective value) beat the paper's 1 on digits.
DEFAULT_VARIANCE = 1.72
#: Labeled-row noise in units of the median nearest-neighbour distance per √dimension.
NOISE_PER_NEIGHBOUR_DISTANCE = 1.2


#: Above this many features the flow models only the top principal directions ...
PROJECT_ABOVE = 64
#: ... this many of them when nothing chooses among :data:`PROJECTION_CANDIDATES` (no calibration
#: fits). On AG News validation rows (MiniLM, 384-D, 200 labels) 32 matched all 384 (85.2-86.5%
#: against 85.5-86.0%) at a twentieth of the time, and beat 16, 24, 48 and 64.
PROJECTION_DIM = 32
#: The sizes the calibration fits choose among (:func:`projection_candidates`). No one size serves:
#: EfficientNet-Lite0 features of MNIST digits (an outside check, 100 labels) gain 5 points at 64
#: against 32. 128 is not offered: it gains there too, but MNIST pixels lose 4-8 points with it
#: (validation rows) and the short calibration fits favoured it on one of two such draws; with
#: 128 among the candidates they moved one MNIST-pixel validation draw of four from 32 to 64 (2.7
#: points lost) and kept 32 on one Lite0 draw where it costs 6.
PROJECTION_CANDIDATES = (32, 64)
#: Principal directions for square-rooted features (pooled CNN activations, :func:`default_square_root`),
#: without a choice. A pretrained network's pooled activations spread the classes over many
#: directions: validation rows of both Lite0 image cases (100 labels, one flow each, medians of
#: four draws), 32 / 64 / 128 directions: digit images 82.0 / 86.5 / 87.5, MNIST images 82.25 /
#: 85.83 / 87.75, 128 ahead of 64 on all eight draws. The calibration fits cannot tell these sizes
#: apart reliably at 10 labels per class (above), so the size follows from the kind of features.
ACTIVATION_PROJECTION_DIM = 128


def default_projection_dim(dim: int, n_rows: int, square_root: bool = False) -> int:
    """Principal directions for the flow above :data:`PROJECT_ABOVE` features (else 0, all):
    :data:`ACTIVATION_PROJECTION_DIM` for ``square_root`` features, else :data:`PROJECTION_DIM`;
    at most ``n_rows - 1``, and 0 where that would keep every feature.

    Text and image embeddings (hundreds of dimensions, a few thousand rows) give a flow on every
    dimension far more parameters than rows; their class structure lives in the leading directions.

    Example:
        >>> default_projection_dim(384, 5_000), default_projection_dim(1_280, 5_000, square_root=True), default_projection_dim(100, 5_000, square_root=True)
        (32, 128, 0)
    """
    if dim <= PROJECT_ABOVE:
        return 0
    size = min(ACTIVATION_PROJECTION_DIM if square_root else PROJECTION_DIM, max(1, n_rows - 1))
    return size if size < dim else 0


def projection_candidates(dim: int, n_rows: int, square_root: bool = False) -> tuple[int, ...]:
    """The projection sizes to choose among with the labels (:mod:`flowgmm_cli.selection`): those
    of :data:`PROJECTION_CANDIDATES` below ``dim``, at most ``n_rows - 1``; none at or below
    :data:`PROJECT_ABOVE` features, where the flow sees them all, and none for ``square_root``
    features, whose size :func:`default_projection_dim` sets.

    How many principal directions carry the classes does not follow from the variance they hold
    (the top 32 hold 77% of it for Lite0 features of MNIST and 75% for its pixels, which want 128
    and 32 directions), so only labels can tell where the kind of features does not.

    Example:
        >>> projection_candidates(384, 5_000), projection_candidates(70, 5_000), projection_candidates(384, 50), projection_candidates(64, 5_000)
        ((32, 64), (32, 64), (32, 49), ())
    """
    if dim <= PROJECT_ABOVE or square_root:
        return ()
    return tuple(sorted({min(size, max(1, n_rows - 1)) for size in PROJECTION_CANDIDATES if size < dim}))


def default_scaling(dim: int, units: str | None = None) -> str:
    """Input scaling from the columns' units: per feature when each column has its own unit (a
    table, ``units="per-column"``), one shared scale when all are in one unit (``"shared"``:
    embeddings, pixels). Unknown units: per feature up to :data:`LOW_DIM` features, else shared.

    In one unit, per-feature scaling inflates near-constant, noisy features; validation rows,
    per-feature → shared: digits 89.5 → 90.8, MNIST 76.7 → 81.8, AG News (MiniLM) 85.7 → 86.1
    (means over two or three labeled draws). In mixed units one shared scale lets the column with
    the largest unit dominate (UCI MAGIC, 10 columns: 65.6% shared, 70.5% per feature).
    """
    if units == "per-column":
        return "feature"
    if units == "shared":
        return "shared"
    return "feature" if dim <= LOW_DIM else "shared"


def default_power_transform(units: str | None) -> bool:
    """A Yeo-Johnson map for tables (``units="per-column"``): their columns are often skewed or
    heavy-tailed (counts, amounts, ratios), which a flow of affine couplings fits poorly. Off
    for one-unit features (embeddings, pixels) and unknown units.
    """
    return units == "per-column"


#: How much longer than its median the tail of the positive values must be for the square root:
#: the 90th percentile over the median of an exponential distribution (log 10 / log 2 ≈ 3.3).
EXPONENTIAL_TAIL = math.log(10) / math.log(2)


def has_long_tail(values: np.ndarray) -> bool:
    """Whether the positive entries of ``values`` have a right tail at least as long as an
    exponential distribution's: their 90th percentile more than :data:`EXPONENTIAL_TAIL` times
    their median. Pooled ReLU activations of a CNN have 7.5-10 (EfficientNet-Lite0 features of
    digit and MNIST images); pixel intensities, which saturate, 1.2-1.6 (digits, MNIST).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> has_long_tail(rng.lognormal(0, 1.5, 10_000)), has_long_tail(rng.uniform(0, 16, 10_000))
        (True, False)
    """
    positive = values[values > 0]
    if positive.size == 0:
        return False
    median, high = np.quantile(positive, [0.5, 0.9])
    return bool(high > EXPONENTIAL_TAIL * median)


def default_square_root(scaling: Scaling, minimum: float, sample: np.ndarray) -> bool:
    """A square root of each feature (:class:`~flowgmm_cli.transforms.SquareRoot`) where the
    features share one scale, none is negative (``minimum``: the least value in the rows) and their
    positive values have a long right tail (:func:`has_long_tail` of ``sample``, some of the rows):
    pooled ReLU activations of a CNN, counts. A few large values then set the shared scale and the
    principal directions; the root, their variance-stabilising map (as for counts), puts more of
    the classes' differences in the directions the flow sees. Pixel intensities saturate rather than
    trail off and gain nothing; tables keep their Yeo-Johnson map; embeddings with negative values
    (the BERT family) stay as they are.

    Validation rows at 10 labels per class (BENCHMARKS.md, "A square root for long-tailed
    features"), medians of four draws, defaults → root: EfficientNet-Lite0 features of digit images
    85.5 → 87.3 and of MNIST images 84.2 → 85.3, every draw up; digits' pixels (not long-tailed)
    95.0 → 94.4.
    """
    return scaling == Scaling.shared and minimum >= 0 and has_long_tail(sample)


#: Weight of the labeled cross-entropy for tables. Validation rows of the suite's tables at 10
#: labels per class (medians of four draws), weight 0 / 1 / 3 (the paper's code's value) / 10:
#: UCI letter 60.7 / 66.7 / 65.9 / 64.6 (0, 3 and 10 with the pool's class shares, about 10 per
#: class there too; at 10 per class 1 → 3: 66.55 → 64.93), HTRU2 97.03 at 1 and 96.98 at 3.
#: Fragile: with two labels of the rare class (HTRU2's 20 labels drawn with the pool's shares) 1
#: gave 95.74 against 97.8 at 3, one more draw falling to the majority class's 92.5.
TABLE_CLASSIFICATION_WEIGHT = 1.0


def default_classification_weight(units: str | None) -> float:
    """The labeled cross-entropy's weight: :data:`TABLE_CLASSIFICATION_WEIGHT` for tables, else 0.

    In a table a class is often not a cluster of the density (UCI letter: 26 classes in 16 small
    integers), so the likelihood alone places the boundaries poorly; without the term letter falls
    from 66.7 to 60.7 (validation rows, medians of four draws). On one-unit
    features with few labels it overfits them: MNIST pixels 83.1 → 78.2 (weight 0.15: 78.9), while
    digits gained 1 point.
    """
    return TABLE_CLASSIFICATION_WEIGHT if units == "per-column" else 0.0


#: Members of the seed ensemble where one is the default (see :func:`default_members`).
ENSEMBLE_MEMBERS = 3
#: The fewest classes that get the seed ensemble by default (see :func:`default_members`).
ENSEMBLE_MIN_CLASSES = 5


def default_members(n_classes: int) -> int:
    """Flows in the seed ensemble: :data:`ENSEMBLE_MEMBERS` for :data:`ENSEMBLE_MIN_CLASSES` or
    more classes, else 1.

    Seeds disagree where the flow can hand a cluster of rows to more than one class, and the
    number of ways to do so grows with the classes; averaging the seeds removes that part of the
    error, and the one temperature fitted for their mean calibrates it. Validation rows (medians
    of four draws), one flow → three: UCI letter (26 classes) 66.55 → 69.55, ECE 0.062 → 0.028;
    digits (10) 94.6 → 95.0, ECE 0.073 → 0.041; MNIST as vectors (10) 89.3 → 90.95, ECE 0.069 →
    0.030. Level with two to four classes: HTRU2 (2) 97.03 → 97.14, AG News (4) 88.26 → 88.35,
    and on two small tables (breast cancer, wine) outside the suite, so there one fit is kept.

    Example:
        >>> default_members(2), default_members(4), default_members(10)
        (1, 1, 3)
    """
    return ENSEMBLE_MEMBERS if n_classes >= ENSEMBLE_MIN_CLASSES else 1


def default_learn_weights(units: str | None) -> bool:
    """Learned mixture weights for tables, equal ones otherwise.

    A table's classes are often imbalanced (HTRU2: 9% positives), which a draw of so many labels
    per class hides: learned weights moved HTRU2 from 93.0 to 94.4 on validation rows (letter and
    the one-unit cases within 0.2). On the 2-D pinwheel (2 labels per class) they drifted to
    0.14-0.25 for five equal classes and cost 7 points (93.7 → 86.6).
    """
    return units == "per-column"


#: Weight of the consistency term (FlowGMM-cons, equation 7) on feature vectors. Validation rows,
#: medians of four draws, weight 0 / 1 / 2 / 3 / 5: digits 90.4 / 93.3 / 94.0 / 94.6 / 94.8,
#: MNIST pixels as vectors 82.6 / 83.5 / 84.1 / 84.25 / 83.9, AG News 87.0 / 87.5 / 87.7 / 87.7 /
#: 87.9, UCI letter 62.9 / 62.6 / 62.35 / 62.4 / 61.9; HTRU2 97.5 / 97.8 / - / 97.8 / - and two
#: moons 100 throughout. 3 takes most of the gain; 5 adds little on digits, loses on MNIST and
#: letter, and nearly doubles the validation ECE on digits and MNIST (0.07 → 0.10). One rule for
#: every vector rather than one by units: the tables stay level.
#: Fragile with one label per class: on eight draws of the 2-D eight Gaussians the medians are
#: level (91.55 at 1, 90.9 at 3), but at 3 one more draw gave a whole cluster to a wrong class.
#: The views are Gaussian noise at the labeled noise's scale (``perturbation``), which follows the
#: data's neighbour spacing, so the rule carries its own scale; the image flow keeps 0 (its views,
#: random shifts, cost more and gained nothing at equal time on validation images).
CONSISTENCY_WEIGHT = 3.0
#: Above :data:`LOW_DIM` features on dense data (:func:`is_dense`), the views' noise
#: (``perturbation``) is this share of the labeled noise, which moves a row about 1.2 × its median
#: nearest-neighbour distance in all: a view at half of that stays nearer its row than the row's
#: neighbour is. Validation rows, medians of four draws, full → half: MNIST as vectors 85.65 → 89.3
#: (every draw up 3.3-4.35), UCI letter 64.5 → 65.9 and AG News 87.8 → 88.3 (every draw up). The
#: others keep the full scale: digits (sparse, 20 rows per dimension) 94.6 → 93.65 with every draw
#: down, HTRU2 (8 features) 97.8 → 97.6 with a test ECE of 0.053 against 0.025, and a two-moons
#: draw of the estimator tests 1.0 → 0.976: with few dimensions or sparse rows, views at the full
#: scale carry the few labels further. Fragile: three cases gain, and the split between them and
#: the rest is the one the flow's width already uses, not measured on its own.
PERTURBATION_SHARE = 0.5


#: At least this many training rows per flow dimension get the wide flow of the low-dimensional
#: sets (:func:`is_dense`). Validation rows, medians of four draws, 8 couplings of 2·dim (at least
#: 128) against 10 of 512: MNIST pixels as vectors (10,000 rows on 32 principal directions: 312 per
#: dimension) 84.25 → 85.65, every draw up 1.1-2.25, ECE 0.068 → 0.041; UCI letter (937 per
#: dimension) 62.4 → 64.5, every draw up 1.0-5.6; AG News (175 per dimension) 87.7 → 87.8. Digits
#: (20 per dimension) 94.6 → 94.8 at 1.3-2.1 times the time (136 s against 64 s, one thread, quiet).
#: Any threshold between 20 and 175 splits these cases alike; 100 lies in that gap, not tuned
#: within it, and data between 20 and 175 rows per dimension is untested.
DENSE_ROWS_PER_DIM = 100


def is_dense(dim: int, n_rows: int) -> bool:
    """Whether ``n_rows`` training rows in ``dim`` dimensions support the wide flow: at most
    :data:`LOW_DIM` features, or at least :data:`DENSE_ROWS_PER_DIM` rows per dimension.

    Example:
        >>> is_dense(2, 50), is_dense(16, 15_000), is_dense(64, 1_297)
        (True, True, False)
    """
    return dim <= LOW_DIM or n_rows >= DENSE_ROWS_PER_DIM * dim


def default_perturbation(labeled_noise: float, dim: int, n_rows: int) -> float:
    """Std of the consistency views' noise: :data:`PERTURBATION_SHARE` of the labeled noise above
    :data:`LOW_DIM` features with at least :data:`DENSE_ROWS_PER_DIM` rows per feature (dense data,
    as :func:`is_dense` counts it), else all of it.

    Example:
        >>> default_perturbation(0.8, 16, 15_000), default_perturbation(0.8, 64, 1_297), default_perturbation(0.8, 2, 1_000)
        (0.4, 0.8, 0.8)
    """
    return PERTURBATION_SHARE * labeled_noise if dim > LOW_DIM and n_rows >= DENSE_ROWS_PER_DIM * dim else labeled_noise


def default_hidden(dim: int, n_rows: int) -> int:
    """Width of the s/t networks: 512 for dense data (:func:`is_dense`), else 2·dim rounded up to a power of 2 in [128, 512]."""
    if is_dense(dim, n_rows):
        return 512
    return int(min(512, max(128, 2 ** math.ceil(math.log2(2 * dim)))))


def default_coupling_layers(dim: int, n_rows: int) -> int:
    """10 coupling layers for dense data (:func:`is_dense`), 8 otherwise."""
    return 10 if is_dense(dim, n_rows) else 8


def default_unlabeled_weight(dim: int) -> float:
    """Weight of the unlabeled NLL: the paper's 1 for low-dimensional data, 0.3 otherwise."""
    return 1.0 if dim <= LOW_DIM else 0.3


def default_means_separation(dim: int) -> float:
    """Distance between the two closest class means, in component standard deviations: 7.

    About what the paper's N(0, I) means give on digits (64-D, σ² = 1.72), and best there. Fixing
    the closest pair rather than the scale keeps it right in two dimensions too: the paper's
    scale leaves two classes too close there, and eight classes packed in the plane closer still.
    """
    return 7.0


#: Rows the labeled-noise rule measures.
NOISE_SAMPLE = 2000


def noise_sample_rows(n_rows: int, seed: int = 0, sample: int = NOISE_SAMPLE) -> np.ndarray:
    """The rows :func:`default_labeled_noise` measures: all, or ``sample`` of them drawn with ``seed``."""
    if n_rows <= sample:
        return np.arange(n_rows)
    return np.random.default_rng(seed).choice(n_rows, sample, replace=False)


def default_labeled_noise(standardized: np.ndarray, seed: int = 0, sample: int = NOISE_SAMPLE) -> float:
    """Noise on labeled rows: 1.2 × the median nearest-neighbour distance per √dimension.

    Measured on up to ``sample`` standardised rows (:func:`noise_sample_rows`). It keeps the noise
    below the spacing of the data on dense low-dimensional sets (about 0.02 on two moons) and large
    where rows are sparse (about 0.53 on digits).
    """
    rows = standardized[noise_sample_rows(len(standardized), seed, sample)]
    if len(rows) < 2:
        return 0.0
    from sklearn.neighbors import NearestNeighbors

    distances, _ = NearestNeighbors(n_neighbors=2).fit(rows).kneighbors(rows)
    return float(NOISE_PER_NEIGHBOUR_DISTANCE * np.median(distances[:, 1]) / math.sqrt(rows.shape[1]))


def default_batch_sizes(n_labeled: int, n_unlabeled: int) -> tuple[int, int]:
    """(unlabeled, labeled) rows per step: 256 and 64 at most. Without unlabeled rows the model
    never uses the first, but its calibration fits do (the labeled rows they hold out become
    unlabeled), so it is 256 there too rather than one row a step.

    Example:
        >>> default_batch_sizes(100, 1000), default_batch_sizes(100, 40), default_batch_sizes(100, 0)
        ((256, 64), (40, 64), (256, 64))
    """
    return min(n_unlabeled, 256) if n_unlabeled else 256, min(n_labeled, 64)


def steps_per_epoch(n_labeled: int, n_unlabeled: int, batch_size: int, labeled_batch_size: int) -> int:
    """Optimiser steps in one pass: over the unlabeled rows, or over the labeled ones when there are none.

    Example:
        >>> steps_per_epoch(100, 1000, 256, 64), steps_per_epoch(100, 0, 256, 64)
        (4, 2)
    """
    rows, batch = (n_unlabeled, batch_size) if n_unlabeled else (n_labeled, labeled_batch_size)
    return math.ceil(rows / max(batch, 1))


def default_epochs(epoch_steps: int, dim: int = LOW_DIM) -> int:
    """Epochs of ``epoch_steps`` steps for :data:`TARGET_STEPS` steps (at least 10 epochs, at most
    2,000); above :data:`LOW_DIM` features, steps for :data:`ENOUGH_EPOCHS` epochs when that is
    fewer, but at least :data:`MIN_STEPS`.

    Small sets reach 3,000 steps only after hundreds of passes, which add nothing (validation
    rows, 1,500 steps against 3,000: digits 90.2 against 89.6, AG News 87.0 against 87.0) and
    cost time; large ones need the passes (MNIST pixels 81.0 against 83.1, UCI letter 56.3 against
    60.6 at 48 and 32 epochs). Low-dimensional sets keep 3,000 (two moons: one seed of four at
    91.5% after 1,500 steps).

    Example:
        >>> default_epochs(4, dim=64), default_epochs(47, dim=16), default_epochs(4, dim=2)
        (375, 64, 750)
    """
    steps = TARGET_STEPS if dim <= LOW_DIM else min(TARGET_STEPS, max(MIN_STEPS, ENOUGH_EPOCHS * epoch_steps))
    return int(min(2000, max(10, round(steps / max(epoch_steps, 1)))))


#: Folds of the cross-fitted calibration ...
CALIBRATION_FOLDS = 4
#: ... each fit this share of the model's steps, so the four cost two thirds of the model's time.
#: The scale depends more on the labels a fit sees than on its length (validation rows, seed 1000:
#: digits, two folds, T = 7.27 from full fits and 7.06 from a third of the steps, against 5.19
#: that the validation rows want; UCI letter, four folds, T = 5.47 from a third and 4.27 from a
#: sixth against 5.28, test ECE 0.16 and 0.08), so many short fits beat few long ones. With every
#: row labeled, fits as long as the model did better on two small tables and worse on digits, at
#: three to five times the cost (test NLL, a sixth against the model's length: wine 0.240 and
#: breast cancer 0.128 against 0.223 and 0.120, medians of 4 splits; digits 0.054 against 0.072;
#: BENCHMARKS.md) ...
CALIBRATION_STEP_SHARE = 1 / 6
#: ... but where the flow sees a principal projection of many features, no fit runs fewer steps
#: than this share of a full-length run (:data:`TARGET_STEPS`). A flow learns per step, and a sixth
#: of a run already cut to :data:`MIN_STEPS` leaves such fits far weaker than the model, and biased
#: towards the smaller projection, which learns faster (EfficientNet-Lite0 features of digit
#: images, 100 labels, validation rows, 250 steps against 500: folds' accuracy 51-60% against
#: 74-80% for models of 78-86%, ECE median 0.118 against 0.064, 64 directions chosen on one more
#: draw of four, +2 points). On digits' 64 pixels the longer fits changed nothing (ECE median 0.041
#: against 0.042) and would cost a third more time on 2 cores, so below the projection they stay a sixth.
CALIBRATION_MIN_STEPS = round(TARGET_STEPS * CALIBRATION_STEP_SHARE)
#: ... and without a projection no fit runs fewer steps than a sixth of the shortest default run
#: (:data:`MIN_STEPS`), or fewer than the model if it runs fewer: a run cut short with ``epochs``
#: (no default run is) would otherwise get fits too weak to know the classes, whose held-out rows
#: ask for far softer probabilities than the model's. ECE on validation rows, medians of four
#: draws, fits of a sixth → at least this: digits (three members) at 200 steps 0.279 → 0.090, at
#: 500 steps 0.122 → 0.057; two moons at 160 steps 0.072 → 0.026, at 400 steps 0.054 → 0.069
#: (BENCHMARKS.md). A short run's four fits then cost up to four times its model.
CALIBRATION_LEAST_STEPS = round(MIN_STEPS * CALIBRATION_STEP_SHARE)


def default_calibration_folds(class_counts: np.ndarray) -> int:
    """Folds for the cross-fitted temperature: :data:`CALIBRATION_FOLDS`, or 0 when no class
    has 2 labeled rows (a class's only row is never held out, so nothing would be scored).

    Example:
        >>> default_calibration_folds(np.array([10, 2])), default_calibration_folds(np.array([1, 1]))
        (4, 0)
    """
    return CALIBRATION_FOLDS if (np.asarray(class_counts) >= 2).any() else 0


def calibration_epochs(model_steps: int, epoch_steps: int, projected: bool) -> int:
    """Epochs of ``epoch_steps`` steps for each calibration fit: :data:`CALIBRATION_STEP_SHARE` of
    the model's ``model_steps`` steps, but at least about :data:`CALIBRATION_MIN_STEPS` steps when
    the flow sees a principal projection (``projected``; the nearest whole epoch) and at least
    :data:`CALIBRATION_LEAST_STEPS` otherwise (whole epochs within them); never more than the
    model's and at least 1.

    Counted in steps because a fit's epoch can be longer than the model's: it passes over the
    unlabeled rows, which then hold the labeled rows its fold hides (with every row labeled the
    model's epoch is a pass over the labeled rows, the fit's one over the hidden ones).

    Example:
        >>> calibration_epochs(1500, 4, projected=False), calibration_epochs(1500, 4, projected=True), calibration_epochs(20, 4, projected=True)
        (62, 125, 5)
        >>> calibration_epochs(2520, 2, projected=False)  # every row labeled: 21 labeled batches an epoch, a fit's 2 hidden ones
        210
        >>> calibration_epochs(500, 4, projected=False), calibration_epochs(200, 4, projected=False)  # runs cut short
        (62, 50)
    """
    model_epochs = model_steps / max(epoch_steps, 1)
    floor = round(CALIBRATION_MIN_STEPS / max(epoch_steps, 1)) if projected else CALIBRATION_LEAST_STEPS // max(epoch_steps, 1)
    return max(1, min(math.floor(model_epochs), max(round(model_epochs * CALIBRATION_STEP_SHARE), floor)))


def resolve_input(options: TrainOptions, dim: int, n_rows: int, units: str | None = None) -> TrainOptions:
    """For the vector flow (``flow`` set to it; the image flow's options, which mean nothing here,
    are refused when given): ``options`` with the settings that follow the columns' ``units`` filled (``scaling``,
    ``power_transform``, ``classification_weight``, ``learn_weights``: :func:`default_scaling`,
    :func:`default_power_transform`, :func:`default_classification_weight`, :func:`default_learn_weights`) and
    ``projection_dim`` (0 when the flow sees every feature; a value of at least ``dim`` also means
    every feature)."""
    for name in ("scales", "translate", "flip"):
        if getattr(options, name):
            raise OptionError(name, "{option} applies to the image flow (flow='image'), not to feature vectors.")
    if options.precision != Precision.float32:
        raise OptionError("precision", "{option} applies to the image flow (flow='image'); feature vectors train in float32.")
    projection = default_projection_dim(dim, n_rows, bool(options.square_root)) if options.projection_dim is None else options.projection_dim
    scaling = Scaling(default_scaling(dim, units)) if options.scaling is None else options.scaling
    power = default_power_transform(units) if options.power_transform is None else options.power_transform
    classification = default_classification_weight(units) if options.classification_weight is None else options.classification_weight
    learn_weights = default_learn_weights(units) if options.learn_weights is None else options.learn_weights
    return replace(
        options, flow=FlowKind.vector, scales=0, translate=0, scaling=scaling, power_transform=power, classification_weight=classification, learn_weights=learn_weights,
        projection_dim=projection if projection < dim else 0,
    )


def resolve(options: TrainOptions, *, n_labeled: int, n_unlabeled: int, seen: np.ndarray, class_counts: np.ndarray | None = None) -> TrainOptions:
    """``options`` with every remaining ``None`` chosen from the data (``means_scale`` stays ``None``:
    the means are then placed :func:`default_means_separation` apart).

    ``seen`` are the training rows as the flow sees them (standardised, projected), so the rules
    use the flow's dimension; ``class_counts`` (labeled rows per class) sets the calibration folds
    and, by the number of classes, the seed ensemble.

    Example:
        >>> rows = np.random.default_rng(0).normal(size=(300, 2))
        >>> options = resolve(TrainOptions(hidden_layers=0, epochs=5), n_labeled=10, n_unlabeled=290, seen=rows)
        >>> options.hidden_layers, options.epochs, options.hidden, options.unlabeled_weight
        (0, 5, 512, 1.0)
    """
    flow_dim, n_rows = seen.shape[1], n_labeled + n_unlabeled
    unlabeled_batch, labeled_batch = default_batch_sizes(n_labeled, n_unlabeled)
    batch_size = unlabeled_batch if options.batch_size is None else options.batch_size
    labeled_batch_size = labeled_batch if options.labeled_batch_size is None else options.labeled_batch_size
    epoch_steps = steps_per_epoch(n_labeled, n_unlabeled, batch_size, labeled_batch_size)

    def given(value, default):
        return default() if value is None else value

    labeled_noise = given(options.labeled_noise, lambda: default_labeled_noise(seen, options.random_state))

    return replace(
        options,
        coupling_layers=given(options.coupling_layers, lambda: default_coupling_layers(flow_dim, n_rows)),
        hidden=given(options.hidden, lambda: default_hidden(flow_dim, n_rows)),
        hidden_layers=given(options.hidden_layers, lambda: DEFAULT_HIDDEN_LAYERS),
        variance=given(options.variance, lambda: DEFAULT_VARIANCE),
        unlabeled_weight=given(options.unlabeled_weight, lambda: default_unlabeled_weight(flow_dim)),
        labeled_noise=labeled_noise,
        perturbation=given(options.perturbation, lambda: default_perturbation(labeled_noise, flow_dim, n_rows)),
        consistency_weight=given(options.consistency_weight, lambda: CONSISTENCY_WEIGHT),
        epochs=given(options.epochs, lambda: default_epochs(epoch_steps, flow_dim)),
        batch_size=batch_size,
        labeled_batch_size=labeled_batch_size,
        calibration_folds=given(options.calibration_folds, lambda: default_calibration_folds(np.ones(0) if class_counts is None else class_counts)),
        members=given(options.members, lambda: default_members(0 if class_counts is None else len(class_counts))),
    )
