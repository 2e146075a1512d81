"""Calibration (paper, section 6.1): one temperature for the class probabilities, fit on held-out labeled rows.

The class posterior at temperature ``T`` is ``softmax_k(log p(x, y=k) / T)``: temperature scaling
(Guo et al., 2017) of the class log-joints. With equal mixture weights it is the paper's variance
scale, Bayes' rule for components ``N(μ_k, σ² T I)``; with learned weights it also tempers the
weights, so it never changes the most probable class. The held-out NLL is convex in ``1/T``,
hence has one minimum in ``log T``, which a bounded scalar search finds deterministically.

A seed ensemble's class posterior is the mean of its members' posteriors at one shared ``T``;
every function here takes its members' log-joints stacked on a leading axis, ``(M, N, K)``, as
well as one model's ``(N, K)``. (The mean's NLL need not be convex in ``1/T``; the search then
finds one of its minima, the same one each time.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from .metrics import negative_log_likelihood

__all__ = [
    "LOG_TEMPERATURE_BOUNDS", "tempered_log_proba", "fit_temperature", "cross_fitted_log_temperature", "held_out_losses", "mixture_log_joint",
    "calibration_evidence",
]  # fmt: skip

#: Search range of ``log T``: a temperature between 1e-4 and 1e4.
LOG_TEMPERATURE_BOUNDS = (-4 * np.log(10), 4 * np.log(10))


def tempered_log_proba(log_joint: np.ndarray, log_temperature: float) -> np.ndarray:
    """``log p(y=k | x)`` at temperature ``T = exp(log_temperature)`` from ``log p(x, y=k)``
    (shape ``(N, K)``; a term shared by a row's classes cancels); 0 is the model as trained.
    From an ensemble's ``(M, N, K)``: the log of the members' mean posterior, shape ``(N, K)``.

    Example:
        >>> np.exp(tempered_log_proba(np.array([[-1.0, -3.0]]), np.log(2.0))).round(3)
        array([[0.731, 0.269]])
        >>> members = np.log([[[0.9, 0.1]], [[0.5, 0.5]]])                 # two members, one row
        >>> np.exp(tempered_log_proba(members, 0.0)).round(3)
        array([[0.7, 0.3]])
    """
    return _members_mean(log_softmax(np.asarray(log_joint, dtype=np.float64) * np.exp(-log_temperature), axis=-1))


def mixture_log_joint(log_joint: np.ndarray) -> np.ndarray:
    """``log p(x, y=k)`` of an ensemble as a density, the equal-weight mixture of its members',
    from their ``(M, N, K)`` log-joints; one model's ``(N, K)`` is returned as it is.

    Example:
        >>> mixture_log_joint(np.log([[[0.2, 0.1]], [[0.4, 0.3]]])).round(6).tolist() == np.log([[0.3, 0.2]]).round(6).tolist()
        True
    """
    return _members_mean(np.asarray(log_joint, dtype=np.float64))


def _members_mean(log_values: np.ndarray) -> np.ndarray:
    """The log of the mean over the leading members axis of ``exp(log_values)``; ``(N, K)`` as it is."""
    return log_values if log_values.ndim == 2 else logsumexp(log_values, axis=0) - np.log(len(log_values))


def fit_temperature(log_joint: np.ndarray, y: np.ndarray) -> float:
    """``log T`` that minimises the mean NLL of the labels ``y`` (class indices) under
    :func:`tempered_log_proba` of ``log_joint`` (one model's, or an ensemble's), within
    :data:`LOG_TEMPERATURE_BOUNDS`. With one class only, the NLL falls without bound as ``T``
    shrinks: callers check for two classes first (:func:`~flowgmm_cli.targets.require_classes`).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> means = np.array([[0.0, 0.0], [2.0, 0.0]])
        >>> y = rng.integers(0, 2, 4000)
        >>> z = means[y] + rng.normal(size=(4000, 2))                  # true variance 1
        >>> log_joint = -((z[:, None] - means) ** 2).sum(-1) / (2 * 0.25)  # a model that assumes 0.25
        >>> round(float(np.exp(fit_temperature(log_joint, y))))        # about 1 / 0.25
        4
    """
    y = np.asarray(y)
    log_joint = np.asarray(log_joint, dtype=np.float64)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(tempered_log_proba(log_joint, log_t), y),
        bounds=LOG_TEMPERATURE_BOUNDS,
        method="bounded",
        options={"xatol": 1e-7},
    )
    return float(result.x)


def cross_fitted_log_temperature(log_joint: np.ndarray, codes: np.ndarray) -> float:
    """``log T`` fitted on the calibration fits' out-of-fold scores of the labeled rows
    (:func:`~flowgmm_cli.fits.fold_scores`; an ensemble's stacked ``(M, N, K)``, each
    member's from its own calibration fits, so ``T`` is fitted for the members' mean posterior).

    The held-out rows measure how sure a model trained this way is when it is wrong, which the
    rows a model was trained on cannot show. ``T`` is at least 1: a few held-out rows that are
    all right would shrink it toward 0 and make every probability near 0 or 1 on that evidence.
    """
    if len(np.unique(codes)) < 2:
        return 0.0  # one class scored: its NLL falls without bound as T shrinks
    return max(0.0, fit_temperature(log_joint, codes))


def held_out_losses(log_joint: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each held-out label's ``-log p(y | x)`` at the rows' own cross-fitted temperature
    (:func:`cross_fitted_log_temperature`): how well a way of training predicts labels it did not
    see, its over- or underconfidence taken out, so their mean compares settings on accuracy and
    margin alike.

    Example:
        >>> held_out_losses(np.log([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1])).round(3)
        array([0.105, 0.223, 0.916])
    """
    codes = np.asarray(codes)
    log_proba = tempered_log_proba(log_joint, cross_fitted_log_temperature(log_joint, codes))
    return -log_proba[np.arange(len(codes)), codes]


def calibration_evidence(source: str, log_joint: np.ndarray, y: np.ndarray, log_temperature: float) -> dict[str, Any]:
    """What a temperature rests on, for the model file and ``flowgmm info``: where the scored rows
    came from, how many there were, and how often the model that scored them was right.

    The calibration fits' accuracy on the labels they held out is the accuracy their temperature
    is fitted for; well below the model's own, it leaves the model underconfident, and a few rows
    give it a wide margin (a binomial standard error of ``sqrt(a (1 - a) / n)``).

    Example:
        >>> calibration_evidence("validation rows", np.log([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]), 0.0)
        {'source': 'validation rows', 'n': 3, 'accuracy': 0.6667, 'standard_error': 0.2722}
    """
    y = np.asarray(y)
    accuracy = float(np.mean(tempered_log_proba(log_joint, log_temperature).argmax(axis=-1) == y))
    return {"source": source, "n": int(len(y)), "accuracy": round(accuracy, 4), "standard_error": round(math.sqrt(accuracy * (1 - accuracy) / max(len(y), 1)), 4)}
