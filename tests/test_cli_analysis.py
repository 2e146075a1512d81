"""``calibrate``, ``evaluate`` (Brier, per-class scores, confusion matrix, --ood) and ``visualize`` from the
command line, and every bad input of issue 5 gets exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.datasets import make_moons
from flowgmm_testutils import bad_input_failures, run_cli

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.features import FeatureWriter
from flowgmm_cli.modelfile import read_header
from flowgmm_cli.visualize import INTERPOLATION_STEPS, KINDS, latent_plane


def _noisy_moons(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Moons that overlap, so that no model is always right and calibration has something to do."""
    return make_moons(n, noise=0.3, random_state=seed)


def _write(folder: Path, name: str, X: np.ndarray, labels: list[str] | None = None) -> Path:
    """``name.h5`` with ids ``name-i``; with ``labels``, also ``name.csv`` (empty label = unlabeled)."""
    ids = [f"{name}-{i}" for i in range(len(X))]
    with FeatureWriter(folder / f"{name}.h5", X.shape[1], {"extractor": "tabular"}) as writer:
        writer.append(ids, X.astype(np.float32))
    if labels is not None:
        frame = pd.DataFrame({"id": ids, "label": labels})
        frame[frame["label"] != ""].to_csv(folder / f"{name}.csv", index=False)
    return folder / f"{name}.h5"


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, Path]:
    """Noisy, overlapping two moons (train, validation, far-away rows), a 3-D file, and models of both dimensions."""
    folder = tmp_path_factory.mktemp("analysis")
    names = np.array(["down", "up"])
    X, y = _noisy_moons(300, 0)
    X_val, y_val = _noisy_moons(200, 1)
    few = np.where(np.isin(np.arange(300), [0, 1, 2, 3, 4, 5]), names[y], "")
    paths = {
        "folder": folder,
        "moons": _write(folder, "moons", X, list(few)),
        "val": _write(folder, "val", X_val, list(names[y_val])),
        "far": _write(folder, "far", X_val + 10.0),
        "cube": _write(folder, "cube", np.random.default_rng(0).normal(size=(40, 3)), ["a", "b"] * 20),
    }
    paths.update(moons_labels=folder / "moons.csv", val_labels=folder / "val.csv", cube_labels=folder / "cube.csv")
    clf = FlowGMMClassifier(epochs=40, hidden=32, coupling_layers=4, lr=0.01, random_state=0, device="cpu", calibration_folds=0).fit(X, names[y])
    clf.save(folder / "moons.flowgmm", extractor="tabular", history=[{"loss": 1.0}])
    cube = np.random.default_rng(1).normal(size=(40, 3))
    FlowGMMClassifier(epochs=2, hidden=8, coupling_layers=2, device="cpu").fit(cube, np.arange(40) % 2).save(folder / "cube.flowgmm", extractor="tabular")
    paths.update(model=folder / "moons.flowgmm", cube_model=folder / "cube.flowgmm")
    return paths


def _copy_model(w: dict[str, Path], name: str) -> Path:
    target = w["folder"] / name
    shutil.copy(w["model"], target)
    return target


# -------------------------------------------------------------------------------- calibrate
def test_calibrate_replaces_the_model_and_prints_before_and_after(w, capsys):
    model = _copy_model(w, "inplace.flowgmm")
    code, out, err = run_cli(["calibrate", model, w["val"], "--labels", w["val_labels"]], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["before", "after"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:]}
    assert set(rows) == {"temperature", "nll", "ece", "accuracy", "n"}
    assert rows["temperature"][0] == 1.0 and rows["temperature"][1] != 1.0
    assert rows["nll"][1] < rows["nll"][0]
    header = read_header(model)
    assert header["temperature"] == pytest.approx(rows["temperature"][1], rel=1e-3)
    assert header["calibration"]["n"] == 200 and header["calibration"]["features_file"] == str(w["val"])
    assert header["classes"] == ["down", "up"] and header["history"] == [{"loss": 1.0}] and header["extractor"] == "tabular"
    assert f"wrote {model}" in err
    assert sorted(p.name for p in w["folder"].glob(".inplace*")) == []  # no temporary file left


