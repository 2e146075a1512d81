"""Model analysis plots: d(x) and the latent plane by hand, every kind's PNG and CSV, determinism."""

from __future__ import annotations

import io
from dataclasses import replace

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.splits import pick_labeled
from flowgmm_cli.toy_data import make_toy
from flowgmm_cli.visualize import (
    INTERPOLATION_STEPS,
    KINDS,
    Scene,
    boundary_distance,
    latent_plane,
    render,
    unavailable,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------- d(x) by hand
def test_boundary_distance_of_a_hand_example():
    means = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 10.0]])
    # (1, 0): closest means (0,0) and (4,0), boundary x = 2, distance 1. (3, 4): closest (4,0) then
    # (0,0), boundary x = 2, distance 1. (0, 6): closest (0,10) then (0,0), boundary y = 5, distance 1.
    # (2, -3): on the boundary x = 2.
    Z = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 6.0], [2.0, -3.0]])
    np.testing.assert_allclose(boundary_distance(Z, means), [1.0, 1.0, 1.0, 0.0], atol=1e-12)


def test_boundary_distance_is_the_distance_to_the_bisecting_hyperplane_of_the_two_closest_means():
    rng = np.random.default_rng(0)
    means, Z = rng.normal(scale=3.0, size=(6, 5)), rng.normal(scale=3.0, size=(200, 5))
    got = boundary_distance(Z, means)
    for z, d in zip(Z, got):
        a, b = np.argsort(np.linalg.norm(means - z, axis=1))[:2]
        normal = means[b] - means[a]
        midpoint = (means[a] + means[b]) / 2
        assert d == pytest.approx(abs(normal @ (z - midpoint)) / np.linalg.norm(normal), rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------------------------- the plane
def _orthonormal(axes: np.ndarray) -> bool:
    return np.allclose(axes @ axes.T, np.eye(2), atol=1e-12)


def test_latent_plane_passes_through_three_means():
    means = np.random.default_rng(1).normal(size=(3, 6))
    origin, axes = latent_plane(means, np.zeros((4, 6)))
    assert _orthonormal(axes)
    np.testing.assert_allclose(origin + ((means - origin) @ axes.T) @ axes, means, atol=1e-12)


def test_latent_plane_of_two_means_adds_the_codes_main_spread():
    means = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    Z = np.random.default_rng(2).normal(size=(500, 3)) * [1.0, 0.2, 3.0]  # widest across the means: axis 3
    _, axes = latent_plane(means, Z)
    assert _orthonormal(axes)
    np.testing.assert_allclose(np.abs(axes), [[1, 0, 0], [0, 0, 1]], atol=0.05)


def test_latent_plane_of_many_means_uses_their_top_principal_directions():
    rng = np.random.default_rng(3)
    means = rng.normal(size=(7, 5)) * [5.0, 0.1, 3.0, 0.1, 0.1]
    _, axes = latent_plane(means, np.zeros((1, 5)))
    top = np.linalg.svd(means - means.mean(0))[2][:2]
    np.testing.assert_allclose(np.abs(np.sum(axes * top, axis=1)), [1.0, 1.0], atol=1e-10)


# ------------------------------------------------------------------------------------ the kinds
@pytest.fixture(scope="module")
def moons_scene() -> Scene:
    """Two moons (300 rows, 10 of them marked labeled) and a model that separates them (trained on
    every label: a few seconds; not calibrated, ``T = 1``); a second, barely trained model to compare with."""
    X, y = make_toy("two-moons", 300, 0)
    labeled = pick_labeled(y, 5, 0)
    partial = np.full_like(y, -1)
    partial[labeled] = y[labeled]
    clf = FlowGMMClassifier(epochs=40, hidden=32, coupling_layers=4, lr=0.01, calibration_folds=0, random_state=0, device="cpu").fit(X, y)
    assert clf.score(X, y) > 0.95
    other = FlowGMMClassifier(epochs=2, hidden=16, coupling_layers=2, random_state=1, device="cpu").fit(X[labeled], y[labeled])
    return Scene(clf, X, np.array([f"r{i}" for i in range(300)], dtype=object), partial, name="semi", compare=other, compare_name="sup")


@pytest.fixture(scope="module")
def cube_scene() -> Scene:
    """Four classes in 3-D, unlabeled rows only, a barely trained model: for shapes and rules, not quality."""
    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    X = rng.normal(size=(200, 3)) + 3 * np.eye(4, 3)[y]
    clf = FlowGMMClassifier(epochs=2, hidden=16, coupling_layers=2, random_state=0, device="cpu").fit(X, y)
    return Scene(clf, X, np.arange(200).astype(str).astype(object), np.full(200, -1))


def _check_png(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    return image.shape[:2]


EXPECTED_ROWS = {
    "boundary": 200 * 200,
    "latent": 300,
    "samples": 400,
    "distance": 300,
    "reliability": 15,  # one curve: the fixture's model is not calibrated
    "interpolation": 2 * INTERPOLATION_STEPS,
    "means": 2,
}


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "features"])  # features: image models (test_image_cli)
def test_every_kind_writes_a_png_and_its_csv(kind, moons_scene, tmp_path):
    summary = render(kind, moons_scene, tmp_path)
    assert summary and "\n" not in summary
    _check_png(tmp_path / f"{kind}.png")
    table = pd.read_csv(tmp_path / f"{kind}.csv", keep_default_na=False)
    assert len(table) == EXPECTED_ROWS[kind]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.csv", f"{kind}.png"]


