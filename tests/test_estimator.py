"""FlowGMMClassifier: accuracy on two moons, the scikit-learn API, labels, options reaching training,
validation rows, calibration, batch invariance, persistence and scikit-learn's checks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli import fits as fits_module
from flowgmm_cli import estimator as estimator_module
from flowgmm_cli.errors import InputError, OptionError
from flowgmm_cli.metrics import negative_log_likelihood
from flowgmm_cli.options import TrainOptions
from flowgmm_cli.training import Schedule
from flowgmm_testutils import state_equal

SMALL = {"epochs": 3, "hidden": 16, "coupling_layers": 2, "device": "cpu", "calibration_folds": 0}  # calibration has its own tests


def _moons_with_labels(n: int = 1000, per_class: int = 5, seed: int = 0):
    """Two moons (noise 0.05) with ``per_class`` labeled rows per class and -1 everywhere else."""
    X, y = make_moons(n, noise=0.05, random_state=seed)
    rng = np.random.default_rng(seed)
    partial = np.full_like(y, -1)
    for label in (0, 1):
        rows = rng.choice(np.flatnonzero(y == label), per_class, replace=False)
        partial[rows] = label
    return X, y, partial


@pytest.fixture(scope="module")
def moons():
    X, y, partial = _moons_with_labels()
    X_test, y_test = make_moons(1000, noise=0.05, random_state=1)
    return X, y, partial, X_test, y_test


@pytest.fixture(scope="module")
def default_classifier(moons):
    X, _, partial, _, _ = moons
    return FlowGMMClassifier(device="cpu").fit(X, partial)


@pytest.fixture(scope="module")
def small_moons():
    """300 rows with 5 labels per class, then 100 more rows to predict on."""
    X, y, partial = _moons_with_labels(300, per_class=5, seed=2)
    X_new, y_new = make_moons(100, noise=0.05, random_state=3)
    return X, y, partial, X_new, y_new


@pytest.fixture(scope="module")
def small_classifier(small_moons):
    X, _, partial, _, _ = small_moons
    return FlowGMMClassifier(**SMALL).fit(X, partial)


class Spy:
    """Records what ``fit`` hands to the training loop (source, objective, schedule, validation)
    and the model's weights after every epoch, by wrapping the ``train`` that :mod:`~flowgmm_cli.fits` calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs: list[dict] = []
        real_train = fits_module.train

        def spying_train(model, source, objective, schedule, validation=None, **kwargs):
            run = {"model": model, "source": source, "objective": objective, "schedule": schedule, "validation": validation, "weights": []}
            self.runs.append(run)
            inner = kwargs.pop("callback", None)

            class Weights:
                def on_step(self, step, total_steps):
                    if inner is not None:
                        inner.on_step(step, total_steps)

                def on_epoch_end(self, report):
                    run["weights"].append({k: v.detach().clone() for k, v in model.state_dict().items()})
                    if inner is not None:
                        inner.on_epoch_end(report)

            return real_train(model, source, objective, schedule, validation, callback=Weights(), **kwargs)

        monkeypatch.setattr(fits_module, "train", spying_train)

    @property
    def last(self) -> dict:
        return self.runs[-1]


def _rows(array) -> set[tuple]:
    return {tuple(row) for row in np.asarray(array, dtype=np.float32).tolist()}


# ------------------------------------------------------------------------------------ accuracy


@pytest.mark.slow
def test_default_options_classify_two_moons_from_ten_labels(moons, default_classifier):
    """Two moons from 1,000 rows and 5 labels per class (paper, figure 3). With these rows and labels
    the default options reach at least 0.998 for random_state 0, 1 and 2; the threshold holds for
    this draw, not for every one (make_moons seed 2 with random_state 0 reaches 0.92)."""
    X, y, partial, X_test, y_test = moons
    assert (partial != -1).sum() == 10
    unlabeled = partial == -1
    transductive = float((default_classifier.predict(X[unlabeled]) == y[unlabeled]).mean())
    held_out = float(default_classifier.score(X_test, y_test))
    assert min(transductive, held_out) >= 0.98, (
        f"default FlowGMMClassifier on make_moons(1000, noise=0.05) with 5 labels per class reached only "
        f"{transductive:.3f} on the unlabeled rows and {held_out:.3f} on held-out rows (expected >= 0.98)"
    )