def test_calibrate_to_a_new_file_leaves_the_original_and_predict_and_evaluate_use_it(w, capsys):
    original = w["model"].read_bytes()
    out_model = w["folder"] / "calibrated.flowgmm"
    code, out, err = run_cli(["calibrate", w["model"], w["val"], "--labels", w["val_labels"], "-o", out_model, "--json", "-q"], capsys)
    assert code == 0, err
    assert err == "" and w["model"].read_bytes() == original
    result = json.loads(out)
    assert set(result) == {"temperature_before", "temperature", "n", "before", "after", "model"}
    assert result["after"]["nll"] < result["before"]["nll"] and result["model"] == str(out_model)
    # evaluate on the same rows reports the calibrated NLL; predict's probabilities are the calibrated ones
    code, out, _ = run_cli(["evaluate", out_model, w["val"], "--labels", w["val_labels"], "--json"], capsys)
    assert json.loads(out)["nll"] == pytest.approx(result["after"]["nll"], rel=1e-4)
    for model, name in ((w["model"], "before.csv"), (out_model, "after.csv")):
        assert run_cli(["predict", model, w["val"], "-o", w["folder"] / name, "-q"], capsys)[0] == 0
    before, after = (pd.read_csv(w["folder"] / name) for name in ("before.csv", "after.csv"))
    calibrated = FlowGMMClassifier.load(out_model)
    X_val = _noisy_moons(200, 1)[0]
    np.testing.assert_allclose(after[["p_down", "p_up"]], calibrated.predict_proba(X_val), atol=1e-5)
    assert not np.allclose(after["confidence"], before["confidence"], atol=1e-3)
    # calibrating the calibrated model again gives the same scale
    code, out, _ = run_cli(["calibrate", out_model, w["val"], "--labels", w["val_labels"], "-o", w["folder"] / "again.flowgmm", "--json", "-q"], capsys)
    assert json.loads(out)["temperature"] == pytest.approx(result["temperature"], rel=1e-5)


