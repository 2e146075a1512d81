"""The command line, outside in: end to end through a subprocess, and every bad input gets exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from flowgmm_testutils import bad_input_failures, run_cli

FAST = ["--epochs", "100", "--hidden", "32", "--coupling-layers", "4", "--lr", "0.01", "--quiet"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A two-class table, its labels, its feature file and a quickly trained model."""
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-2, 1, (40, 3)), rng.normal(2, 1, (40, 3))])
    ids = [f"r{i}" for i in range(80)]
    pd.DataFrame({"id": ids, "a": X[:, 0], "b": X[:, 1], "c": X[:, 2]}).to_csv(folder / "table.csv", index=False)
    pd.DataFrame({"id": ids[::4], "label": ["neg" if i < 40 else "pos" for i in range(0, 80, 4)]}).to_csv(folder / "labels.csv", index=False)
    pd.DataFrame({"id": [f"q{i}" for i in range(5)], **{k: rng.normal(size=5) for k in "abcd"}}).to_csv(folder / "four.csv", index=False)
    paths = {name: folder / name for name in ("table.csv", "labels.csv", "four.csv")}
    paths.update(features=folder / "table.h5", model=folder / "model.flowgmm", four=folder / "four.h5", folder=folder)
    for source, target in (("table.csv", "features"), ("four.csv", "four")):
        code = subprocess.run([sys.executable, "-m", "flowgmm_cli", "embed", "--model", "tabular", paths[source], "-o", paths[target], "-q"]).returncode
        assert code == 0
    from flowgmm_cli import FlowGMMClassifier
    from flowgmm_cli.features import align_labels, read_features, read_labels

    features = read_features(paths["features"])
    names = align_labels(features, read_labels(paths["labels.csv"]))
    y = np.where(names == "", -1, names).astype(object)
    FlowGMMClassifier(epochs=2, hidden=16, coupling_layers=2).fit(features.features, y).save(paths["model"], extractor="tabular")
    return paths