@pytest.mark.slow
def test_semi_supervised_beats_labeled_only(moons, default_classifier):
    """The same options on the ten labeled rows alone, for as many epochs as the semi-supervised run
    (750; the labeled-only default of 2,000 takes twice as long and scores no better, 0.928)."""
    X, _, partial, X_test, y_test = moons
    labeled = partial != -1
    labeled_only = FlowGMMClassifier(epochs=default_classifier.options_.epochs, device="cpu").fit(X[labeled], partial[labeled])
    semi = default_classifier.score(X_test, y_test)
    supervised = labeled_only.score(X_test, y_test)
    assert semi > supervised + 0.03, f"semi-supervised {semi:.3f} vs labeled-only {supervised:.3f}"


# ------------------------------------------------------------------------------------ the API


def test_fit_predict_shapes_and_types(small_moons, small_classifier):
    _, _, _, X_new, y_new = small_moons
    clf = small_classifier
    rows = X_new[:50]
    assert clf.classes_.tolist() == [0, 1]
    assert clf.n_features_in_ == 2
    assert len(clf.history_) == SMALL["epochs"]

    predicted = clf.predict(rows)
    assert isinstance(predicted, np.ndarray) and predicted.shape == (50,)
    assert predicted.dtype.kind == "i" and set(predicted.tolist()) <= {0, 1}

    proba = clf.predict_proba(rows)
    assert proba.shape == (50, 2) and proba.dtype == np.float64
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(clf.predict_log_proba(rows), np.log(proba), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(predicted, clf.classes_[proba.argmax(1)])

    score = clf.score(rows, y_new[:50])
    assert isinstance(score, float)
    assert score == (predicted == y_new[:50]).mean()

    joint = clf.joint_log_prob(rows)
    assert joint.shape == (50, 2) and joint.dtype == np.float64
    log_density = clf.score_samples(rows)
    assert log_density.shape == (50,) and log_density.dtype == np.float64
    np.testing.assert_allclose(log_density, np.logaddexp(joint[:, 0], joint[:, 1]), rtol=1e-12)
    # Far-away points are less likely than training-like points.
    assert clf.score_samples(np.array([[30.0, -30.0]]))[0] < log_density.min()

    Z = clf.encode(rows)
    assert Z.shape == (50, clf.latent_dim_) == (50, 2) and Z.dtype == np.float64
    np.testing.assert_allclose(clf.decode(Z), rows, atol=1e-6)
    assert clf.means_.shape == (2, 2) and clf.temperature_ >= 1.0  # calibrated by default: never sharper than trained

    samples, labels = clf.sample(7)
    assert samples.shape == (7, 2) and samples.dtype == np.float64
    assert labels.shape == (7,) and set(labels.tolist()) <= {0, 1}
    np.testing.assert_array_equal(samples, clf.sample(7)[0])
    assert not np.array_equal(samples, clf.sample(7, random_state=123)[0])

    # Lists work as well as arrays; a wrong number of features is refused.
    np.testing.assert_array_equal(clf.predict(rows.tolist()), predicted)
    with pytest.raises(ValueError, match="features"):
        clf.predict(np.zeros((3, 5)))


def test_fit_returns_self_and_is_repeatable(small_moons, small_classifier):
    X, _, partial, X_new, _ = small_moons
    a = FlowGMMClassifier(**SMALL)
    assert a.fit(X, partial) is a
    assert state_equal(a.model_.state_dict(), small_classifier.model_.state_dict())
    np.testing.assert_array_equal(a.predict_proba(X_new), small_classifier.predict_proba(X_new))
    c = FlowGMMClassifier(**{**SMALL, "random_state": 1}).fit(X, partial)
    assert not np.array_equal(a.predict_proba(X_new), c.predict_proba(X_new))


def test_unknown_parameter_is_a_type_error():
    with pytest.raises(TypeError, match="coupling"):
        FlowGMMClassifier(couplings=3)


_BEFORE_FIT = {
    "predict": lambda clf: clf.predict(np.zeros((3, 2))),
    "score": lambda clf: clf.score(np.zeros((3, 2)), [0, 1, 0]),
    "predict_proba": lambda clf: clf.predict_proba(np.zeros((3, 2))),
    "predict_log_proba": lambda clf: clf.predict_log_proba(np.zeros((3, 2))),
    "score_samples": lambda clf: clf.score_samples(np.zeros((3, 2))),
    "joint_log_prob": lambda clf: clf.joint_log_prob(np.zeros((3, 2))),
    "encode": lambda clf: clf.encode(np.zeros((3, 2))),
    "decode": lambda clf: clf.decode(np.zeros((3, 2))),
    "sample": lambda clf: clf.sample(3),
    "sample_latent": lambda clf: clf.sample_latent(3),
    "calibrate": lambda clf: clf.calibrate(np.zeros((3, 2)), [0, 1, 0]),
    "means_": lambda clf: clf.means_,
    "temperature_": lambda clf: clf.temperature_,
    "save": lambda clf: clf.save("never-written.safetensors"),
}
@pytest.mark.parametrize("method", list(_BEFORE_FIT))
def test_methods_before_fit_raise_not_fitted_error(method, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFittedError):
        _BEFORE_FIT[method](FlowGMMClassifier(**SMALL))
    assert not (tmp_path / "never-written.safetensors").exists()


# ------------------------------------------------------------------------------------ labels


def _string_labels(partial: np.ndarray) -> np.ndarray:
    labels = np.array(["cat", "dog"], dtype=object)[np.clip(partial, 0, 1)]
    labels[partial == -1] = -1
    return labels


def test_string_labels_with_minus_one_for_unlabeled(small_moons, small_classifier, tmp_path):
    X, _, partial, X_new, _ = small_moons
    labels = _string_labels(partial)
    assert labels.dtype == object and (labels == -1).sum() == len(labels) - 10
    clf = FlowGMMClassifier(**SMALL).fit(X, labels)
    assert clf.classes_.tolist() == ["cat", "dog"]
    predicted = clf.predict(X_new)
    # Same rows, same seed, integer labels: the same model (the classes sort the same way).
    np.testing.assert_array_equal(clf.predict_proba(X_new), small_classifier.predict_proba(X_new))
    np.testing.assert_array_equal(predicted, np.array(["cat", "dog"], dtype=object)[small_classifier.predict(X_new)])
    path = tmp_path / "strings.safetensors"
    clf.save(path)
    loaded = FlowGMMClassifier.load(path)
    assert loaded.classes_.tolist() == ["cat", "dog"]
    np.testing.assert_array_equal(loaded.predict(X_new), predicted)


def test_python_list_labels_with_minus_one_for_unlabeled(small_moons, small_classifier):
    """A plain list mixing class names and -1 is the natural way to write partial labels."""
    X, _, partial, X_new, _ = small_moons
    labels = _string_labels(partial).tolist()
    assert isinstance(labels, list) and labels.count(-1) == len(labels) - 10
    clf = FlowGMMClassifier(**SMALL).fit(X, labels)
    assert clf.classes_.tolist() == ["cat", "dog"], f"-1 became a class: classes_ = {clf.classes_.tolist()}"
    np.testing.assert_array_equal(clf.predict_proba(X_new), small_classifier.predict_proba(X_new))


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 0, 0, -1, -1, -1]),
        np.array([-1, -1, -1, -1, -1, -1]),
        np.array([1, 1, 1, 1, 1, 1]),
        np.array(["a", "a", -1, -1, -1, -1], dtype=object),
        ["a", "a", -1, -1, -1, -1],
    ],
    ids=["one-class-and-unlabeled", "all-unlabeled", "one-class", "one-string-class", "one-string-class-list"],
)
def test_fewer_than_two_classes_raises_value_error_mentioning_minus_one(labels):
    X = np.arange(12, dtype=float).reshape(6, 2)
    with pytest.raises(InputError, match="-1") as raised:
        FlowGMMClassifier(**SMALL).fit(X, labels)
    assert isinstance(raised.value, ValueError)
    assert "at least 2 classes" in str(raised.value)


