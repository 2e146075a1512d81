"""``calibrate``, ``evaluate`` (Brier, per-class scores, confusion matrix, --ood) and ``visualize`` from the
command line, and every bad input of issue 5 gets exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_moons
from flowgmm_testutils import bad_input_failures, run_cli

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.features import FeatureWriter
from flowgmm_cli.metrics import auroc
from flowgmm_cli.modelfile import read_header
from flowgmm_cli.visualize import KINDS


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
    clf = FlowGMMClassifier(epochs=40, hidden=32, coupling_layers=4, lr=0.01, random_state=0, device="cpu").fit(X, names[y])
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
    assert {"brier", "per_class", "confusion_matrix", "ood"} <= set(report)
    assert set(report["per_class"]) == {"down", "up"} and set(report["per_class"]["up"]) == {"precision", "recall", "f1", "support"}
    assert np.sum(report["confusion_matrix"]) == 200 == report["n"]
    model = FlowGMMClassifier.load(w["model"])
    X_val = _noisy_moons(200, 1)[0]
    expected = auroc(model.score_samples(X_val), model.score_samples(X_val + 10.0))
    assert report["ood"]["auroc"] == pytest.approx(expected) and report["ood"]["auroc"] > 0.99
    assert report["ood"]["n_in"] == 200 and report["ood"]["n_out"] == 200 and 0 <= report["ood"]["fpr_at_95_tpr"] <= 1
    code, text, _ = run_cli(["evaluate", w["model"], w["val"], "--labels", w["val_labels"], "--ood", w["far"]], capsys)
    assert code == 0
    assert "brier" in text and "precision" in text and "confusion matrix" in text and "auroc" in text


# ------------------------------------------------------------------------------- visualize
def test_visualize_all_kinds_on_two_dimensional_features(w, capsys):
    out = w["folder"] / "plots"
    args = ["visualize", w["model"], w["moons"], "--labels", w["moons_labels"], "-o", out, "--compare", w["model"]]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.{ext}" for k in KINDS for ext in ("png", "csv"))
    assert [line.split(":")[0] for line in err.strip().splitlines()] == list(KINDS)
    code, _, err = run_cli(["visualize", w["model"], w["moons"], "-o", out, "--kind", "interpolation", "--pair", "moons-0", "moons-9"], capsys)
    assert code == 0, err
    assert set(pd.read_csv(out / "interpolation.csv")["to_id"]) == {"moons-9"}


def test_visualize_all_skips_what_does_not_apply_and_says_so(w, capsys):
    out = w["folder"] / "cube_plots"
    code, _, err = run_cli(["visualize", w["cube_model"], w["cube"], "-o", out], capsys)
    assert code == 0, err
    assert "boundary: skipped, 'boundary' needs 2-dimensional features" in err
    assert "reliability: skipped" in err  # no labels given
    assert not (out / "boundary.png").exists() and (out / "latent.png").exists() and (out / "means.csv").exists()


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
