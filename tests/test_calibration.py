"""Calibration (section 6.1): the fitted variance scale recovers a known one, matches a brute-force search,
and lowers NLL and ECE of a model made over-confident on purpose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.datasets import make_blobs

from flowgmm_cli import FlowGMMClassifier, defaults
from flowgmm_cli import fits as fits_module
from flowgmm_cli.calibration import (
    LOG_TEMPERATURE_BOUNDS,
    fit_temperature,
    tempered_log_proba,
)
from flowgmm_cli.errors import InputError, OptionError
from flowgmm_cli.inference import map_rows
from flowgmm_cli.metrics import expected_calibration_error, negative_log_likelihood
from flowgmm_cli.options import TrainOptions
from flowgmm_cli.splits import stratified_folds


def _mixture_log_joint(n: int, assumed_variance: float, seed: int = 0):
    """Latent points of a 3-class mixture with equal weights and variance 1 in 5-D, and their
    ``log p(z, y=k)`` (up to a term shared by the classes) under a model that assumes ``assumed_variance``."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=1.5, size=(3, 5))
    y = rng.choice(3, n)
    z = means[y] + rng.normal(size=(n, 5))
    return np.log(1 / 3) - ((z[:, None, :] - means) ** 2).sum(-1) / (2 * assumed_variance), y


def test_tempered_probabilities_divide_the_log_joint_by_the_temperature():
    log_joint, _ = _mixture_log_joint(20, 0.5)
    shifted = log_joint + np.arange(20)[:, None] * 7.0  # a term shared by a row's classes cancels
    for log_t in (0.0, 0.7, -1.2):
        expected = softmax(log_joint / math.exp(log_t), axis=1)
        np.testing.assert_allclose(np.exp(tempered_log_proba(shifted, log_t)), expected, rtol=1e-12)
        assert (tempered_log_proba(shifted, log_t).argmax(1) == log_joint.argmax(1)).all(), "the most probable class stays"


def test_fitted_temperature_recovers_the_true_variance_of_an_over_confident_model():
    """With equal weights the temperature is the variance scale: the model assumes 0.2 where the data have 1."""
    log_joint, y = _mixture_log_joint(20000, 0.2)
    log_t = fit_temperature(log_joint, y)
    assert math.exp(log_t) == pytest.approx(5.0, rel=0.05)
    before, after = tempered_log_proba(log_joint, 0.0), tempered_log_proba(log_joint, log_t)
    assert negative_log_likelihood(after, y) < negative_log_likelihood(before, y) - 0.05
    assert expected_calibration_error(np.exp(after), y) < 0.5 * expected_calibration_error(np.exp(before), y)


@pytest.mark.parametrize("assumed_variance, seed", [(0.2, 1), (3.0, 2), (1.0, 3)])
def test_fitted_temperature_matches_a_brute_force_search(assumed_variance, seed):
    log_joint, y = _mixture_log_joint(500, assumed_variance, seed)
    grid = np.linspace(-4.0, 4.0, 8001)  # steps of 0.001 in log T
    nll = np.array([negative_log_likelihood(tempered_log_proba(log_joint, t), y) for t in grid])
    log_t = fit_temperature(log_joint, y)
    assert abs(log_t - grid[nll.argmin()]) <= 0.001
    assert negative_log_likelihood(tempered_log_proba(log_joint, log_t), y) <= nll.min() + 1e-9


def test_separated_rows_sharpen_and_useless_rows_flatten():
    log_joint = -np.array([[0.0, 50.0], [50.0, 0.0]])
    sharp = fit_temperature(log_joint, np.array([0, 1]))  # every row right: NLL falls as T shrinks
    assert sharp < -4 and negative_log_likelihood(tempered_log_proba(log_joint, sharp), np.array([0, 1])) < 1e-9
    flat = fit_temperature(log_joint, np.array([1, 0]))  # every row wrong: uniform is best
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