# ------------------------------------------------------------------------------------ options


def test_zero_valued_options_stay_zero_and_none_is_resolved(small_moons, monkeypatch):
    X, _, partial, _, _ = small_moons
    spy = Spy(monkeypatch)
    zeros = {"hidden_layers": 0, "labeled_noise": 0.0, "unlabeled_weight": 0.0, "dropout": 0.0, "weight_decay": 0.0, "grad_clip": 0.0, "projection_dim": 0, "consistency_weight": 0.0}
    clf = FlowGMMClassifier(**SMALL, **zeros).fit(X, partial)
    for name, value in zeros.items():
        assert getattr(clf.options_, name) == value and getattr(clf.options_, name) is not None, name
    run = spy.last
    assert run["source"].labeled_noise is None
    assert [weight for _, weight in run["objective"].terms] == [1.0, 0.0]
    assert run["schedule"].weight_decay == 0.0 and run["schedule"].grad_clip == 0.0
    assert all(len(layer.net) == 1 for layer in clf.model_.flow.layers if hasattr(layer, "net"))
    assert clf.get_params()["hidden_layers"] == 0  # the parameters themselves stay as given

    defaults = FlowGMMClassifier(**SMALL).fit(X, partial)
    assert defaults.get_params()["labeled_noise"] is None
    assert defaults.options_.hidden_layers == 1
    assert defaults.options_.unlabeled_weight == 1.0
    assert 0 < defaults.options_.labeled_noise < 0.2
    assert spy.last["source"].labeled_noise is not None


