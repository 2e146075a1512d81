"""The Table 1 baselines: each learns an easy problem, kNN's leave-one-out k, stable RBF predictions, repeatability."""

from __future__ import annotations

import numpy as np
import pytest

from flowgmm_cli.baselines import MLP, KNN, LabelSpreadingBaseline, LogisticRegressionBaseline, PiModel, loo_best_k
from flowgmm_cli.benchmark import FlowGMMMethod


def blobs(seed: int = 0, per_class: int = 100, dim: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes in ``dim`` dimensions, 3 standard deviations apart."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(3, dim)
    y = np.repeat(np.arange(3), per_class)
    return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


FAST = {
    "knn": KNN(),
    "logistic-regression": LogisticRegressionBaseline(),
    "mlp": MLP(steps=150),
    "label-spreading-knn": LabelSpreadingBaseline("knn"),
    "label-spreading-rbf": LabelSpreadingBaseline("rbf"),
    "pi-model": PiModel(steps=150),
    "flowgmm": FlowGMMMethod(options={"epochs": 20}),
}


@pytest.mark.parametrize("name", list(FAST))
def test_each_method_beats_chance_clearly(name):
    X, y = blobs(0)
    X_test, y_test = blobs(1, per_class=50)
    labeled = np.concatenate([np.flatnonzero(y == k)[:5] for k in range(3)])
    rest = np.setdiff1d(np.arange(len(y)), labeled)
    predicted = FAST[name].fit_predict(X[labeled], y[labeled], X[rest], X_test, seed=0)
    assert predicted.shape == y_test.shape
    assert np.mean(predicted == y_test) > 0.8, name  # chance is 1/3


def test_loo_k_excludes_the_row_itself_and_prefers_the_smallest_k_on_ties():
    X = np.array([[0.0], [1.0], [1.5], [2.0], [3.0], [10.0], [11.0], [12.0], [13.0]])
    y = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1])
    # k=1 errs on the stray 1.5 and on both its neighbours (3/9); k=3 only on the stray one; k=5 ties k=3.
    assert loo_best_k(X, y, (1, 3, 5)) == 3
    clean = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    # 1 and 3 are both perfect; 5 takes 3 votes of the other class for every row.
    assert loo_best_k(clean, np.array([0, 0, 0, 1, 1, 1]), (5, 3, 1)) == 1
    assert loo_best_k(clean[:2], np.array([0, 1]), (3, 5)) == 1, "candidates as large as the data fall back to 1"


def test_rbf_label_spreading_labels_a_test_row_far_from_every_pool_row():
    """The far row's kernel weights all underflow to 0; scikit-learn's own predict would divide 0 by 0 there."""
    X, y = blobs(0)
    far = np.array([[0.0, 200.0, 0.0, 0.0, 0.0]], dtype=np.float32)  # beyond class 1's centre (0, 3, 0, 0, 0)
    predicted = LabelSpreadingBaseline("rbf").fit_predict(X[y >= 0][::10], y[::10], X[1::10], far, seed=0)
    assert predicted.tolist() == [1]


def test_knn_label_spreading_reaches_rows_many_hops_from_a_label():
    """Two lines of 200 rows, one label at the start of each; the test rows lie about 40 graph hops away."""
    line = np.arange(200) * 0.1
    X = np.concatenate([np.stack([line, np.zeros(200)], 1), np.stack([line, np.full(200, 100.0)], 1)])
    y = np.repeat([0, 1], 200)
    labeled = np.array([0, 200])
    rest = np.setdiff1d(np.arange(400), labeled)
    X_test = np.array([[19.0, 0.0], [19.0, 100.0]])
    assert LabelSpreadingBaseline("knn").fit_predict(X[labeled], y[labeled], X[rest], X_test, seed=0).tolist() == [0, 1]


@pytest.mark.parametrize("method", [MLP(steps=30), PiModel(steps=30)], ids=["mlp", "pi-model"])
def test_torch_baselines_repeat_with_a_seed_and_change_with_another(method):
    X, y = blobs(0, per_class=30)
    X_noisy = X + np.random.default_rng(3).normal(0, 2.0, X.shape).astype(np.float32)  # so that seeds can disagree
    runs = [method.fit_predict(X_noisy[::3], y[::3], X_noisy[1::3], X_noisy, seed) for seed in (0, 0, 1)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_pi_model_consistency_weight_ramps_up_to_its_maximum():
    model = PiModel(steps=100, consistency=10.0, ramp_up=0.4)
    weights = [model._weight(step) for step in (0, 20, 40, 99)]
    assert weights[0] == pytest.approx(10.0 * np.exp(-5.0))
    assert weights[0] < weights[1] < weights[2] == pytest.approx(10.0) == weights[3]
