"""Calibration (section 6.1): the fitted variance scale recovers a known one, matches a brute-force search,
and lowers NLL and ECE of a model made over-confident on purpose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.datasets import make_blobs

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.calibration import (
    LOG_TEMPERATURE_BOUNDS,
    fit_temperature,
    tempered_log_proba,
)
from flowgmm_cli.errors import InputError
from flowgmm_cli.metrics import expected_calibration_error, negative_log_likelihood


def _mixture_distances(n: int, assumed_variance: float, seed: int = 0, weights=(0.5, 0.3, 0.2)):
    """Latent points of a 3-class mixture with variance 1 in 5-D, scored by a model that assumes ``assumed_variance``."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=1.5, size=(3, 5))
    y = rng.choice(3, n, p=weights)
    z = means[y] + rng.normal(size=(n, 5))
    scaled = ((z[:, None, :] - means) ** 2).sum(-1) / (2 * assumed_variance)
    return scaled, np.log(weights), y


def test_tempered_probabilities_are_bayes_rule_at_the_scaled_variance():
    scaled, log_weights, _ = _mixture_distances(20, 0.5)
    for log_t in (0.0, 0.7, -1.2):
        expected = softmax(log_weights - scaled / math.exp(log_t), axis=1)
        np.testing.assert_allclose(np.exp(tempered_log_proba(scaled, log_weights, log_t)), expected, rtol=1e-12)


def test_fitted_scale_recovers_the_true_variance_of_an_over_confident_model():
    """The model assumes variance 0.2 where the data have 1: the fitted scale is about 5."""
    scaled, log_weights, y = _mixture_distances(20000, 0.2)
    log_t = fit_temperature(scaled, log_weights, y)
    assert math.exp(log_t) == pytest.approx(5.0, rel=0.05)
    before, after = tempered_log_proba(scaled, log_weights, 0.0), tempered_log_proba(scaled, log_weights, log_t)
    assert negative_log_likelihood(after, y) < negative_log_likelihood(before, y) - 0.05
    assert expected_calibration_error(np.exp(after), y) < 0.5 * expected_calibration_error(np.exp(before), y)


@pytest.mark.parametrize("assumed_variance, seed", [(0.2, 1), (3.0, 2), (1.0, 3)])
def test_fitted_scale_matches_a_brute_force_search(assumed_variance, seed):
    scaled, log_weights, y = _mixture_distances(500, assumed_variance, seed)
    grid = np.linspace(-4.0, 4.0, 8001)  # steps of 0.001 in log T
    nll = np.array([negative_log_likelihood(tempered_log_proba(scaled, log_weights, t), y) for t in grid])
    log_t = fit_temperature(scaled, log_weights, y)
    assert abs(log_t - grid[nll.argmin()]) <= 0.001
    assert negative_log_likelihood(tempered_log_proba(scaled, log_weights, log_t), y) <= nll.min() + 1e-9


def test_separated_rows_sharpen_and_useless_rows_flatten():
    scaled = np.array([[0.0, 50.0], [50.0, 0.0]])
    log_weights = np.log([0.5, 0.5])
    sharp = fit_temperature(scaled, log_weights, np.array([0, 1]))  # every row right: NLL falls as T shrinks
    assert sharp < -4 and negative_log_likelihood(tempered_log_proba(scaled, log_weights, sharp), np.array([0, 1])) < 1e-9
    flat = fit_temperature(scaled, log_weights, np.array([1, 0]))  # every row wrong: uniform is best
    assert flat == pytest.approx(LOG_TEMPERATURE_BOUNDS[1], abs=1e-3)


# ------------------------------------------------------------------------------ on a real model
@pytest.fixture(scope="module")
def blobs_model():
    """A small model of two overlapping blobs, and held-out rows to calibrate and test on."""
    X, y = make_blobs(900, centers=[[0.0, 0.0], [2.5, 0.5]], cluster_std=1.2, random_state=0)
    clf = FlowGMMClassifier(epochs=40, hidden=32, coupling_layers=4, lr=0.01, random_state=0, device="cpu").fit(X[:300], y[:300])
    assert clf.score(X[600:], y[600:]) > 0.85  # about the Bayes rate of these blobs
    return clf, X[300:600], y[300:600], X[600:], y[600:]