def test_options_reach_the_model_source_objective_and_schedule(small_moons, monkeypatch):
    X, _, partial, _, _ = small_moons
    spy = Spy(monkeypatch)
    params = dict(
        coupling_layers=3, hidden=24, hidden_layers=2, dropout=0.2, learn_means=True, learn_weights=True, variance=0.5,
        unlabeled_weight=0.4, labeled_noise=0.1, epochs=2, batch_size=50, labeled_batch_size=4, lr=0.02,
        weight_decay=0.3, grad_clip=2.5, random_state=7, device="cpu", calibration_folds=0, consistency_weight=0.5,
    )  # fmt: skip
    clf = FlowGMMClassifier(**params).fit(X, partial)
    run = spy.last
    assert run["schedule"] == Schedule(epochs=2, lr=0.02, weight_decay=0.3, grad_clip=2.5, seed=7)
    assert [weight for _, weight in run["objective"].terms] == [1.0, 0.4, 0.5]
    source = run["source"]
    assert (source.unlabeled_batch, source.labeled_batch, source.steps_per_epoch) == (50, 4, math.ceil(290 / 50))
    torch.testing.assert_close(source.labeled_noise.scale, 0.1 * torch.from_numpy(X.std(0)).float(), rtol=1e-4, atol=0)
    model = clf.model_
    spec = model.flow.spec()
    assert (spec["coupling_layers"], spec["hidden"], spec["hidden_layers"], spec["dropout"], spec["seed"]) == (3, 24, 2, 0.2, 7)
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in model.flow.modules()) == 3 * 2
    assert model.prior.means.requires_grad and model.prior.weight_logits.requires_grad
    assert float(model.prior.log_variance.exp()) == pytest.approx(0.5)
    assert len(clf.history_) == 2
    assert TrainOptions(**clf.get_params()) == TrainOptions(**params)


# ------------------------------------------------------------------------------------ validation rows


def _unlabeled_rows(source) -> np.ndarray:
    """Every unlabeled row a data source draws from, in store order."""
    store = source.unlabeled
    return torch.cat([store.read(*bounds) for bounds in store.chunk_bounds()]).numpy()


