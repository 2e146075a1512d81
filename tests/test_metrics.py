"""Metrics against hand-computed examples and scikit-learn: ECE and the reliability table (ours), the
report of ``evaluate`` (accuracy, NLL, Brier, per-class scores, confusion matrix) and the OOD scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from flowgmm_cli.metrics import (
    classification_report,
    expected_calibration_error,
    fpr_at_tpr,
    negative_log_likelihood,
    ood_report,
    reliability_bins,
)


def _log(proba: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(proba)


def _random_predictions(n: int = 300, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return proba, rng.integers(0, k, n)


# ------------------------------------------------------------------------ ECE and reliability
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
    np.testing.assert_allclose(table["upper"], [0.2, 0.4, 0.6, 0.8, 1.0])
    zero = reliability_bins(np.array([[0.0, 0.0]]), np.array([0]), bins=5)  # a degenerate row still lands in a bin
    assert zero["count"].tolist() == [1, 0, 0, 0, 0]


def test_reliability_bins_average_confidence_and_accuracy_within_a_bin():
    # bins of 1/4: 0.3 (wrong) and 0.45 (right) share (0.25, 0.5]; 0.9, 0.8 and 0.76 share (0.75, 1]
    proba = np.array([[0.3, 0.3, 0.4], [0.45, 0.3, 0.25], [0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.76, 0.24, 0.0]])
    y = np.array([1, 0, 0, 0, 0])  # the first row predicts class 2, the fourth class 1
    table = reliability_bins(proba, y, bins=4)
    assert table["count"].tolist() == [0, 2, 0, 3]
    np.testing.assert_allclose(table["confidence"][[1, 3]], [(0.4 + 0.45) / 2, (0.9 + 0.8 + 0.76) / 3])
    np.testing.assert_allclose(table["accuracy"][[1, 3]], [1 / 2, 2 / 3])
    expected = (2 * abs(0.5 - 0.425) + 3 * abs(2 / 3 - 0.82)) / 5
    assert expected_calibration_error(proba, y, bins=4) == pytest.approx(expected, abs=1e-12)


def test_ece_of_a_perfectly_calibrated_bin_is_zero_and_weights_by_size():
    proba = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(proba, np.array([0, 0, 0, 1])) == 0.0
    assert expected_calibration_error(proba, np.array([0, 0, 1, 1])) == pytest.approx(0.25)


def test_nll_is_exact_where_a_probability_underflows():
    log_proba = np.array([[-1000.0, 0.0], [np.log(0.25), np.log(0.75)]])
    assert negative_log_likelihood(log_proba, np.array([0, 1])) == pytest.approx((1000.0 - np.log(0.75)) / 2)
    # scikit-learn clips the probability, so its log loss is far smaller here
    assert skm.log_loss([0, 1], np.exp(log_proba), labels=[0, 1]) < 20


# ---------------------------------------------------------------------- the evaluate report
# Four classes a-d, six rows. Rows 1, 2 and 5 tie for the largest probability: the first class wins,
# as in numpy's argmax. Class c is never predicted (precision undefined), class d has no row and is
# never predicted (every score undefined).
HAND_PROBA = np.array(
    [
        [0.7, 0.2, 0.1, 0.0],  # a, right
        [0.4, 0.4, 0.2, 0.0],  # tie a/b -> a, right
        [0.5, 0.5, 0.0, 0.0],  # tie a/b -> a, wrong (b)
        [0.1, 0.6, 0.3, 0.0],  # b, right
        [0.2, 0.5, 0.3, 0.0],  # b, wrong (c)
        [0.3, 0.3, 0.3, 0.1],  # tie a/b/c -> a, right
    ]
)
HAND_Y = np.array([0, 0, 1, 1, 2, 0])


def test_classification_report_of_a_hand_example_with_ties():
    report = classification_report(_log(HAND_PROBA), HAND_Y, ["a", "b", "c", "d"])
    assert report["n"] == 6
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"] == [[3, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert report["per_class"]["a"] == pytest.approx({"precision": 3 / 4, "recall": 1.0, "f1": 6 / 7, "support": 3})
    assert report["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert report["per_class"]["c"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["d"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert report["nll"] == pytest.approx(-np.mean(np.log([0.7, 0.4, 0.5, 0.6, 0.3, 0.3])))
    # squared distance of each row to its one-hot label: 0.14, 0.56, 0.5, 0.26, 0.78, 0.68
    assert report["brier"] == pytest.approx(2.92 / 6)
    # every confidence in a bin of its own, except the two 0.5 rows (both wrong)
    assert report["ece"] == pytest.approx((0.3 + 0.6 + 2 * 0.5 + 0.4 + 0.7) / 6)


def test_classification_report_of_the_hand_example_agrees_with_scikit_learn():
    report = classification_report(_log(HAND_PROBA), HAND_Y, ["a", "b", "c", "d"])
    predicted = HAND_PROBA.argmax(1)
    _agree_with_scikit_learn(report, HAND_PROBA, HAND_Y, predicted)


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_report_agrees_with_scikit_learn_on_random_predictions(seed):
    proba, y = _random_predictions(n=200, k=4, seed=seed)
    proba = np.round(proba, 1)  # many ties between classes
    proba /= proba.sum(1, keepdims=True)
    report = classification_report(_log(proba), y, ["w", "x", "y", "z"])
    _agree_with_scikit_learn(report, proba, y, proba.argmax(1))
    assert report["nll"] == pytest.approx(-np.mean(_log(proba)[np.arange(200), y]))
    assert report["ece"] == pytest.approx(expected_calibration_error(proba, y), abs=1e-9)


def _agree_with_scikit_learn(report: dict, proba: np.ndarray, y: np.ndarray, predicted: np.ndarray) -> None:
    k = proba.shape[1]
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, predicted, labels=range(k)).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, predicted, labels=range(k), zero_division=np.nan)
    for index, scores in enumerate(report["per_class"].values()):
        for name, expected in (("precision", precision), ("recall", recall), ("f1", f1)):
            if np.isnan(expected[index]):
                assert scores[name] is None, (index, name)
            else:
                assert scores[name] == pytest.approx(expected[index]), (index, name)
        assert scores["support"] == support[index]
    one_hot = np.eye(k)[y]
    assert report["brier"] == pytest.approx(np.mean(((proba - one_hot) ** 2).sum(1)))
    if (proba[np.arange(len(y)), y] > 0).all():
        assert report["nll"] == pytest.approx(skm.log_loss(y, proba, labels=range(k)))


# ----------------------------------------------------------------------------------- OOD scores
def test_ood_report_of_a_hand_example_with_ties():
    # 12 pairs (in, out): in 3 beats all three; each in 2 beats 0 and 1 and ties 2 (half a pair);
    # in 1 beats 0 and ties 1. AUROC = (3 + 2.5 + 2.5 + 1.5) / 12.
    log_px_in, log_px_out = np.array([3.0, 2.0, 2.0, 1.0]), np.array([2.0, 0.0, 1.0])
    report = ood_report(log_px_in, log_px_out)
    assert report["auroc"] == pytest.approx(9.5 / 12)
    # 95% of the in rows means all four: the threshold is 1, and out rows at 1 or above are accepted
    assert report["fpr_at_95_tpr"] == pytest.approx(2 / 3)
    assert (report["n_in"], report["n_out"]) == (4, 3)
    truth = np.r_[np.ones(4), np.zeros(3)]
    assert report["auroc"] == pytest.approx(skm.roc_auc_score(truth, np.r_[log_px_in, log_px_out]))


def test_ood_report_of_separated_reversed_and_identical_scores():
    assert ood_report(np.array([2.0, 3.0]), np.array([0.0, 1.0]))["auroc"] == 1.0
    assert ood_report(np.array([2.0, 3.0]), np.array([0.0, 1.0]))["fpr_at_95_tpr"] == 0.0
    assert ood_report(np.array([0.0]), np.array([1.0]))["auroc"] == 0.0
    same = ood_report(np.array([1.0, 1.0]), np.array([1.0, 1.0, 1.0]))
    assert same["auroc"] == 0.5 and same["fpr_at_95_tpr"] == 1.0


def test_fpr_at_tpr_counts_rows_at_the_threshold_as_accepted():
    positive = np.arange(20.0)  # 19 of 20 is exactly 95%: the threshold is 1
    assert fpr_at_tpr(positive, np.array([0.5, 1.0, 30.0])) == pytest.approx(2 / 3)
    assert fpr_at_tpr(positive, np.array([0.5, 0.99, 30.0])) == pytest.approx(1 / 3)
    assert fpr_at_tpr(positive, np.array([-0.5, 0.99, 30.0]), tpr=1.0) == pytest.approx(2 / 3)  # threshold 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_report_agrees_with_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    positive = rng.integers(0, 8, 200).astype(float) + 1.5  # integers: many ties
    negative = rng.integers(0, 8, 150).astype(float) + (0.5 if seed == 2 else 0.0)  # seed 2: ties across the sets
    truth = np.r_[np.ones(200), np.zeros(150)]
    report = ood_report(positive, negative)
    assert report["auroc"] == pytest.approx(skm.roc_auc_score(truth, np.r_[positive, negative]), abs=1e-12)
    # AUROC by counting pairs, ties as halves
    pairs = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    assert report["auroc"] == pytest.approx(pairs / (200 * 150), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(truth, np.r_[positive, negative], drop_intermediate=False)
    assert report["fpr_at_95_tpr"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    # and by hand: the highest threshold that keeps 95% of the positives
    threshold = max(t for t in np.unique(positive) if np.mean(positive >= t) >= 0.95)
    assert report["fpr_at_95_tpr"] == pytest.approx(np.mean(negative >= threshold))