def _set_temperature(clf: FlowGMMClassifier, temperature: float) -> None:
    with torch.no_grad():
        clf.model_.prior.log_temperature.fill_(math.log(temperature))


def test_calibrating_a_model_made_over_confident_lowers_nll_and_ece_on_new_rows(blobs_model):
    clf, X_val, y_val, X_test, y_test = blobs_model
    _set_temperature(clf, 0.02)  # every component 50 times narrower: posteriors near 0 or 1
    before = clf.predict_log_proba(X_test)
    assert np.mean(np.exp(before).max(1) > 0.99) > 0.5
    clf.calibrate(X_val, y_val)
    after = clf.predict_log_proba(X_test)
    assert clf.temperature_ > 0.02 * 10
    assert negative_log_likelihood(after, y_test) < negative_log_likelihood(before, y_test)
    assert expected_calibration_error(np.exp(after), y_test) < expected_calibration_error(np.exp(before), y_test)


def test_calibrated_scale_minimises_the_models_own_validation_nll(blobs_model):
    """Brute force through the model itself: set each scale in turn and score the validation rows."""
    clf, X_val, y_val, _, _ = blobs_model
    clf.calibrate(X_val, y_val)
    fitted = math.log(clf.temperature_)
    grid = fitted + np.linspace(-1.0, 1.0, 201)
    nll = []
    for log_t in grid:
        _set_temperature(clf, math.exp(log_t))
        nll.append(negative_log_likelihood(clf.predict_log_proba(X_val), y_val))
    assert abs(grid[int(np.argmin(nll))] - fitted) <= 0.01 + 1e-9
    assert 0 < np.argmin(nll) < len(grid) - 1  # an interior minimum, not the edge of the grid
    # calibrating again starts from the trained variance, so it gives the same scale
    assert math.log(clf.calibrate(X_val, y_val).temperature_) == pytest.approx(fitted, abs=1e-6)


def test_probabilities_at_a_given_temperature_agree_with_the_calibrated_model(blobs_model):
    clf, X_val, y_val, X_test, _ = blobs_model
    clf.calibrate(X_val, y_val)
    np.testing.assert_allclose(clf.predict_log_proba(X_test, temperature=clf.temperature_), clf.predict_log_proba(X_test), atol=1e-4)
    _set_temperature(clf, 1.0)
    np.testing.assert_allclose(clf.predict_log_proba(X_test, temperature=1.0), clf.predict_log_proba(X_test), atol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        clf.predict_log_proba(X_test, temperature=0.0)


def test_the_scale_is_the_models_variance_density_and_samples_included(blobs_model, tmp_path):
    clf, X_val, y_val, X_test, _ = blobs_model
    _set_temperature(clf, 1.0)
    density_before = clf.score_samples(X_test)
    clf.calibrate(X_val, y_val)
    assert not np.allclose(clf.score_samples(X_test), density_before)
    clf.save(tmp_path / "m.flowgmm")
    loaded = FlowGMMClassifier.load(tmp_path / "m.flowgmm")
    assert loaded.temperature_ == pytest.approx(clf.temperature_)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), clf.predict_proba(X_test))
    Z, _ = loaded.sample_latent(4000, random_state=0)
    spread = np.sqrt(np.mean((Z - loaded.means_[np.argmin(((Z[:, None] - loaded.means_) ** 2).sum(-1), 1)]) ** 2))
    assert spread == pytest.approx(math.sqrt(1.72 * clf.temperature_), rel=0.1)


def test_calibration_refuses_unknown_classes_and_a_single_class(blobs_model):
    clf, X_val, y_val, _, _ = blobs_model
    with pytest.raises(InputError, match="not a class"):
        clf.calibrate(X_val[:3], np.array([0, 1, 7]))
    with pytest.raises(InputError, match="Calibration needs labeled rows of at least 2 classes"):
        clf.calibrate(X_val[y_val == 1], y_val[y_val == 1])