@pytest.fixture(scope="module")
def forty_labels(moons):
    """300 rows of two moons, the first 40 labeled (unequal classes), the rest -1."""
    X, y, _, _, _ = moons
    labels = np.full(300, -1)
    labels[:40] = y[:40]
    return X[:300], labels


def test_val_fraction_holds_out_each_classes_share_from_training(forty_labels, monkeypatch):
    X, labels = forty_labels
    spy = Spy(monkeypatch)
    clf = FlowGMMClassifier(**SMALL, val_fraction=0.25).fit(X, labels)
    source, (x_val, y_val) = spy.last["source"], spy.last["validation"]
    assert len(_rows(X)) == len(X), "the test needs distinct rows"
    held_out, trained_on = _rows(x_val.numpy()), _rows(source.x_labeled.numpy())
    assert not held_out & trained_on, "a validation row is among the labeled training rows"
    assert not held_out & _rows(_unlabeled_rows(source)), "a validation row is among the unlabeled training rows"
    assert held_out | trained_on == _rows(X[labels != -1])
    assert _rows(_unlabeled_rows(source)) == _rows(X[labels == -1])
    # Per class: ceil(25 %) of its labeled rows held out, the rest kept, with the right labels.
    for code in (0, 1):
        n_class = int((labels == code).sum())
        assert int((y_val == code).sum()) == math.ceil(0.25 * n_class)
        assert int((source.y_labeled == code).sum()) == n_class - math.ceil(0.25 * n_class)
    row_label = {tuple(row): label for row, label in zip(X.astype(np.float32).tolist(), labels)}
    assert [row_label[tuple(row)] for row in x_val.tolist()] == y_val.tolist()
    assert all(np.isfinite(h["val_accuracy"]) and np.isfinite(h["val_nll"]) for h in clf.history_)


def test_small_val_fraction_still_validates_on_one_row_per_class(small_moons, monkeypatch):
    """5 labeled rows per class and val_fraction=0.1: the share is rounded up to one row per class."""
    X, _, partial, _, _ = small_moons
    spy = Spy(monkeypatch)
    clf = FlowGMMClassifier(**SMALL, val_fraction=0.1).fit(X, partial)
    _, y_val = spy.last["validation"]
    assert sorted(y_val.tolist()) == [0, 1]
    assert len(spy.last["source"].x_labeled) == 8
    assert all(np.isfinite(h["val_accuracy"]) and np.isfinite(h["val_nll"]) for h in clf.history_)


def test_validation_split_that_empties_a_class_raises_option_error():
    X, _ = make_moons(60, noise=0.05, random_state=0)
    labels = np.full(60, -1)
    labels[:10] = 0
    labels[10] = 1  # a single labeled row of class 1: any held-out share takes it
    with pytest.raises(OptionError, match="val_fraction") as raised:
        FlowGMMClassifier(**SMALL, val_fraction=0.05).fit(X, labels)
    assert "Class '1'" in str(raised.value) and raised.value.option == "val_fraction"
    labels[11] = 1  # two rows, 0.5 holds one out and keeps one
    FlowGMMClassifier(**{**SMALL, "epochs": 1}, val_fraction=0.5).fit(X, labels)
    with pytest.raises(OptionError, match="val_fraction"):
        FlowGMMClassifier(**SMALL, val_fraction=0.6).fit(X, labels)