# ------------------------------------------------------------- the numbers behind each plot
def _names(scene: Scene, codes: np.ndarray) -> list[str]:
    return [scene.classes[k] for k in codes]


def test_boundary_table_is_the_models_prediction_and_density_on_a_padded_grid(moons_scene, tmp_path):
    render("boundary", moons_scene, tmp_path)
    table = pd.read_csv(tmp_path / "boundary.csv", dtype={"predicted": str})
    X, clf = moons_scene.X, moons_scene.estimator
    pad = 0.15 * (X.max(0) - X.min(0))
    gx = np.linspace(X.min(0)[0] - pad[0], X.max(0)[0] + pad[0], 200)
    gy = np.linspace(X.min(0)[1] - pad[1], X.max(0)[1] + pad[1], 200)
    points = np.column_stack([np.tile(gx, 200), np.repeat(gy, 200)])  # row by row: x0 varies fastest
    np.testing.assert_allclose(table[["x0", "x1"]], points, rtol=1e-5, atol=1e-6)
    rows = np.random.default_rng(0).choice(len(points), 2000, replace=False)
    assert table["predicted"].iloc[rows].tolist() == [str(c) for c in clf.predict(points[rows])]
    np.testing.assert_allclose(table["log_px"].iloc[rows], clf.score_samples(points[rows]), rtol=1e-4, atol=1e-4)
    assert set(table["predicted"]) == {"0", "1"}  # both regions on the grid


def test_latent_table_holds_each_rows_predicted_class_and_label(moons_scene, tmp_path):
    render("latent", moons_scene, tmp_path)
    table = pd.read_csv(tmp_path / "latent.csv", keep_default_na=False, dtype=str)
    assert table["id"].tolist() == moons_scene.ids.tolist()
    assert table["predicted"].tolist() == [str(c) for c in moons_scene.estimator.predict(moons_scene.X)]
    labeled = moons_scene.y >= 0
    assert table["label"][labeled].tolist() == [str(k) for k in moons_scene.y[labeled]] and (table["label"][~labeled] == "").all()