# -------------------------------------------------------------------------------- evaluate
def test_evaluate_reports_brier_per_class_scores_confusion_matrix_and_ood(w, capsys):
    code, out, err = run_cli(["evaluate", w["model"], w["val"], "--labels", w["val_labels"], "--ood", w["far"], "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"accuracy", "nll", "ece", "brier", "n", "per_class", "confusion_matrix", "ood"}
    # every number again, from the model file and scikit-learn
    model = FlowGMMClassifier.load(w["model"])
    X_val, y_val = _noisy_moons(200, 1)
    proba = model.predict_proba(X_val)
    predicted = proba.argmax(1)
    assert report["n"] == 200 and report["accuracy"] == pytest.approx(skm.accuracy_score(y_val, predicted))
    assert 0.75 < report["accuracy"] < 1.0  # overlapping moons: the model is mostly, not always, right
    assert report["nll"] == pytest.approx(skm.log_loss(y_val, proba), rel=1e-6)
    assert report["brier"] == pytest.approx(np.mean(((proba - np.eye(2)[y_val]) ** 2).sum(1)), rel=1e-6)
    assert report["confusion_matrix"] == skm.confusion_matrix(y_val, predicted).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_val, predicted)
    for k, name in enumerate(["down", "up"]):
        assert report["per_class"][name] == pytest.approx({"precision": precision[k], "recall": recall[k], "f1": f1[k], "support": support[k]})
    far = X_val + 10.0
    truth = np.r_[np.ones(200), np.zeros(200)]
    expected = skm.roc_auc_score(truth, np.r_[model.score_samples(X_val), model.score_samples(far)])
    assert report["ood"]["auroc"] == pytest.approx(expected) and report["ood"]["auroc"] > 0.99
    assert report["ood"]["file"] == str(w["far"]) and report["ood"]["n_in"] == 200 and report["ood"]["n_out"] == 200
    assert report["ood"]["fpr_at_95_tpr"] == pytest.approx(np.mean(model.score_samples(far) >= np.quantile(model.score_samples(X_val), 0.05, method="lower")))
    # the text report shows the same numbers
    code, text, _ = run_cli(["evaluate", w["model"], w["val"], "--labels", w["val_labels"], "--ood", w["far"]], capsys)
    assert code == 0
    scalars, per_class, matrix, ood = (block.splitlines() for block in text.split("\n\n"))
    assert [line.split() for line in scalars] == [[key, f"{report[key]:.4f}"] for key in ("accuracy", "nll", "ece", "brier")] + [["n", "200"]]
    assert per_class[0].split() == ["class", "precision", "recall", "f1", "support"]
    for line, name in zip(per_class[1:], ["down", "up"], strict=True):
        scores = report["per_class"][name]
        assert line.split() == [name, *(f"{scores[k]:.4f}" for k in ("precision", "recall", "f1")), str(scores["support"])]
    assert matrix[1].split() == ["down", "up"]
    assert [[int(v) for v in line.split()[1:]] for line in matrix[2:]] == report["confusion_matrix"]
    assert f"auroc {report['ood']['auroc']:.4f}, fpr at 95% tpr {report['ood']['fpr_at_95_tpr']:.4f} (200 rows in, 200 out" in ood[0]


# ------------------------------------------------------------------------------- visualize
def test_visualize_all_kinds_on_two_dimensional_features(w, capsys):
    """Every kind from the command line; the tables hold numbers computed here from the model file."""
    out = w["folder"] / "plots"
    twin = _copy_model(w, "twin.flowgmm")
    args = ["visualize", w["model"], w["moons"], "--labels", w["moons_labels"], "-o", out, "--compare", twin, "--near", "0.5"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    vector_kinds = [k for k in KINDS if k != "features"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.{ext}" for k in vector_kinds for ext in ("png", "csv"))
    assert [line.split(":")[0] for line in err.strip().splitlines()] == list(KINDS)
    assert "features: skipped, 'features' needs an image model" in err
    model = FlowGMMClassifier.load(w["model"])
    X, y = _noisy_moons(300, 0)
    X = X.astype(np.float32)
    Z, means = model.encode(X), model.means_

    latent = pd.read_csv(out / "latent.csv", keep_default_na=False)
    origin, axes = latent_plane(means, Z)
    np.testing.assert_allclose(latent[["u", "v"]], (Z - origin) @ axes.T, rtol=1e-5, atol=1e-5)
    assert latent["predicted"].tolist() == model.predict(X).tolist()
    assert latent["label"].tolist() == [["down", "up"][k] for k in y[:6]] + [""] * 294  # the six rows of --labels

    # d(x) with two classes: the distance of z to the hyperplane halfway between the means
    normal = means[1] - means[0]
    expected = np.abs((Z - (means[0] + means[1]) / 2) @ normal) / np.linalg.norm(normal)
    distance = pd.read_csv(out / "distance.csv")
    np.testing.assert_allclose(distance["distance"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(distance["compare_distance"], distance["distance"])  # --compare: a copy of the model
    near = int(np.sum(expected < 0.5))
    assert f"distance: rows of 300 with d(x) < 0.5: moons {near}, twin {near}; median d(x) {np.median(expected):.3g}" in err

    reliability = pd.read_csv(out / "reliability.csv")
    assert reliability["curve"].unique().tolist() == ["before"] and len(reliability) == 15
    confidence = model.predict_proba(X[:6]).max(1)
    bins = np.ceil(confidence * 15).astype(int) - 1
    assert reliability["count"].tolist() == np.bincount(bins, minlength=15).tolist()

    code, _, err = run_cli(["visualize", w["model"], w["moons"], "-o", out, "--kind", "interpolation", "--pair", "moons-0", "moons-9"], capsys)
    assert code == 0, err
    table = pd.read_csv(out / "interpolation.csv")
    assert set(table["from_id"]) == {"moons-0"} and set(table["to_id"]) == {"moons-9"} and len(table) == INTERPOLATION_STEPS
    alpha = table["alpha"].to_numpy()
    path = model.decode(np.outer(1 - alpha, Z[0]) + np.outer(alpha, Z[9]))
    np.testing.assert_allclose(table["log_px"], model.score_samples(path), rtol=1e-4, atol=1e-4)


def test_visualize_compare_with_a_model_of_the_same_file_name(w, capsys):
    (w["folder"] / "run2").mkdir()
    X, y = _noisy_moons(300, 0)
    other = FlowGMMClassifier(epochs=2, hidden=8, coupling_layers=2, random_state=3, device="cpu").fit(X, np.array(["down", "up"])[y])
    other.save(w["folder"] / "run2" / "moons.flowgmm", extractor="tabular")
    out = w["folder"] / "same_name"
    code, _, err = run_cli(["visualize", w["model"], w["moons"], "-o", out, "--kind", "distance", "--compare", w["folder"] / "run2" / "moons.flowgmm"], capsys)
    assert code == 0, err
    table = pd.read_csv(out / "distance.csv")
    model = FlowGMMClassifier.load(w["model"])
    X = X.astype(np.float32)
    mine = np.abs((model.encode(X) - model.means_.mean(0)) @ (model.means_[1] - model.means_[0])) / np.linalg.norm(model.means_[1] - model.means_[0])
    assert not np.allclose(table["compare_distance"], mine, rtol=1e-3), "the two models differ"
    np.testing.assert_allclose(table["distance"], mine, rtol=1e-5, atol=1e-6)


def test_visualize_all_skips_what_does_not_apply_and_says_so(w, capsys):
    out = w["folder"] / "cube_plots"
    code, _, err = run_cli(["visualize", w["cube_model"], w["cube"], "-o", out], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == "boundary: skipped, 'boundary' needs 2-dimensional features, these have 3"
    assert lines[4] == "reliability: skipped, 'reliability' needs labeled rows; pass --labels"  # no labels given
    drawn = ["latent", "samples", "distance", "interpolation", "means"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.{ext}" for k in drawn for ext in ("png", "csv"))
    means = pd.read_csv(out / "means.csv", dtype={"class": str})
    model = FlowGMMClassifier.load(w["cube_model"])
    np.testing.assert_allclose(means[["x0", "x1", "x2"]], model.decode(model.means_), rtol=1e-5, atol=1e-6)


def _bad_cases(w: dict[str, Path]) -> dict[str, tuple[list, Path | None]]:
    """name → (arguments, a path that must not appear)."""
    f = w["folder"]
    (f / "martian.csv").write_text("id,label\nval-0,down\nval-1,martian\n")
    (f / "one_class.csv").write_text("id,label\nval-0,down\nval-1,down\n")
    (f / "a_file").write_text("not a folder")
    model = _copy_model(w, "bad.flowgmm")
    return {
        "calibrate with a class the model does not know": (["calibrate", model, w["val"], "--labels", f / "martian.csv", "-o", f / "c1.flowgmm"], f / "c1.flowgmm"),
        "calibrate with a single class": (["calibrate", model, w["val"], "--labels", f / "one_class.csv", "-o", f / "c2.flowgmm"], f / "c2.flowgmm"),
        "calibrate on features of another dimension": (["calibrate", model, w["cube"], "--labels", w["cube_labels"], "-o", f / "c3.flowgmm"], f / "c3.flowgmm"),
        "calibrate into a missing folder": (["calibrate", model, w["val"], "--labels", w["val_labels"], "-o", f / "no" / "c4.flowgmm"], f / "no"),
        "evaluate with --ood of another dimension": (["evaluate", model, w["val"], "--labels", w["val_labels"], "--ood", w["cube"]], None),
        "boundary on 3-D features": (["visualize", w["cube_model"], w["cube"], "-o", f / "v1", "--kind", "boundary"], f / "v1"),
        "reliability without labels": (["visualize", model, w["far"], "-o", f / "v2", "--kind", "reliability"], f / "v2"),
        "--pair id not in the file": (["visualize", model, w["moons"], "-o", f / "v3", "--kind", "interpolation", "--pair", "moons-0", "nope"], f / "v3"),
        "--compare model of another dimension": (["visualize", model, w["moons"], "-o", f / "v4", "--kind", "distance", "--compare", w["cube_model"]], f / "v4"),
        "output folder is a file": (["visualize", model, w["moons"], "-o", f / "a_file", "--kind", "means"], None),
        "unknown plot kind": (["visualize", model, w["moons"], "-o", f / "v5", "--kind", "pie"], f / "v5"),
        "visualize with a class the model does not know": (["visualize", model, w["val"], "--labels", f / "martian.csv", "-o", f / "v6"], f / "v6"),
    }


def test_every_bad_input_gets_exit_2_one_sentence_and_no_output(w, capsys):
    cases = _bad_cases(w)
    model_bytes = (w["folder"] / "bad.flowgmm").read_bytes()
    failures = bad_input_failures(cases, capsys)
    assert not failures, "\n".join(failures)
    assert (w["folder"] / "bad.flowgmm").read_bytes() == model_bytes
    assert (w["folder"] / "a_file").read_text() == "not a folder"


def test_ids_missing_from_the_file_name_no_flag_the_command_lacks(w, capsys):
    """evaluate, calibrate and visualize have no --allow-missing, so the message must not offer it."""
    f = w["folder"]
    (f / "stranger.csv").write_text("id,label\nval-0,down\nnobody,up\n")
    for command in (["evaluate", w["model"], w["val"]], ["calibrate", w["model"], w["val"], "-o", f / "c.flowgmm"], ["visualize", w["model"], w["val"], "-o", f / "v"]):
        code, _, err = run_cli([*command, "--labels", f / "stranger.csv"], capsys)
        assert code == 2 and "first 'nobody'; fix the ids." in err and "--allow-missing" not in err, err