def test_explicit_validation_rows_choose_the_best_epoch(forty_labels, monkeypatch):
    X, labels = forty_labels
    X_val, y_true = make_moons(60, noise=0.05, random_state=5)
    # Labels that contradict the training labels: the better the fit, the worse the validation
    # score, so an early epoch is the best one.
    y_val = 1 - y_true
    spy = Spy(monkeypatch)
    clf = FlowGMMClassifier(**{**SMALL, "epochs": 6, "lr": 3e-3}).fit(X, labels, X_val=X_val, y_val=y_val)
    run = spy.last
    assert _rows(run["validation"][0].numpy()) == _rows(X_val)
    assert len(run["source"].x_labeled) == 40  # no labeled row was held out
    best = max(clf.history_, key=lambda h: (h["val_accuracy"], -h["val_nll"], -h["epoch"]))["epoch"]
    assert best < 6, "the test needs a best epoch before the last one"
    trained = {k: v for k, v in clf.model_.state_dict().items() if k != "prior.log_temperature"}  # set after training
    assert state_equal(trained, {k: v for k, v in run["weights"][best - 1].items() if k != "prior.log_temperature"})
    assert not state_equal(trained, {k: v for k, v in run["weights"][-1].items() if k != "prior.log_temperature"})
    assert clf.temperature_ == pytest.approx(copy.deepcopy(clf).calibrate(X_val, y_val).temperature_, rel=1e-6)  # the validation rows calibrate
    with pytest.raises(InputError, match="not a class"):
        FlowGMMClassifier(**SMALL).fit(X, labels, X_val=X_val[:2], y_val=[0, 7])


# ------------------------------------------------------------------------------------ calibration


def test_calibrate_finds_a_temperature_above_one_for_an_over_confident_model(small_moons, tmp_path):
    """Validation labels with a fifth of them wrong: the near-certain model needs a wider variance."""
    X, _, partial, X_new, y_new = small_moons
    clf = FlowGMMClassifier(**SMALL, learn_weights=False).fit(X, partial)
    noisy = y_new.copy()
    noisy[::5] = 1 - noisy[::5]
    before_proba, before_predict = clf.predict_log_proba(X_new), clf.predict(X_new)
    assert clf.calibrate(X_new, noisy) is clf
    temperature = clf.temperature_
    assert temperature > 1.5
    after = clf.predict_log_proba(X_new)
    assert negative_log_likelihood(after, noisy) < negative_log_likelihood(before_proba, noisy) - 0.1
    np.testing.assert_array_equal(clf.predict(X_new), before_predict)  # equal weights: the argmax is unchanged
    np.testing.assert_allclose(clf.predict_log_proba(X_new, temperature=1.0), before_proba, rtol=1e-9, atol=1e-12)
    assert clf.calibrate(X_new, noisy).temperature_ == pytest.approx(temperature, rel=1e-6)
    path = tmp_path / "calibrated.safetensors"
    clf.save(path)
    loaded = FlowGMMClassifier.load(path)
    assert loaded.temperature_ == pytest.approx(temperature, rel=1e-6)
    np.testing.assert_array_equal(loaded.predict_proba(X_new), clf.predict_proba(X_new))


# ------------------------------------------------------------------------------------ batch invariance


@pytest.mark.parametrize("which, step", [("small_classifier", 5), pytest.param("default_classifier", 10, marks=pytest.mark.slow)])
def test_each_rows_results_do_not_depend_on_its_batch(which, step, request):
    """score_samples, predict_proba and encode of a row alone equal its row in a batch of 500 (every
    fifth row of the batch for the small model, every tenth for the default one: each call copies
    the model, which makes 1,500 single-row calls slow).

    Not bit for bit: the float64 flow's matrix products round the last bits differently for one row
    and for 500 (relative differences up to about 2e-14); float32 inference differs by about 1e-7.
    """
    clf = request.getfixturevalue(which)
    X = make_moons(500, noise=0.1, random_state=7)[0] * 1.3
    for method in ("score_samples", "predict_proba", "encode"):
        batch = getattr(clf, method)(X)
        alone = np.concatenate([getattr(clf, method)(X[i : i + 1]) for i in range(0, len(X), step)])
        np.testing.assert_allclose(alone, batch[::step], rtol=1e-12, atol=1e-12, err_msg=method)


# ------------------------------------------------------------------------------------ persistence