def test_the_temperature_changes_class_probabilities_but_not_the_density_or_samples(blobs_model, tmp_path):
    """Class probabilities are Bayes' rule for components of variance σ²T; ``log p(x)`` and samples
    keep the trained σ² (a widened density would blur out-of-distribution scores)."""
    clf, X_val, y_val, X_test, _ = blobs_model
    _set_temperature(clf, 1.0)
    density_before, samples_before = clf.score_samples(X_test), clf.sample(50, random_state=0)[0]
    clf.calibrate(X_val, y_val)
    assert clf.temperature_ != 1.0
    np.testing.assert_array_equal(clf.score_samples(X_test), density_before)
    np.testing.assert_array_equal(clf.sample(50, random_state=0)[0], samples_before)
    Z = clf.encode(X_test)
    squared = ((Z[:, None, :] - clf.means_[None]) ** 2).sum(-1)
    log_weights = torch.log_softmax(clf.model_.prior.weight_logits.detach().double(), 0).numpy()  # in float64, as inference
    variance = math.exp(float(clf.model_.prior.log_variance))  # 1.72 in float32
    expected = softmax((log_weights - squared / (2 * variance)) / clf.temperature_, axis=1)  # equal weights: variance σ²T
    np.testing.assert_allclose(clf.predict_proba(X_test), expected, rtol=1e-9, atol=1e-12)
    assert (clf.predict(X_test) == clf.predict_proba(X_test).argmax(1)).all()
    clf.save(tmp_path / "m.flowgmm")
    loaded = FlowGMMClassifier.load(tmp_path / "m.flowgmm")
    assert loaded.temperature_ == pytest.approx(clf.temperature_)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), clf.predict_proba(X_test))


def test_calibration_refuses_unknown_classes_and_a_single_class(blobs_model):
    clf, X_val, y_val, _, _ = blobs_model
    with pytest.raises(InputError, match="not a class"):
        clf.calibrate(X_val[:3], np.array([0, 1, 7]))
    with pytest.raises(InputError, match="Calibration needs labeled rows of at least 2 classes"):
        clf.calibrate(X_val[y_val == 1], y_val[y_val == 1])


# ------------------------------------------------------------------ calibrated by default (cross-fitting)
def test_folds_are_stratified_balanced_and_never_take_a_class_s_last_row():
    codes = np.repeat([0, 1, 2, 3], [10, 3, 2, 1])
    folds = stratified_folds(codes, 4, seed=5)
    assert folds[codes == 3].tolist() == [-1], "a class's only row is never held out"
    for code in (0, 1, 2):
        counts = np.bincount(folds[codes == code], minlength=4)
        assert counts.max() - counts.min() <= 1
        assert all((folds[codes == code] != fold).any() for fold in range(4)), "every fold leaves the class a training row"
    np.testing.assert_array_equal(folds, stratified_folds(codes, 4, seed=5))


