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
    every label: a few seconds); a second, barely trained model to compare with."""
    X, y = make_toy("two-moons", 300, 0)
    labeled = pick_labeled(y, 5, 0)
    partial = np.full_like(y, -1)
    partial[labeled] = y[labeled]
    clf = FlowGMMClassifier(epochs=40, hidden=32, coupling_layers=4, lr=0.01, random_state=0, device="cpu").fit(X, y)
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


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_writes_a_png_and_its_csv(kind, moons_scene, tmp_path):
    summary = render(kind, moons_scene, tmp_path)
    assert summary and "\n" not in summary
    _check_png(tmp_path / f"{kind}.png")
    table = pd.read_csv(tmp_path / f"{kind}.csv", keep_default_na=False)
    assert len(table) == EXPECTED_ROWS[kind]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.csv", f"{kind}.png"]


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
    assert "samples" in summary
    render("latent", cube_scene, tmp_path)  # four means in 3-D: their principal plane
    _check_png(tmp_path / "latent.png")


def test_kinds_that_do_not_apply_say_why(cube_scene, moons_scene):
    assert "2-dimensional" in unavailable("boundary", cube_scene)
    assert "labeled rows" in unavailable("reliability", cube_scene)
    one_class = replace(moons_scene, y=np.full(300, -1))
    one_class.joint = np.tile([0.0, -1.0], (300, 1))  # every row predicted as the first class
    assert "2 classes" in unavailable("interpolation", one_class)
    one_class.pair = (0, 1)
    assert unavailable("interpolation", one_class) is None
    assert all(unavailable(kind, moons_scene) is None for kind in KINDS)