def test_samples_table_is_the_mixtures_draws_and_their_images(moons_scene, tmp_path):
    render("samples", moons_scene, tmp_path)
    table = pd.read_csv(tmp_path / "samples.csv", dtype={"class": str})
    clf = moons_scene.estimator
    Z, drawn = clf.sample_latent(400, random_state=moons_scene.seed)
    assert table["class"].tolist() == [str(c) for c in drawn]
    origin, axes = latent_plane(clf.means_, clf.encode(moons_scene.X))
    np.testing.assert_allclose(table[["latent_u", "latent_v"]], (Z - origin) @ axes.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(table[["feature_u", "feature_v"]], clf.decode(Z), rtol=1e-5, atol=1e-5)  # 2-D: the features as they are
    # each draw sits near its own class's mean: the variance of the mixture (1.72) per latent axis
    own = clf.means_[np.searchsorted(clf.classes_, drawn)]
    assert np.mean((Z - own) ** 2) == pytest.approx(1.72, rel=0.15)


def test_distance_table_and_summary_count_rows_near_the_boundary(moons_scene, tmp_path):
    scene = replace(moons_scene, near=1.0)
    summary = render("distance", scene, tmp_path)
    table = pd.read_csv(tmp_path / "distance.csv")
    clf, Z = scene.estimator, scene.estimator.encode(scene.X)
    normal = clf.means_[1] - clf.means_[0]
    expected = np.abs((Z - clf.means_.mean(0)) @ normal) / np.linalg.norm(normal)  # two classes: the bisecting line
    np.testing.assert_allclose(table["distance"], expected, rtol=1e-5, atol=1e-6)
    compare = scene.compare
    near = (int(np.sum(expected < 1.0)), int(np.sum(boundary_distance(compare.encode(scene.X), compare.means_) < 1.0)))
    assert summary == f"rows of 300 with d(x) < 1: semi {near[0]}, sup {near[1]}; median d(x) {np.median(expected):.3g}"


def test_reliability_table_bins_the_labeled_rows_by_confidence(moons_scene, tmp_path):
    render("reliability", moons_scene, tmp_path)
    table = pd.read_csv(tmp_path / "reliability.csv")
    rows = moons_scene.labeled
    proba = moons_scene.estimator.predict_proba(moons_scene.X[rows])
    confidence, correct = proba.max(1), proba.argmax(1) == moons_scene.y[rows]
    np.testing.assert_allclose(table["lower"], np.arange(15) / 15, atol=1e-6)
    np.testing.assert_allclose(table["upper"], np.arange(1, 16) / 15, atol=1e-6)
    for b, row in table.iterrows():
        inside = (confidence > b / 15) & (confidence <= (b + 1) / 15) | ((b == 0) & (confidence == 0))
        assert row["count"] == inside.sum(), b
        if inside.any():
            assert row["confidence"] == pytest.approx(confidence[inside].mean(), rel=1e-5)
            assert row["accuracy"] == pytest.approx(correct[inside].mean(), rel=1e-5)
        else:
            assert np.isnan(row["confidence"]) and np.isnan(row["accuracy"])
    assert table["count"].sum() == 10 and (table["temperature"] == 1.0).all()


def test_interpolation_follows_log_px_along_the_default_pairs(moons_scene, tmp_path):
    """From the row of highest log p(x): the nearest latent code of another class, and the row of its own
    class at about the same latent distance; log p(x) of each point f^-1(z) along the segments."""
    render("interpolation", moons_scene, tmp_path)
    table = pd.read_csv(tmp_path / "interpolation.csv", keep_default_na=False, dtype={"predicted": str})
    clf, Z = moons_scene.estimator, moons_scene.estimator.encode(moons_scene.X)
    classes = np.where(moons_scene.y >= 0, moons_scene.y, clf.predict(moons_scene.X))
    start = int(np.argmax(clf.score_samples(moons_scene.X)))
    gaps = np.linalg.norm(Z - Z[start], axis=1)
    other = np.flatnonzero(classes != classes[start])
    different = other[np.argmin(gaps[other])]
    same_rows = np.flatnonzero((classes == classes[start]) & (np.arange(300) != start))
    same = same_rows[np.argmin(np.abs(gaps[same_rows] - gaps[different]))]
    pairs = {name: (path["from_id"].iloc[0], path["to_id"].iloc[0]) for name, path in table.groupby("pair", sort=False)}
    assert pairs == {"same class": (f"r{start}", f"r{same}"), "different classes": (f"r{start}", f"r{different}")}
    for name, end in (("same class", same), ("different classes", different)):
        path = table[table["pair"] == name]
        alpha = path["alpha"].to_numpy()
        np.testing.assert_allclose(alpha, np.linspace(0, 1, INTERPOLATION_STEPS), atol=1e-9)
        decoded = clf.decode(np.outer(1 - alpha, Z[start]) + np.outer(alpha, Z[end]))
        np.testing.assert_allclose(path["log_px"], clf.score_samples(decoded), rtol=1e-4, atol=1e-4)
        assert path["predicted"].tolist() == [str(c) for c in clf.predict(decoded)]


def test_plots_are_byte_for_byte_repeatable(moons_scene, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for kind in ("latent", "samples", "distance"):
        render(kind, moons_scene, first)
        render(kind, replace(moons_scene), second)  # a fresh scene: codes computed again
    for file in first.iterdir():
        assert file.read_bytes() == (second / file.name).read_bytes(), file.name


def test_latent_and_distance_tables_hold_the_codes_numbers(moons_scene, tmp_path):
    render("latent", moons_scene, tmp_path)
    render("distance", moons_scene, tmp_path)
    latent = pd.read_csv(tmp_path / "latent.csv", keep_default_na=False)
    origin, axes = latent_plane(moons_scene.estimator.means_, moons_scene.estimator.encode(moons_scene.X))
    np.testing.assert_allclose(latent[["u", "v"]].to_numpy(), (moons_scene.estimator.encode(moons_scene.X) - origin) @ axes.T, rtol=1e-5, atol=1e-5)
    assert (latent["label"] != "").sum() == 10
    distance = pd.read_csv(tmp_path / "distance.csv")
    assert list(distance.columns) == ["id", "distance", "compare_distance"]
    expected = boundary_distance(moons_scene.compare.encode(moons_scene.X), moons_scene.compare.means_)
    np.testing.assert_allclose(distance["compare_distance"], expected, rtol=1e-5)


def test_interpolation_between_classes_crosses_a_low_density_valley(moons_scene, tmp_path):
    render("interpolation", moons_scene, tmp_path)
    table = pd.read_csv(tmp_path / "interpolation.csv", keep_default_na=False)
    drops = {}
    for name, path in table.groupby("pair", sort=False):
        assert path["alpha"].iloc[0] == 0 and path["alpha"].iloc[-1] == 1
        chord = path["log_px"].iloc[0] + path["alpha"] * (path["log_px"].iloc[-1] - path["log_px"].iloc[0])
        np.testing.assert_allclose(path["below_chord"], chord - path["log_px"], atol=1e-4)
        drops[name] = path["below_chord"].max()
        ends = path["predicted"].iloc[[0, -1]].tolist()
        assert (ends[0] == ends[1]) == (name == "same class")
    assert drops["different classes"] > drops["same class"] + 1.0


def test_interpolation_of_a_given_pair(moons_scene, tmp_path):
    scene = replace(moons_scene, pair=(3, 7))
    render("interpolation", scene, tmp_path)
    table = pd.read_csv(tmp_path / "interpolation.csv")
    assert len(table) == INTERPOLATION_STEPS and set(table["from_id"]) == {"r3"} and set(table["to_id"]) == {"r7"}
    np.testing.assert_allclose(table["log_px"].iloc[[0, -1]], scene.estimator.score_samples(scene.X[[3, 7]]), atol=1e-3)


def test_means_decode_to_points_that_encode_back_to_the_means(moons_scene, tmp_path):
    render("means", moons_scene, tmp_path)
    table = pd.read_csv(tmp_path / "means.csv", dtype={"class": str, "predicted": str})
    assert list(table.columns) == ["class", "predicted", "x0", "x1"]
    np.testing.assert_allclose(table[["x0", "x1"]], moons_scene.estimator.decode(moons_scene.estimator.means_), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moons_scene.estimator.encode(table[["x0", "x1"]].to_numpy()), moons_scene.estimator.means_, atol=1e-3)
    assert (table["class"] == table["predicted"]).all()


def test_reliability_after_calibration_has_both_curves(moons_scene, tmp_path):
    X, y = make_toy("two-moons", 200, 5)
    clf = moons_scene.estimator
    try:
        clf.calibrate(X, y)
        scene = Scene(clf, X, np.arange(200).astype(str).astype(object), y)
        summary = render("reliability", scene, tmp_path)
    finally:
        clf.model_.prior.log_temperature.fill_(0.0)
    table = pd.read_csv(tmp_path / "reliability.csv")
    assert len(table) == 30 and table["curve"].unique().tolist() == ["before", "after"]
    assert table.groupby("curve", sort=False)["count"].sum().tolist() == [200, 200]
    assert "->" in summary


def test_samples_of_higher_dimensional_features_use_the_datas_principal_plane(cube_scene, tmp_path):
    summary = render("samples", cube_scene, tmp_path)
    table = pd.read_csv(tmp_path / "samples.csv", dtype={"class": str})
    assert len(table) == 800 and set(table["class"]) == {"0", "1", "2", "3"}
    assert summary == "800 samples from the mixture and their images f^-1(z)"
    clf, X = cube_scene.estimator, cube_scene.X
    Z, _ = clf.sample_latent(800, random_state=0)
    centred = clf.decode(Z) - X.mean(0)
    top = np.linalg.svd(X - X.mean(0), full_matrices=False)[2][:2]  # the data's top two principal directions
    got = table[["feature_u", "feature_v"]].to_numpy()
    for k in range(2):  # a principal direction is defined up to its sign
        assert min(np.abs(got[:, k] - centred @ top[k]).max(), np.abs(got[:, k] + centred @ top[k]).max()) < 1e-4
    render("latent", cube_scene, tmp_path)  # four means in 3-D: their top two principal directions
    latent = pd.read_csv(tmp_path / "latent.csv")
    origin, axes = latent_plane(clf.means_, clf.encode(X))
    np.testing.assert_allclose(latent[["u", "v"]], (clf.encode(X) - origin) @ axes.T, rtol=1e-5, atol=1e-5)
    _check_png(tmp_path / "latent.png")


def test_kinds_that_do_not_apply_say_why(cube_scene, moons_scene):
    assert "2-dimensional" in unavailable("boundary", cube_scene)
    assert "labeled rows" in unavailable("reliability", cube_scene)
    one_class = replace(moons_scene, y=np.full(300, -1))
    one_class.joint = np.tile([0.0, -1.0], (300, 1))  # every row predicted as the first class
    assert "2 classes" in unavailable("interpolation", one_class)
    one_class.pair = (0, 1)
    assert unavailable("interpolation", one_class) is None
    assert all(unavailable(kind, moons_scene) is None for kind in KINDS if kind != "features")
    assert "image model" in unavailable("features", moons_scene)