class _FitSpy:
    """Records the labeled rows, unlabeled mask, epochs and unlabeled batch of each model a ``fit`` trains."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fits: list[dict] = []
        real = fits_module.train_one

        def spying(rows, transform, n_classes, labeled, codes, unlabeled, options, *args, **kwargs):
            model, history = real(rows, transform, n_classes, labeled, codes, unlabeled, options, *args, **kwargs)
            self.fits.append({"labeled": np.array(labeled), "unlabeled": unlabeled.copy(), "epochs": options.epochs, "batch_size": options.batch_size, "model": model})
            return model, history

        monkeypatch.setattr(fits_module, "train_one", spying)


def _blobs_with_labels(per_class: int = 6):
    X, y = make_blobs(400, centers=[[0.0, 0.0], [2.5, 0.5], [0.0, 3.0]], cluster_std=1.0, random_state=1)
    partial = np.full_like(y, -1)
    rng = np.random.default_rng(0)
    for k in range(3):
        rows = rng.choice(np.flatnonzero(y == k), per_class, replace=False)
        partial[rows] = k
    return X, partial


SMALL = {"epochs": 12, "hidden": 16, "coupling_layers": 2, "device": "cpu", "random_state": 0}


def test_default_fit_cross_fits_the_scale_on_held_out_labels(monkeypatch):
    """Each calibration fit hides one fold (those rows become unlabeled), trains as long as this
    short model (a sixth would be under the fits' least steps), and T is the scale that fits the
    pooled out-of-fold scores."""
    spy = _FitSpy(monkeypatch)
    X, partial = _blobs_with_labels()
    clf = FlowGMMClassifier(**SMALL).fit(X, partial)
    labeled = np.flatnonzero(partial >= 0)
    main, *folds = spy.fits
    assert clf.options_.calibration_folds == len(folds) == 4
    np.testing.assert_array_equal(np.sort(main["labeled"]), labeled)
    held_out = []
    for fold in folds:
        held = np.setdiff1d(labeled, fold["labeled"])
        assert len(held) > 0 and fold["unlabeled"][held].all(), "the fold's rows join the unlabeled ones"
        assert not fold["unlabeled"][fold["labeled"]].any()
        assert fold["epochs"] == SMALL["epochs"]
        held_out.append(held)
    np.testing.assert_array_equal(np.sort(np.concatenate(held_out)), labeled)  # each labeled row scored once
    log_joint = np.concatenate([map_rows(fold["model"], X[held].astype(np.float32), lambda m, x: m(x), 3) for fold, held in zip(folds, held_out, strict=True)])
    codes = partial[np.concatenate(held_out)]
    expected = max(0.0, fit_temperature(log_joint, codes))  # never below T = 1
    assert math.log(clf.temperature_) == pytest.approx(expected, abs=1e-5)


def test_behind_a_projection_the_calibration_fits_run_at_least_their_least_steps(monkeypatch):
    """With the flow on principal directions, a sixth of 12 short epochs is under the fits' least
    steps, so each fit runs as long as the model (never longer)."""
    spy = _FitSpy(monkeypatch)
    X, partial = _blobs_with_labels()
    wide = np.hstack([X, np.random.default_rng(3).normal(size=(len(X), 6))])
    FlowGMMClassifier(**SMALL, projection_dim=3).fit(wide, partial)
    main, *folds = spy.fits
    assert main["epochs"] == SMALL["epochs"] and [fold["epochs"] for fold in folds] == [SMALL["epochs"]] * 4


def test_with_every_row_labeled_the_calibration_fits_take_whole_batches_for_a_sixth_of_the_steps(monkeypatch):
    """The model passes over its 400 labeled rows (7 batches of 64, 84 steps in 12 epochs); each
    fit's (about) 100 hidden labels are its unlabeled rows, taken in one batch, not one row a step,
    for a sixth of the model's steps (14), not a sixth of its epochs (2 epochs of 100 one-row steps).
    The fits' least steps, which a run this short would get instead, are set aside to see the share."""
    monkeypatch.setattr(defaults, "CALIBRATION_LEAST_STEPS", 0)
    spy = _FitSpy(monkeypatch)
    X, y = make_blobs(400, centers=[[0.0, 0.0], [2.5, 0.5], [0.0, 3.0]], cluster_std=1.0, random_state=1)
    FlowGMMClassifier(**SMALL).fit(X, y)
    main, *folds = spy.fits
    assert main["epochs"] == 12 and not main["unlabeled"].any()
    assert len(folds) == 4 and sum(fold["unlabeled"].sum() for fold in folds) == 400 and all(fold["unlabeled"].sum() <= 101 for fold in folds)
    assert [(fold["batch_size"], fold["epochs"]) for fold in folds] == [(256, 14)] * 4


def test_no_folds_keep_the_trained_scale_and_validation_rows_calibrate_instead(monkeypatch):
    X, partial = _blobs_with_labels()
    assert FlowGMMClassifier(**SMALL, calibration_folds=0).fit(X, partial).temperature_ == 1.0
    spy = _FitSpy(monkeypatch)
    X_val, y_val = make_blobs(150, centers=[[0.0, 0.0], [2.5, 0.5], [0.0, 3.0]], cluster_std=1.0, random_state=2)
    clf = FlowGMMClassifier(**SMALL).fit(X, partial, X_val=X_val, y_val=y_val)
    assert len(spy.fits) == 1 and clf.options_.calibration_folds == 0
    fitted = clf.temperature_
    assert fitted != 1.0
    assert clf.calibrate(X_val, y_val).temperature_ == pytest.approx(fitted, rel=1e-5)


def test_one_fold_is_refused_and_a_single_labeled_row_per_class_means_no_folds():
    with pytest.raises(OptionError, match="at least 2"):
        TrainOptions(calibration_folds=1)
    X, partial = _blobs_with_labels(per_class=1)
    clf = FlowGMMClassifier(**SMALL).fit(X, partial)
    assert clf.options_.calibration_folds == 0 and clf.temperature_ == 1.0
