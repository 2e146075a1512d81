"""The image flow end to end from the command line: embed pixels, train (the flow chosen from the
file), predict, evaluate, info, calibrate, visualize every image kind, resume; and the library's
``fit`` on a ``(N, C, H, W)`` array."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flowgmm_testutils import interrupt_after, run_cli, state_equal

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.modelfile import read_header

#: A small flow, so a fit takes seconds.
TINY = ["--hidden", "4", "--hidden-layers", "1", "--coupling-layers", "1", "--epochs", "2", "--batch-size", "32"]


def _bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8×8 images of a vertical (class 'v') or a horizontal ('h') bar at a random place, with noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (n, 1, 8, 8))
    labels = np.where(rng.random(n) < 0.5, "v", "h")
    for image, label, where in zip(images, labels, rng.integers(1, 7, n)):
        if label == "v":
            image[0, 1:7, where] = 230
        else:
            image[0, where, 1:7] = 230
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    x, y = _bars(240, 0)
    x_test, y_test = _bars(60, 1)
    np.savez(folder / "bars.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    pd.DataFrame({"id": [str(i) for i in range(0, 240, 12)], "label": y[::12]}).to_csv(folder / "labels.csv", index=False)
    return {"folder": folder, "npz": folder / "bars.npz", "labels": folder / "labels.csv"}


@pytest.fixture(scope="module")
def trained(files) -> dict[str, Path]:
    """Embedded train and test files and a model trained on them through the command line."""
    folder = files["folder"]

    def cli(*args) -> None:
        assert run_cli(list(args))[0] == 0, f"flowgmm {' '.join(map(str, args))} failed"

    cli("embed", "--model", "pixels", files["npz"], "--array-key", "x", "-o", folder / "train.h5", "--quiet")
    cli("embed", "--model", "pixels", files["npz"], "--array-key", "x_test", "--label-key", "y_test", "-o", folder / "test.h5", "--quiet")
    cli("train", folder / "train.h5", "--labels", files["labels"], *TINY, "-o", folder / "model.flowgmm", "--quiet")
    cli("train", folder / "train.h5", "--labels", files["labels"], *TINY, "--consistency-weight", "1", "-o", folder / "cons.flowgmm", "--quiet")
    return {**files, "train": folder / "train.h5", "test": folder / "test.h5", "model": folder / "model.flowgmm", "cons": folder / "cons.flowgmm"}


def test_train_chooses_the_image_flow_for_a_pixel_file_and_info_describes_it(trained, capsys):
    header = read_header(trained["model"])
    assert header["members"][0]["flow"]["type"] == "multiscale-realnvp"
    assert header["members"][0]["flow"]["shape"] == [1, 8, 8]
    assert header["resolved"]["flow"] == "image" and header["resolved"]["scales"] == 2 and header["resolved"]["translate"] == 1
    assert [t["type"] for t in header["members"][0]["transform"]["transforms"]] == ["pixel_logit", "standardize"]
    code, out, _ = run_cli(["info", trained["model"]], capsys)
    assert code == 0 and "multiscale-realnvp on 1x8x8 images: 2 scales" in out
    assert read_header(trained["cons"])["resolved"]["consistency_weight"] == 1.0


def test_predict_and_evaluate_an_image_model_with_bits_per_dimension(trained, capsys):
    out_csv = trained["folder"] / "predictions.csv"
    code, _, err = run_cli(["predict", trained["model"], trained["test"], "-o", out_csv], capsys)
    assert code == 0, err
    table = pd.read_csv(out_csv)
    assert len(table) == 60 and set(table["label"]) <= {"h", "v"} and np.isfinite(table["log_px"]).all()
    code, out, err = run_cli(["evaluate", trained["model"], trained["test"], "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    model = FlowGMMClassifier.load(trained["model"], device="auto")  # where evaluate ran: its default
    x_test = np.load(trained["npz"])["x_test"].reshape(60, -1).astype(np.float32)
    expected = -model.score_samples(x_test).mean() / (64 * np.log(2))
    assert report["bits_per_dim"] == pytest.approx(expected, rel=1e-9)
    assert 0 < report["bits_per_dim"] < 20


def test_visualize_draws_every_image_kind_and_compares_distances(trained, capsys):
    out = trained["folder"] / "plots"
    args = ["visualize", trained["cons"], trained["test"], "-o", out, "--compare", trained["model"], "--sample-temperature", "0.7"]
    kinds = ["means", "samples", "interpolation", "features", "distance"]
    code, _, err = run_cli([*args, *sum((["--kind", k] for k in kinds), [])], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.{ext}" for k in kinds for ext in ("png", "csv"))
    means = pd.read_csv(out / "means.csv")
    assert list(means["class"]) == ["h", "v"] and means.shape[1] == 2 + 64
    samples = pd.read_csv(out / "samples.csv")
    assert len(samples) == 20 and np.isfinite(samples["log_px"]).all()
    features = pd.read_csv(out / "features.csv")
    assert len(features) == 16 * 9 and set(features["alpha"].round(3)) == {-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0}
    assert features.loc[features["alpha"] == 0, "mean_abs_pixel_change"].max() < 1e-3  # α = 0 gives the image back
    assert features.loc[features["alpha"].abs() == 4, "mean_abs_pixel_change"].min() > 0
    distance = pd.read_csv(out / "distance.csv")
    assert {"distance", "compare_distance"} <= set(distance.columns)


def test_features_refuses_a_channel_the_layer_does_not_have(trained, capsys):
    code, _, err = run_cli(["visualize", trained["model"], trained["test"], "-o", trained["folder"] / "bad", "--kind", "features", "--channel", "99"], capsys)
    assert code == 2 and "choose --channel in [0," in err


def test_resume_continues_an_image_run_to_the_same_model(trained, capsys, monkeypatch):
    """Interrupted after the first of two epochs and resumed: the model of an uninterrupted run,
    the views and dequantisation noise continuing where they stopped."""
    args = ["train", trained["train"], "--labels", trained["labels"], *TINY, "--consistency-weight", "1", "-q"]
    interrupt_after(monkeypatch, 1)
    resumed = trained["folder"] / "resumed.flowgmm"
    assert run_cli([*args, "-o", resumed], capsys)[0] == 130
    monkeypatch.undo()
    assert run_cli([*args, "-o", resumed, "--resume"], capsys)[0] == 0
    a, b = FlowGMMClassifier.load(trained["cons"]), FlowGMMClassifier.load(resumed)
    assert state_equal(a.model_.state_dict(), b.model_.state_dict())


def test_vector_options_are_refused_for_images_and_image_options_for_vectors(trained, capsys):
    code, _, err = run_cli(["train", trained["train"], "--labels", trained["labels"], "--projection-dim", "8", "-o", trained["folder"] / "x.flowgmm"], capsys)
    assert code == 2 and "--projection-dim applies to the vector flow" in err
    code, _, err = run_cli(["train", trained["train"], "--labels", trained["labels"], "--square-root", "-o", trained["folder"] / "x.flowgmm"], capsys)
    assert code == 2 and "--square-root applies to the vector flow" in err
    code, _, err = run_cli(["train", trained["train"], "--labels", trained["labels"], "--scales", "3", "-o", trained["folder"] / "x.flowgmm"], capsys)
    assert code == 2 and "--scales 3 is more than images of 8x8 pixels allow (2)" in err


def test_the_library_fits_an_image_array_and_the_vector_flow_on_request():
    x, y = _bars(120, 2)
    codes = np.where(np.arange(120) % 6 == 0, (y == "v").astype(int), -1)
    options = dict(hidden=4, hidden_layers=1, coupling_layers=1, epochs=1, batch_size=32)
    model = FlowGMMClassifier(**options).fit(x, codes)
    assert model.image_shape_ == (1, 8, 8) and model.options_.flow.value == "image"
    assert model.predict_proba(x[:5]).shape == (5, 2)
    np.testing.assert_allclose(model.predict_proba(x[:5]), model.predict_proba(x[:5].reshape(5, -1)), rtol=0, atol=0)
    vector = FlowGMMClassifier(flow="vector", **options).fit(x.reshape(120, -1), codes)
    assert vector.image_shape_ is None and vector.options_.flow.value == "vector"


def test_an_image_rows_prediction_does_not_depend_on_the_rows_predicted_with_it():
    x, y = _bars(300, 3)
    codes = np.where(np.arange(300) % 10 == 0, (y == "v").astype(int), -1)
    model = FlowGMMClassifier(hidden=4, hidden_layers=1, coupling_layers=1, epochs=1, batch_size=64).fit(x, codes)
    everything = model.joint_log_prob(x)
    order = np.random.default_rng(0).permutation(300)
    for rows in (order[:1], order[:7], order[:200]):
        np.testing.assert_array_equal(model.joint_log_prob(x[rows]), everything[rows])


def test_images_of_another_shape_with_as_many_pixels_are_refused(trained, capsys):
    folder = trained["folder"]
    x, _ = _bars(20, 4)
    np.savez(folder / "wide.npz", x=x.reshape(20, 1, 4, 16))
    assert run_cli(["embed", "--model", "pixels", folder / "wide.npz", "--array-key", "x", "-o", folder / "wide.h5", "-q"], capsys)[0] == 0
    code, _, err = run_cli(["predict", trained["model"], folder / "wide.h5", "-o", folder / "wide.csv"], capsys)
    assert code == 2 and "reads 1x8x8 images but" in err and "holds 1x4x16 images" in err
    assert not (folder / "wide.csv").exists()


def test_calibrate_fits_the_temperature_of_an_image_model(trained, capsys):
    calibrated = trained["folder"] / "calibrated.flowgmm"
    code, _, err = run_cli(["calibrate", trained["model"], trained["test"], "-o", calibrated], capsys)
    assert code == 0, err
    assert FlowGMMClassifier.load(calibrated).temperature_ != FlowGMMClassifier.load(trained["model"]).temperature_


def test_benchmark_fits_flowgmm_on_the_pixels_with_the_image_flow(trained, capsys, monkeypatch):
    from flowgmm_cli import estimator, image_defaults

    monkeypatch.setattr(image_defaults, "IMAGE_STEPS", 8)
    flows: list[str] = []
    real_fit_rows = estimator.FlowGMMClassifier.fit_rows

    def spy(self, rows, *args, **kwargs):
        flows.append("image" if rows.image_shape is not None else "vector")
        return real_fit_rows(self, rows, *args, **kwargs)

    monkeypatch.setattr(estimator.FlowGMMClassifier, "fit_rows", spy)
    pool = trained["folder"] / "pool.h5"
    x, y = _bars(100, 5)
    np.savez(trained["folder"] / "pool.npz", x=x, y=y)
    assert run_cli(["embed", "--model", "pixels", trained["folder"] / "pool.npz", "--array-key", "x", "--label-key", "y", "-o", pool, "-q"], capsys)[0] == 0
    code, out, err = run_cli(["benchmark", pool, "--test", trained["test"], "--n-labeled", "10", "--seeds", "1", "--methods", "flowgmm,knn", "--json"], capsys)
    assert code == 0, err
    assert flows == ["image"]
    assert {row["method"] for row in json.loads(out)["results"]} == {"flowgmm", "knn"}