def test_save_load_round_trip(moons, small_classifier, tmp_path):
    _, _, _, X_test, _ = moons
    path = tmp_path / "model.safetensors"
    small_classifier.save(path, dataset="moons")
    loaded = FlowGMMClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), small_classifier.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.predict(X_test), small_classifier.predict(X_test))
    np.testing.assert_array_equal(loaded.score_samples(X_test), small_classifier.score_samples(X_test))
    np.testing.assert_array_equal(loaded.encode(X_test), small_classifier.encode(X_test))
    np.testing.assert_array_equal(loaded.classes_, small_classifier.classes_)
    assert loaded.n_features_in_ == 2
    assert loaded.get_params() == small_classifier.get_params()
    assert loaded.options_ == small_classifier.options_
    assert loaded.history_ == small_classifier.history_
    assert loaded.header_["dataset"] == "moons"
    assert state_equal(loaded.model_.state_dict(), small_classifier.model_.state_dict())
    with pytest.raises(InputError):
        FlowGMMClassifier.load(tmp_path / "absent.safetensors")


# ------------------------------------------------------------------------------------ sklearn checks

#: scikit-learn checks that FlowGMMClassifier fails, each with its reason.
EXPECTED_FAILED_CHECKS = {
    "check_classifiers_train": (
        "2 epochs of a 16-unit flow do not fit make_blobs: training accuracy stays far below the "
        "required 0.83 (it is a density model that needs real training)"
    ),
    "check_classifiers_classes": "the check uses the labels [-1, 1]; -1 marks unlabeled rows, so only one class is left",
}


