"""Metrics against hand-computed examples and scikit-learn: ECE, Brier, per-class scores, AUROC, FPR at 95% TPR."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from flowgmm_cli.metrics import (
    auroc,
    brier_score,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    fpr_at_tpr,
    precision_recall_f1,
    reliability_bins,
)


def _random_predictions(n: int = 300, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return proba, rng.integers(0, k, n)


def test_ece_matches_a_hand_computed_example():
    # 15 bins of width 1/15 = 0.0667. Confidences 0.95 and 0.97 share bin 14 (accuracy 1/2, mean
    # confidence 0.96); 0.55 is alone in bin 8, correct; 0.40 is alone in bin 5, wrong.
    proba = np.array([[0.95, 0.05, 0.0], [0.03, 0.97, 0.0], [0.55, 0.45, 0.0], [0.3, 0.3, 0.4]])
    y = np.array([0, 0, 0, 1])
    expected = (2 * abs(0.5 - 0.96) + 1 * abs(1.0 - 0.55) + 1 * abs(0.0 - 0.40)) / 4
    assert expected_calibration_error(proba, y) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.4425)


def test_reliability_bins_put_edges_in_the_lower_bin_and_zero_in_bin_0():
    proba = np.array([[0.6, 0.4], [0.61, 0.39], [1.0, 0.0]])
    table = reliability_bins(proba, np.array([0, 1, 0]), bins=5)
    assert table["count"].tolist() == [0, 0, 1, 1, 1]  # 0.6 closes (0.4, 0.6], 0.61 opens (0.6, 0.8]
    assert table["accuracy"][3] == 0.0 and table["confidence"][4] == 1.0
    assert np.isnan(table["accuracy"][0])
    np.testing.assert_allclose(table["lower"], [0, 0.2, 0.4, 0.6, 0.8])
    zero = reliability_bins(np.array([[0.0, 0.0]]), np.array([0]), bins=5)  # a degenerate row still lands in a bin
    assert zero["count"].tolist() == [1, 0, 0, 0, 0]


def test_ece_of_a_perfectly_calibrated_bin_is_zero_and_weights_by_size():
    proba = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(proba, np.array([0, 0, 0, 1])) == 0.0
    assert expected_calibration_error(proba, np.array([0, 0, 1, 1])) == pytest.approx(0.25)


def test_brier_score_by_hand_and_against_scikit_learn_for_two_classes():
    assert brier_score(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 1])) == 1.0
    assert brier_score(np.array([[0.7, 0.2, 0.1]]), np.array([1])) == pytest.approx(0.49 + 0.64 + 0.01)
    proba, y = _random_predictions(k=2)
    # scikit-learn's binary Brier score is the squared error of one column: half the two-column sum
    assert brier_score(proba, y) == pytest.approx(2 * skm.brier_score_loss(y, proba[:, 1]))


def test_confusion_matrix_and_per_class_scores_match_scikit_learn():
    proba, y = _random_predictions()
    predicted = proba.argmax(1)
    matrix = confusion_matrix(y, predicted, 4)
    np.testing.assert_array_equal(matrix, skm.confusion_matrix(y, predicted, labels=range(4)))
    scores = precision_recall_f1(matrix, ["a", "b", "c", "d"])
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, predicted, labels=range(4), zero_division=np.nan)
    for k, name in enumerate("abcd"):
        assert scores[name]["precision"] == pytest.approx(precision[k])
        assert scores[name]["recall"] == pytest.approx(recall[k])
        assert scores[name]["f1"] == pytest.approx(f1[k])
        assert scores[name]["support"] == support[k]


def test_undefined_per_class_scores_are_none_not_zero():
    # class c: no row and never predicted; class b: rows but never predicted
    scores = precision_recall_f1(confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 0]), 3), ["a", "b", "c"])
    assert scores["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert scores["b"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2}
    assert scores["a"]["precision"] == pytest.approx(1 / 3) and scores["a"]["recall"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    positive = rng.integers(0, 8, 200).astype(float) + 1.5  # integers: many ties
    negative = rng.integers(0, 8, 150).astype(float)
    labels = np.r_[np.ones(200), np.zeros(150)]
    scores = np.r_[positive, negative]
    assert auroc(positive, negative) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([0.0]), np.array([1.0])) == 0.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpr_at_95_tpr_matches_scikit_learns_roc_curve(seed):
    rng = np.random.default_rng(seed)
    positive, negative = rng.normal(1.0, 1.0, 333), rng.normal(0.0, 1.0, 257)
    if seed == 2:
        positive, negative = np.round(positive, 1), np.round(negative, 1)  # ties across the two sets
    fpr, tpr, _ = skm.roc_curve(np.r_[np.ones(333), np.zeros(257)], np.r_[positive, negative], drop_intermediate=False)
    assert fpr_at_tpr(positive, negative) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_classification_report_has_every_metric():
    proba, y = _random_predictions(n=50, k=3)
    report = classification_report(np.log(proba), y, ["x", "y", "z"])
    assert set(report) == {"accuracy", "nll", "ece", "brier", "n", "per_class", "confusion_matrix"}
    assert np.sum(report["confusion_matrix"]) == 50 and report["n"] == 50
    assert report["nll"] == pytest.approx(skm.log_loss(y, proba, labels=range(3)))
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, proba.argmax(1)))