def test_end_to_end_through_a_subprocess(workspace):
    """embed → train → predict → evaluate → info, as a shell script would run them."""
    flowgmm = [sys.executable, "-m", "flowgmm_cli"]
    w = workspace
    model = w["folder"] / "e2e.flowgmm"
    train = subprocess.run([*flowgmm, "train", w["features"], "--labels", w["labels.csv"], "-o", model, *FAST], capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    assert not Path(str(model) + ".ckpt").exists(), "the checkpoint is removed after a successful run"
    predict = subprocess.run([*flowgmm, "predict", model, w["features"], "-o", "-"], capture_output=True, text=True)
    assert predict.returncode == 0, predict.stderr
    lines = predict.stdout.strip().splitlines()
    assert lines[0] == "id,label,confidence,p_neg,p_pos,log_px"
    assert len(lines) == 81 and lines[1].startswith("r0,")
    evaluate = subprocess.run([*flowgmm, "evaluate", model, w["features"], "--labels", w["labels.csv"], "--json"], capture_output=True, text=True)
    report = json.loads(evaluate.stdout)
    assert set(report) == {"accuracy", "nll", "ece", "brier", "n", "per_class", "confusion_matrix"}
    assert report["n"] == 20 and report["accuracy"] > 0.9
    info = subprocess.run([*flowgmm, "info", model, "--json"], capture_output=True, text=True)
    assert json.loads(info.stdout)["classes"] == ["neg", "pos"]


def test_predict_file_matches_stdout(workspace, capsys):
    w = workspace
    assert run_cli(["train", w["features"], "--labels", w["labels.csv"], "-o", w["folder"] / "m2.flowgmm", *FAST], capsys)[0] == 0
    code, out, _ = run_cli(["predict", w["folder"] / "m2.flowgmm", w["features"], "-o", "-"], capsys)
    assert code == 0
    out_file = w["folder"] / "pred.csv"
    assert run_cli(["predict", w["folder"] / "m2.flowgmm", w["features"], "-o", out_file], capsys)[0] == 0
    assert out_file.read_text() == out
    frame = pd.read_csv(out_file)
    assert np.allclose(frame[["p_neg", "p_pos"]].sum(axis=1), 1.0, atol=1e-5)
    assert (frame["confidence"] >= 0.5).all()


def test_version_and_help_show_defaults(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("flowgmm ")
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0 and "default" in out.lower() and "--labeled-noise" in out


def test_resume_continues_to_the_same_model(workspace, capsys, monkeypatch):
    """Interrupt after epoch 2 of 4, resume, and get the model an uninterrupted run gives."""
    from flowgmm_cli import training
    from flowgmm_cli.modelfile import load_model

    w = workspace
    args = ["train", w["features"], "--labels", w["labels.csv"], "--epochs", "4", "--hidden", "16", "--coupling-layers", "2", "-q"]
    assert run_cli([*args, "-o", w["folder"] / "straight.flowgmm"], capsys)[0] == 0

    real_save = training._save_checkpoint

    def save_then_stop(path, model, optimizer, generator, state, fingerprint):
        real_save(path, model, optimizer, generator, state, fingerprint)
        if state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_stop)
    resumed = w["folder"] / "resumed.flowgmm"
    code, _, err = run_cli([*args, "-o", resumed], capsys)
    assert code == 130 and "Interrupted" in err and not resumed.exists()
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    assert run_cli([*args, "-o", resumed, "--resume"], capsys)[0] == 0
    straight_model, _ = load_model(w["folder"] / "straight.flowgmm")
    resumed_model, _ = load_model(resumed)
    for (name, a), b in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch_equal(a, b), name


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _write_h5(path: Path, X: np.ndarray, ids: list[str]) -> Path:
    with h5py.File(path, "w") as handle:
        handle["features"] = X.astype(np.float32)
        handle["ids"] = np.array(ids, dtype=object).astype("S")
    return path


def bad_cases(w: dict[str, Path]) -> dict[str, tuple[list, Path | None]]:
    """name → (arguments, output that must not appear)."""
    f = w["folder"]

    def csv(name: str, text: str) -> Path:
        (f / name).write_text(text)
        return f / name

    nan_h5 = _write_h5(f / "nan.h5", np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), ["a", "b", "c"])
    dup_h5 = _write_h5(f / "dup.h5", np.zeros((2, 2)), ["a", "a"])
    (f / "notes.h5").write_text("not hdf5")
    with h5py.File(f / "nofeat.h5", "w") as handle:
        handle["other"] = np.zeros(3)
    train = lambda features, labels, out, *extra: (["train", features, "--labels", labels, "-o", f / out, *FAST, *extra], f / out)  # noqa: E731
    return {
        "missing features file": train(f / "nope.h5", w["labels.csv"], "o1.flowgmm"),
        "features file is not HDF5": train(f / "notes.h5", w["labels.csv"], "o2.flowgmm"),
        "HDF5 without /features": train(f / "nofeat.h5", w["labels.csv"], "o3.flowgmm"),
        "labels without label column": train(w["features"], csv("l1.csv", "id,klass\nr0,neg\nr4,pos\n"), "o4.flowgmm"),
        "labels without id column": train(w["features"], csv("l2.csv", "name,label\nr0,neg\nr4,pos\n"), "o5.flowgmm"),
        "duplicate label ids": train(w["features"], csv("l3.csv", "id,label\nr0,neg\nr0,pos\nr44,pos\n"), "o6.flowgmm"),
        "duplicate feature ids": train(dup_h5, w["labels.csv"], "o7.flowgmm"),
        "label ids absent from features": train(w["features"], csv("l4.csv", "id,label\nzz,neg\nr44,pos\n"), "o8.flowgmm"),
        "a class empty after the validation split": train(w["features"], csv("l5.csv", "id,label\nr0,neg\nr44,pos\nr48,pos\n"), "o9.flowgmm", "--val-fraction", "0.5"),
        "fewer than 2 classes": train(w["features"], csv("l6.csv", "id,label\nr0,neg\nr4,neg\n"), "o10.flowgmm"),
        "NaN in features": train(nan_h5, csv("l7.csv", "id,label\na,x\nc,y\n"), "o11.flowgmm"),
        "non-numeric column": (["embed", "--model", "tabular", csv("s.csv", "id,a,b\nx0,1,hello\n"), "-o", f / "o12.h5"], f / "o12.h5"),
        "NaN in a tabular CSV": (["embed", "--model", "tabular", csv("n.csv", "id,a\nx0,1\nx1,nan\n"), "-o", f / "o13.h5"], f / "o13.h5"),
        "empty CSV": (["embed", "--model", "tabular", csv("e.csv", ""), "-o", f / "o14.h5"], f / "o14.h5"),
        "header-only CSV": (["embed", "--model", "tabular", csv("h.csv", "id,a\n"), "-o", f / "o15.h5"], f / "o15.h5"),
        "duplicate ids in a CSV": (["embed", "--model", "tabular", csv("d.csv", "id,a\nx0,1\nx0,2\n"), "-o", f / "o16.h5"], f / "o16.h5"),
        "unknown extractor": (["embed", "--model", "nope", w["table.csv"], "-o", f / "o17.h5"], f / "o17.h5"),
        "model of another dimension": (["predict", w["model"], w["four"], "-o", f / "o18.csv"], f / "o18.csv"),
        "output folder does not exist": (["predict", w["model"], w["features"], "-o", f / "no" / "dir" / "p.csv"], f / "no" / "dir" / "p.csv"),
        "model file is not a model": (["predict", w["labels.csv"], w["features"], "-o", f / "o19.csv"], f / "o19.csv"),
        "missing model file": (["predict", f / "nope.flowgmm", w["features"], "-o", f / "o20.csv"], f / "o20.csv"),
        "evaluate with an unknown class": (["evaluate", w["model"], w["features"], "--labels", csv("l8.csv", "id,label\nr0,martian\n")], None),
        "resume with a checkpoint from other data": train(w["features"], w["labels.csv"], "other.flowgmm", "--resume"),
        "unknown device": train(w["features"], w["labels.csv"], "o21.flowgmm", "--device", "tpu"),
        "validation labels without validation rows": train(w["features"], w["labels.csv"], "o22.flowgmm", "--val-labels", w["labels.csv"]),
    }