@parametrize_with_checks(
    [FlowGMMClassifier(epochs=2, hidden=16, coupling_layers=2, device="cpu")],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
    xfail_strict=True,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_classifiers_classes_check_passes_without_the_minus_one_labels(moons):
    """The part of check_classifiers_classes that does not use -1 as a class: string labels work."""
    X, y, _, _, _ = moons
    names = np.array(["one", "two"])[y[:60]]
    for labels in (names, names.astype(object)):
        clf = FlowGMMClassifier(**SMALL).fit(X[:60], labels)
        assert clf.classes_.tolist() == ["one", "two"]
        predicted = clf.predict(X[:60])
        assert predicted.dtype == clf.classes_.dtype and set(predicted.tolist()) <= {"one", "two"}


# ------------------------------------------------------------------------------------ seed ensembles


@pytest.fixture(scope="module")
def ensemble(small_moons):
    X, _, partial, _, _ = small_moons
    return FlowGMMClassifier(**{**SMALL, "calibration_folds": 2}, members=2).fit(X, partial)


def test_each_member_is_the_single_model_of_its_seed(small_moons, ensemble):
    """Member m of an ensemble with seed s is the model a single fit with seed s + m gives."""
    X, _, partial, _, _ = small_moons
    for member, model in enumerate(ensemble.members_):
        single = FlowGMMClassifier(**{**SMALL, "calibration_folds": 2}, members=1, random_state=member).fit(X, partial)
        assert state_equal({k: v for k, v in model.state_dict().items() if "log_temperature" not in k},
                           {k: v for k, v in single.model_.state_dict().items() if "log_temperature" not in k}), member  # fmt: skip
    assert ensemble.model_ is ensemble.members_[0]
    assert ensemble.options_.members == 2 and {epoch["member"] for epoch in ensemble.history_} == {0, 1}


def test_an_ensembles_probabilities_are_its_members_mean_at_one_temperature(small_moons, ensemble):
    _, _, _, X_new, _ = small_moons
    rows = torch.from_numpy(X_new.astype(np.float32)).double()  # the estimator reads float32 rows
    with torch.no_grad():
        members = [copy.deepcopy(model).double().eval() for model in ensemble.members_]
        temperatures = {float(model.prior.log_temperature) for model in members}
        mean = torch.stack([model.predict_log_proba(rows).exp() for model in members]).mean(0).numpy()
        density = torch.stack([model.log_prob(rows) for model in members]).exp().mean(0).log().numpy()
        first = members[0].predict_log_proba(rows).exp().numpy()
    assert temperatures == {math.log(ensemble.temperature_)} and ensemble.temperature_ >= 1.0
    assert not np.allclose(first, mean), "the members differ"
    np.testing.assert_allclose(ensemble.predict_proba(X_new), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ensemble.score_samples(X_new), density, rtol=1e-10)
    np.testing.assert_allclose(np.logaddexp.reduce(ensemble.joint_log_prob(X_new), axis=1), density, rtol=1e-10)
    np.testing.assert_array_equal(ensemble.predict(X_new), ensemble.classes_[mean.argmax(axis=1)])


@pytest.fixture
def held_out_scores_seen(monkeypatch) -> list:
    """Every ``(log_joint, codes)`` the calibration fits return during the test, in order."""
    seen = []
    real = fits_module.fold_scores

    def keep(job, fits, results):
        seen.append(real(job, fits, results))
        return seen[-1]

    monkeypatch.setattr(estimator_module, "fold_scores", keep)
    return seen


def test_an_ensembles_temperature_is_fitted_for_the_mean_of_its_members(small_moons, ensemble, held_out_scores_seen):
    """The calibration fits' held-out scores of both members are stacked and one T fitted on them."""
    X, _, partial, _, _ = small_moons
    seen = held_out_scores_seen
    fitted = FlowGMMClassifier(**{**SMALL, "calibration_folds": 2}, members=2).fit(X, partial)
    assert len(seen) == 2 and np.array_equal(seen[0][1], seen[1][1]), "both members score the same held-out rows"
    from flowgmm_cli.calibration import fit_temperature

    stacked = np.stack([scores for scores, _ in seen])
    assert math.log(fitted.temperature_) == pytest.approx(max(0.0, fit_temperature(stacked, seen[0][1])), abs=1e-6)  # stored in float32
    assert fitted.temperature_ == pytest.approx(ensemble.temperature_, rel=1e-9)


def test_the_temperature_records_the_rows_it_rests_on(small_moons, held_out_scores_seen, tmp_path):
    """``calibration_``: the held-out labels the calibration fits scored and how often they were right
    (saved with the model); after ``calibrate``, the validation rows."""
    X, _, partial, X_new, y_new = small_moons
    seen = held_out_scores_seen
    clf = FlowGMMClassifier(**{**SMALL, "calibration_folds": 2}, members=1).fit(X, partial)
    scores, codes = seen[0]
    right = float(np.mean(scores.argmax(axis=1) == codes))  # one flow: the temperature keeps the argmax
    assert clf.calibration_ == {"source": "calibration fits", "n": 10, "accuracy": round(right, 4), "standard_error": round(math.sqrt(right * (1 - right) / 10), 4)}
    path = tmp_path / "evidence.safetensors"
    clf.save(path)
    assert FlowGMMClassifier.load(path).calibration_ == clf.calibration_
    clf.calibrate(X_new, y_new)
    accuracy = float(np.mean(clf.predict(X_new) == y_new))
    assert clf.calibration_["source"] == "validation rows" and clf.calibration_["n"] == 100 and clf.calibration_["accuracy"] == round(accuracy, 4)
    without = FlowGMMClassifier(**SMALL).fit(X, partial)  # no calibration fits: T = 1 rests on nothing
    assert without.calibration_ is None and without.temperature_ == 1.0


def test_an_ensemble_round_trips_through_its_file(small_moons, ensemble, tmp_path):
    _, _, _, X_new, y_new = small_moons
    path = tmp_path / "ensemble.safetensors"
    ensemble.save(path)
    loaded = FlowGMMClassifier.load(path)
    assert len(loaded.members_) == 2 and loaded.history_ == ensemble.history_
    for method in ("predict_proba", "score_samples", "encode"):
        np.testing.assert_array_equal(getattr(loaded, method)(X_new), getattr(ensemble, method)(X_new), err_msg=method)
    assert loaded.calibrate(X_new, y_new).temperature_ == pytest.approx(ensemble.calibrate(X_new, y_new).temperature_, rel=1e-9)
    assert {float(model.prior.log_temperature) for model in loaded.members_} == {math.log(loaded.temperature_)}
