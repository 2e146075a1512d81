"""Calibration (paper, section 6.1): one variance scale for all mixture components, fit on validation rows.

With components ``N(μ_k, σ² T I)`` the class posterior is
``softmax_k(log π_k − ‖z − μ_k‖² / (2σ² T))``: choosing the scale ``T`` is temperature scaling
(Guo et al., 2017) of the class log-densities. The validation NLL is convex in ``1/T``, hence has
one minimum in ``log T``, which a bounded scalar search finds deterministically.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from .metrics import negative_log_likelihood

__all__ = ["LOG_TEMPERATURE_BOUNDS", "tempered_log_proba", "fit_temperature"]

#: Search range of ``log T``: a variance scale between 1e-4 and 1e4 times the trained one.
LOG_TEMPERATURE_BOUNDS = (-4 * np.log(10), 4 * np.log(10))


def tempered_log_proba(scaled_distances: np.ndarray, log_weights: np.ndarray, log_temperature: float) -> np.ndarray:
    """``log p(y=k | x)`` at variance scale ``T = exp(log_temperature)``.

    Arguments:
        scaled_distances: ``‖f(x) − μ_k‖² / (2σ²)`` per row and class, shape ``(N, K)``.
        log_weights: ``log π_k``, shape ``(K,)``.
        log_temperature: ``log T``; 0 is the model as trained.

    Example:
        >>> np.exp(tempered_log_proba(np.array([[0.0, 2.0]]), np.log([0.5, 0.5]), np.log(2.0))).round(3)
        array([[0.731, 0.269]])
    """
    return log_softmax(log_weights - scaled_distances * np.exp(-log_temperature), axis=1)


def fit_temperature(scaled_distances: np.ndarray, log_weights: np.ndarray, y: np.ndarray) -> float:
    """``log T`` that minimises the mean NLL of the labels ``y`` (class indices), within
    :data:`LOG_TEMPERATURE_BOUNDS`. With one class only, the NLL falls without bound as ``T``
    shrinks: callers check for two classes first (:func:`~flowgmm_cli.targets.require_classes`).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> means = np.array([[0.0, 0.0], [2.0, 0.0]])
        >>> y = rng.integers(0, 2, 4000)
        >>> z = means[y] + rng.normal(size=(4000, 2))             # true variance 1
        >>> scaled = ((z[:, None] - means) ** 2).sum(-1) / (2 * 0.25)  # a model that assumes 0.25
        >>> round(float(np.exp(fit_temperature(scaled, np.log([0.5, 0.5]), y))))  # about 1 / 0.25
        4
    """
    y = np.asarray(y)
    scaled = np.asarray(scaled_distances, dtype=np.float64)
    weights = np.asarray(log_weights, dtype=np.float64)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(tempered_log_proba(scaled, weights, log_t), y),
        bounds=LOG_TEMPERATURE_BOUNDS,
        method="bounded",
        options={"xatol": 1e-7},
    )
    return float(result.x)