def test_every_bad_input_gets_exit_2_and_one_clear_sentence(workspace, capsys):
    w = workspace
    cases = bad_cases(w)
    # a checkpoint made on other data (the four-column file) for the resume case
    other = w["folder"] / "other.flowgmm"
    four_labels = w["folder"] / "four_labels.csv"
    four_labels.write_text("id,label\nq0,a\nq1,b\n")
    assert run_cli(["train", w["four"], "--labels", four_labels, "-o", other, *FAST], capsys)[0] == 0
    Path(str(other) + ".ckpt").write_bytes((w["folder"] / "other.flowgmm").read_bytes())
    other.unlink()
    failures = bad_input_failures(cases, capsys)
    assert not failures, "\n".join(failures)


def test_nan_message_names_the_first_row(workspace, capsys):
    f = workspace["folder"]
    nan_h5 = _write_h5(f / "nan2.h5", np.array([[0.0, 1.0], [1.0, 1.0], [np.inf, 2.0]]), ["a", "b", "c"])
    code, _, err = run_cli(["predict", workspace["model"], nan_h5, "-o", f / "x.csv"], capsys)
    assert code == 2 and "row 2" in err and "'c'" in err


def test_non_numeric_message_names_the_column(workspace, capsys):
    f = workspace["folder"]
    (f / "mixed.csv").write_text("id,a,colour\nx0,1,red\n")
    code, _, err = run_cli(["embed", "--model", "tabular", f / "mixed.csv", "-o", f / "mixed.h5"], capsys)
    assert code == 2 and "'colour'" in err


def test_validation_file_chooses_the_best_epoch(workspace, capsys):
    """--val with --val-labels: training reports validation accuracy and keeps the best epoch."""
    w = workspace
    out = w["folder"] / "val.flowgmm"
    code, _, err = run_cli(["train", w["features"], "--labels", w["labels.csv"], "--val", w["features"],
                            "--val-labels", w["labels.csv"], "-o", out, *FAST[:-1]], capsys)  # fmt: skip
    assert code == 0, err
    assert "best epoch" in err and "val acc" in err
    from flowgmm_cli.modelfile import read_header

    history = read_header(out)["history"]
    assert all(h["val_accuracy"] is not None for h in history)
