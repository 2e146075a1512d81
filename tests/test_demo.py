"""``flowgmm demo`` at a reduced scale and its building blocks: the digits split, the table the command
prints (checked against the predictions it writes), and the digit-image pipeline through
EfficientNet-Lite0 on a few images.

The full demo (4 two-dimensional sets, the digits and 1,797 images through Lite0, 12 default fits)
and the paper's claim that unlabeled rows help on every 2-D set (several seeds) take many minutes
and belong to bench/, not here.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from flowgmm_testutils import run_cli
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.utils import Bunch

from flowgmm_cli import FlowGMMClassifier, demo, demo_images
from flowgmm_cli.features import read_features
from flowgmm_cli.progress import stderr_console
from flowgmm_cli.targets import UNLABELED
from flowgmm_cli.toy_data import make_toy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A few optimiser steps: enough to produce a model, far too few for the paper's accuracies.
QUICK = functools.partial(FlowGMMClassifier, epochs=2, hidden=16, coupling_layers=2, lr=0.01)


def test_digits_split_is_a_stratified_pool_and_test_with_five_labels_per_class():
    X_pool, partial, y_pool, X_test, y_test = demo.digits_split(0)
    X, y = load_digits(return_X_y=True)
    pool, test = demo.digits_rows(0)
    assert (len(pool), len(test)) == (1297, 500) and np.intersect1d(pool, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([pool, test])), np.arange(1797))
    np.testing.assert_array_equal(X_pool, X[pool])
    np.testing.assert_array_equal(X_test, X[test])
    assert np.array_equal(y_pool, y[pool]) and np.array_equal(y_test, y[test])
    assert np.abs(np.bincount(y_test) - 500 * np.bincount(y) / 1797).max() < 1  # stratified
    labeled = partial != UNLABELED
    assert np.bincount(partial[labeled]).tolist() == [5] * 10
    assert np.array_equal(partial[labeled], y_pool[labeled]), "labels are the true classes"
    again = demo.digits_split(0)
    assert np.array_equal(again[1], partial)
    assert not np.array_equal(demo.digits_split(1)[1], partial) and not np.array_equal(demo.digits_rows(1)[1], test)


def test_demo_command_at_a_reduced_scale(tmp_path, capsys, monkeypatch):
    """Two of the 2-D sets at 200 rows and the digits, each fit for a few steps; the image case is a
    stand-in that records the split it is given (tested below on real images)."""
    handed: list[tuple] = []

    def images(output, console, split, seed):
        handed.append(split)
        return {"dataset": "digits-lite0", "n_labeled": int((split[1] != UNLABELED).sum()), "flowgmm": 0.25}

    def pixels(output, console, split, seed):
        handed.append(split)
        return {"dataset": "digits-pixels", "n_labeled": int((split[1] != UNLABELED).sum()), "flowgmm": 0.5}

    monkeypatch.setattr(demo, "TOY_DATASETS", ("two-moons", "8-gaussians"))
    monkeypatch.setattr(demo, "make_toy", lambda name, n, seed: make_toy(name, 200, seed))
    monkeypatch.setattr(demo, "FlowGMMClassifier", QUICK)
    monkeypatch.setattr(demo, "run_digit_images", images)
    monkeypatch.setattr(demo, "run_digit_pixels", pixels)
    code, out, err = run_cli(["demo", "-o", tmp_path / "demo"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["data", "set", "labels", "FlowGMM", "labeled-only"]
    assert lines[-1] == f"predictions and plots in {tmp_path / 'demo'}/"
    table = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert list(table) == ["two-moons", "8-gaussians", "digits", "digits-pixels", "digits-lite0"]
    # ten labels per 2-D set: 5 of each moon, and 1 per Gaussian where 10 do not divide among 8
    assert [table[name][0] for name in table] == ["10", "8", "50", "50", "50"]
    assert table["digits-pixels"][1:] == ["0.500", "-"]
    assert table["digits-lite0"][1:] == ["0.250", "-"]
    folder = tmp_path / "demo"
    for name in ("two-moons", "8-gaussians"):
        predictions = pd.read_csv(folder / f"{name}_predictions.csv")
        truth = make_toy(name, 200, 0)[1]
        assert predictions["id"].tolist() == list(range(200))
        assert table[name][1] == f"{np.mean(predictions['label'] == truth):.3f}", name
        png = folder / f"{name}_boundary.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        width, height = Image.open(png).size
        assert width > 1.8 * height, "two panels side by side: with and without the unlabeled rows"
    digits = pd.read_csv(folder / "digits_predictions.csv")
    _, _, _, _, y_test = demo.digits_split(0)
    assert len(digits) == 500 and table["digits"][1] == f"{np.mean(digits['label'] == y_test):.3f}"
    assert list(digits.columns) == ["id", "label", "confidence", *(f"p_{k}" for k in range(10)), "log_px"]
    # the image cases get the raw-pixel case's rows, so the accuracies compare
    assert len(handed) == 2
    for pool, partial, test, y_images in handed:
        expected_pool, expected_test = demo.digits_rows(0)
        assert np.array_equal(pool, expected_pool) and np.array_equal(test, expected_test)
        assert np.array_equal(partial, demo.digits_split(0)[1]) and np.array_equal(y_images, y_test)
    assert [line.split(":")[0] for line in err.splitlines()] == ["two-moons", "8-gaussians", "digits"]


def test_demo_refuses_an_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    code, out, err = run_cli(["demo", "-o", tmp_path / "taken"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "is not a folder" in err
    assert (tmp_path / "taken").read_text() == "mine"


def test_digit_images_go_through_lite0_in_scikit_learns_order(tmp_path, monkeypatch):
    """30 of the digits (3 per class) as PNGs → EfficientNet-Lite0 → FlowGMM: the images, the feature
    file and predictions whose ids name each test image's true class."""
    digits = load_digits()
    rows = np.sort(np.concatenate([np.flatnonzero(digits.target == k)[:3] for k in range(10)]))
    y = digits.target[rows]
    monkeypatch.setattr(demo_images, "load_digits", lambda: Bunch(images=digits.images[rows], target=y))
    monkeypatch.setattr(demo_images, "FlowGMMClassifier", QUICK)
    test = np.array([np.flatnonzero(y == k)[2] for k in range(10)])  # the third image of each class
    pool = np.setdiff1d(np.arange(30), test)
    partial = np.full(20, UNLABELED)
    first = np.array([np.flatnonzero(y[pool] == k)[0] for k in range(10)])
    partial[first] = y[pool][first]
    result = demo_images.run_digit_images(tmp_path, stderr_console(quiet=True), (pool, partial, test, y[test]), seed=0)

    pngs = sorted((tmp_path / "digit_images").rglob("*.png"))
    assert len(pngs) == 30 and {p.parent.name for p in pngs} == {str(k) for k in range(10)}
    image = np.asarray(Image.open(tmp_path / "digit_images" / str(y[7]) / "0007.png"))
    np.testing.assert_array_equal(image, np.round(digits.images[rows[7]] * 255 / 16).astype(np.uint8))
    features = read_features(tmp_path / "digits_lite0.h5")
    assert features.features.shape == (30, 1280) and features.attrs["extractor"] == "efficientnet-lite0"
    assert sorted(features.labels.tolist()) == sorted(str(k) for k in y)
    predictions = pd.read_csv(tmp_path / "digits_lite0_predictions.csv", dtype={"id": str, "label": str})
    assert predictions["id"].tolist() == [f"{y[i]}/{i:04d}" for i in test], "test rows in the split's order, ids naming their class"
    accuracy = float(np.mean(predictions["label"] == predictions["id"].str[0]))
    assert result == {"dataset": "digits-lite0", "n_labeled": 10, "flowgmm": pytest.approx(accuracy)}


def test_digit_pixels_train_the_image_flow_and_write_means_and_samples_as_images(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_images, "DEMO_PIXEL_STEPS", 20)
    _, partial, _, _, y_test = demo.digits_split(0)
    pool, test = demo.digits_rows(0)
    result = demo_images.run_digit_pixels(tmp_path, stderr_console(quiet=True), (pool, partial, test, y_test), 0)
    assert result["dataset"] == "digits-pixels" and result["n_labeled"] == 50 and 0 <= result["flowgmm"] <= 1
    predictions = pd.read_csv(tmp_path / "digits_pixels_predictions.csv")
    assert predictions["id"].tolist() == test.tolist()
    assert result["flowgmm"] == pytest.approx(np.mean(predictions["label"] == y_test))
    for kind in ("means", "samples"):
        assert (tmp_path / "digits_pixels" / f"{kind}.png").read_bytes()[:8] == PNG_MAGIC
    assert len(pd.read_csv(tmp_path / "digits_pixels" / "means.csv")) == 10
