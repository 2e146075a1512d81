"""The command line, outside in: embed → train → predict → evaluate → info with a held-out test set
(predict through a subprocess), what ``info`` prints, ``--help`` and shell completion,
``--allow-missing``, best-epoch selection, and every bad input gets exit 2 and one sentence."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from flowgmm_testutils import bad_input_failures, interrupt_after, run_cli, state_equal

from flowgmm_cli import FlowGMMClassifier, __version__
from flowgmm_cli.cli_options import flag
from flowgmm_cli.features import read_features
from flowgmm_cli.modelfile import FORMAT_VERSION, load_model, read_header
from flowgmm_cli.options import Panel, option_fields

FAST = ["--epochs", "100", "--hidden", "32", "--coupling-layers", "4", "--lr", "0.01", "--quiet"]
TINY = ["--epochs", "2", "--hidden", "8", "--coupling-layers", "2", "--quiet"]


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes in 3-D, centred at -2 and +2 on every axis: half the rows each, class 0 first."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    return np.where(y[:, None] == 1, 2.0, -2.0) + rng.normal(size=(n, 3)), y


def _table(path: Path, ids: list[str], X: np.ndarray) -> Path:
    pd.DataFrame({"id": ids, **{name: X[:, k] for k, name in enumerate("abcd"[: X.shape[1]])}}).to_csv(path, index=False)
    return path


def _embed(source: Path, target: Path) -> Path:
    from extractors import EmbedRequest, get_extractor

    get_extractor("tabular").embed(EmbedRequest(str(source), target))
    return target


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A two-class training table (80 rows, every fourth labeled), a held-out test table of 60 labeled
    rows from the same distribution, a 4-column table, their feature files and a barely trained model."""
    folder = tmp_path_factory.mktemp("cli")
    names = np.array(["neg", "pos"])
    X, y = _blobs(80, 0)
    X_test, y_test = _blobs(60, 1)
    ids, test_ids = [f"r{i}" for i in range(80)], [f"t{i}" for i in range(60)]
    paths = {
        "folder": folder,
        "table.csv": _table(folder / "table.csv", ids, X),
        "test.csv": _table(folder / "test.csv", test_ids, X_test),
        "four.csv": _table(folder / "four.csv", [f"q{i}" for i in range(5)], np.random.default_rng(2).normal(size=(5, 4))),
    }
    pd.DataFrame({"id": ids[::4], "label": names[y[::4]]}).to_csv(folder / "labels.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": names[y_test]}).to_csv(folder / "test_labels.csv", index=False)
    paths.update({"labels.csv": folder / "labels.csv", "test_labels.csv": folder / "test_labels.csv"})
    paths["features"] = _embed(paths["table.csv"], folder / "table.h5")
    paths["test"] = _embed(paths["test.csv"], folder / "test.h5")
    paths["four"] = _embed(paths["four.csv"], folder / "four.h5")
    partial = np.full(80, -1, dtype=object)
    partial[::4] = names[y[::4]]
    FlowGMMClassifier(epochs=2, hidden=16, coupling_layers=2).fit(X, partial).save(folder / "model.flowgmm", extractor="tabular")
    paths["model"] = folder / "model.flowgmm"
    return paths


@pytest.fixture(scope="module")
def trained(workspace) -> Path:
    """A model trained by ``flowgmm train`` on the training table with FAST settings."""
    w = workspace
    model = w["folder"] / "trained.flowgmm"
    code = _main(["train", w["features"], "--labels", w["labels.csv"], "-o", model, *FAST])
    assert code == 0 and model.exists()
    return model


def _main(args: list) -> int:
    """``flowgmm ARGS`` in this process without capsys (for module fixtures); returns the exit code."""
    from flowgmm_cli.cli import main

    old = sys.argv
    sys.argv = ["flowgmm", *map(str, args)]
    try:
        main()
        return 0
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    finally:
        sys.argv = old


def _test_truth(w: dict[str, Path]) -> np.ndarray:
    return pd.read_csv(w["test_labels.csv"])["label"].to_numpy()


# ------------------------------------------------------------------------------- end to end
def test_end_to_end_with_a_held_out_test_set(workspace, capsys):
    """embed → train → predict (a subprocess, CSV on stdout) → evaluate → info, as a shell script would."""
    w = workspace
    folder = w["folder"] / "e2e"
    folder.mkdir()
    code, out, err = run_cli(["embed", "--model", "tabular", w["table.csv"], "-o", folder / "train.h5"], capsys)
    assert code == 0 and out == "" and "wrote 80 rows" in err
    assert np.array_equal(read_features(folder / "train.h5").features, read_features(w["features"]).features)
    model = folder / "model.flowgmm"
    code, out, err = run_cli(["train", folder / "train.h5", "--labels", w["labels.csv"], "-o", model, *FAST[:-1]], capsys)
    assert code == 0, err
    assert out == "" and "wrote" in err and "2 classes, 100 epochs" in " ".join(err.split())
    assert not Path(str(model) + ".ckpt").exists(), "the checkpoint is removed after a successful run"

    predict = subprocess.run([sys.executable, "-m", "flowgmm_cli", "predict", model, w["test"], "-o", "-"], capture_output=True, text=True)
    assert predict.returncode == 0 and predict.stderr == "", predict.stderr
    lines = predict.stdout.strip().splitlines()
    assert lines[0] == "id,label,confidence,p_neg,p_pos,log_px"
    frame = pd.read_csv(io.StringIO(predict.stdout))
    assert frame["id"].tolist() == [f"t{i}" for i in range(60)], "rows in the feature file's order"
    truth = _test_truth(w)
    accuracy = float(np.mean(frame["label"].to_numpy() == truth))
    assert accuracy >= 0.9, accuracy  # two blobs 4 std apart per axis: the Bayes rate is about 1

    code, out, err = run_cli(["evaluate", model, w["test"], "--labels", w["test_labels.csv"], "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"accuracy", "nll", "ece", "brier", "n", "per_class", "confusion_matrix"}
    assert report["n"] == 60 and report["accuracy"] == pytest.approx(accuracy)
    p_true = np.where(truth == "neg", frame["p_neg"], frame["p_pos"])
    assert report["nll"] == pytest.approx(-np.mean(np.log(p_true)), rel=1e-3, abs=1e-5)
    assert np.sum(report["confusion_matrix"]) == 60 and np.trace(report["confusion_matrix"]) == round(accuracy * 60)
    code, out, _ = run_cli(["info", model, "--json"], capsys)
    header = json.loads(out)
    assert header["classes"] == ["neg", "pos"] and header["n_labeled"] == 20 and header["n_unlabeled"] == 60
    assert header["features_file"] == str(folder / "train.h5") and header["extractor"] == "tabular"


def test_predictions_are_the_models_probabilities_on_held_out_rows(workspace, trained, capsys):
    w = workspace
    code, out, err = run_cli(["predict", trained, w["test"], "-o", "-"], capsys)
    assert code == 0 and err == ""
    out_file = w["folder"] / "pred.csv"
    code, _, err = run_cli(["predict", trained, w["test"], "-o", out_file], capsys)
    assert code == 0 and "wrote 60 predictions to" in err
    assert out_file.read_text() == out
    frame = pd.read_csv(out_file)
    proba = frame[["p_neg", "p_pos"]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (frame["label"] == np.array(["neg", "pos"])[proba.argmax(1)]).all()
    np.testing.assert_allclose(frame["confidence"], proba.max(1), rtol=1e-5)
    # the same numbers from the model file, computed here
    X_test = read_features(w["test"]).features
    estimator = FlowGMMClassifier.load(trained)
    np.testing.assert_allclose(proba, estimator.predict_proba(X_test), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(frame["log_px"], estimator.score_samples(X_test), rtol=1e-5)
    assert np.mean(frame["label"] == _test_truth(w)) >= 0.9
    # rows far from the training data get a lower log p(x) than every test row
    assert estimator.score_samples(X_test + 25.0).max() < frame["log_px"].min()


# --------------------------------------------------------------------------------- the header
def _info_lines(model: Path, capsys) -> dict[str, str]:
    code, out, err = run_cli(["info", model], capsys)
    assert code == 0, err
    lines = out.rstrip("\n").split("\n")
    keys = [line[:13].strip() for line in lines]
    assert all(line[13:14] != " " and line[12] == " " for line in lines), "values start in column 14"
    return dict(zip(keys, (line[13:] for line in lines), strict=True))


def test_info_describes_every_part_of_the_model(workspace, capsys):
    w = workspace
    model = w["folder"] / "described.flowgmm"
    args = ["train", w["features"], "--labels", w["labels.csv"], "-o", model, "--epochs", "3", "--hidden", "8",
            "--coupling-layers", "2", "--hidden-layers", "2", "--projection-dim", "2", "--means-scale", "1.5",
            "--variance", "2.0", "--seed", "5", "--scaling", "shared", "--square-root", "--actnorm", "--members", "1", "-q"]  # fmt: skip
    assert run_cli(args, capsys)[0] == 0
    header = read_header(model)
    lines = _info_lines(model, capsys)
    assert list(lines) == ["model", "format", "classes", "features", "flow", "mixture", "rows", "options", "resolved", "final loss"]
    assert lines["model"] == str(model)
    assert lines["format"] == f"flowgmm v{FORMAT_VERSION} (written by flowgmm {__version__})"
    assert lines["classes"] == "neg, pos"
    assert lines["features"] == "3-d from extractor 'tabular', square-rooted, flow on the top 2 principal directions"
    assert lines["flow"] == "realnvp: 2 couplings, hidden 8 x 2"
    evidence = header["calibration"]
    assert evidence["source"] == "calibration fits" and evidence["n"] == 20  # every labeled row held out once
    right = f"{100 * evidence['accuracy']:.0f}% ± {100 * evidence['standard_error']:.0f} right"
    assert lines["mixture"] == f"means scale 1.5, variance 2.0, temperature {header['temperature']} (20 held-out labels, {right})"
    assert lines["rows"] == "20 labeled, 60 unlabeled"
    assert json.loads(lines["options"]) == {
        "coupling_layers": 2, "hidden": 8, "hidden_layers": 2, "actnorm": True, "means_scale": 1.5, "variance": 2.0,
        "scaling": "shared", "square_root": True, "projection_dim": 2, "epochs": 3, "random_state": 5, "members": 1,
    }  # fmt: skip
    assert json.loads(lines["resolved"]) == header["resolved"] and header["resolved"]["labeled_noise"] > 0
    assert lines["final loss"] == f"{header['history'][-1]['loss']:.4f} nats/dim after 3 epochs"


def test_info_of_a_model_with_data_chosen_means_and_after_calibration(workspace, trained, capsys):
    w = workspace
    lines = _info_lines(trained, capsys)
    assert lines["features"] == "3-d from extractor 'tabular'"  # no projection
    assert lines["flow"] == "realnvp: 4 couplings, hidden 32 x 1"  # three classes: one flow by default
    separation = read_header(trained)["members"][0]["prior"]["separation"]
    trained_temperature = read_header(trained)["temperature"]
    assert separation > 0 and lines["mixture"].startswith(f"closest means {separation} std apart, variance 1.72, temperature {trained_temperature} (")
    assert json.loads(lines["options"]) == {"coupling_layers": 4, "hidden": 32, "epochs": 100, "lr": 0.01}
    calibrated = w["folder"] / "calibrated.flowgmm"
    code, _, err = run_cli(["calibrate", trained, w["test"], "--labels", w["test_labels.csv"], "-o", calibrated, "-q"], capsys)
    assert code == 0, err
    temperature = read_header(calibrated)["temperature"]
    assert temperature != trained_temperature
    evidence = read_header(calibrated)["calibration"]
    right = f"{100 * evidence['accuracy']:.0f}% ± {100 * evidence['standard_error']:.0f} right"
    assert evidence["n"] == 60 and _info_lines(calibrated, capsys)["mixture"].endswith(f", temperature {temperature} (60 validation rows, {right})")
    defaults = w["folder"] / "defaults.flowgmm"
    shutil.copy(w["model"], defaults)  # trained through the library with default options but three
    assert json.loads(_info_lines(defaults, capsys)["options"]) == {"coupling_layers": 2, "hidden": 16, "epochs": 2}


def test_info_lists_options_set_to_zero(workspace, capsys):
    w = workspace
    model = w["folder"] / "zeros.flowgmm"
    args = ["train", w["features"], "--labels", w["labels.csv"], "-o", model, *TINY, "--hidden-layers", "0", "--unlabeled-weight", "0", "--grad-clip", "0"]
    assert run_cli(args, capsys)[0] == 0
    options = json.loads(_info_lines(model, capsys)["options"])
    assert options == {"coupling_layers": 2, "hidden": 8, "epochs": 2, "hidden_layers": 0, "unlabeled_weight": 0.0, "grad_clip": 0.0}


def test_info_of_a_model_saved_through_the_python_api(workspace, capsys):
    lines = _info_lines(workspace["model"], capsys)  # 80 rows, 20 of them labeled
    assert lines["rows"] == "20 labeled, 60 unlabeled"


# ------------------------------------------------------------------------- help and completion
def test_version_prints_the_package_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out == f"flowgmm {__version__}\n"


def _panels(text: str) -> dict[str, str]:
    """The boxes of Rich's help: title → the text inside."""
    panels: dict[str, str] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("╭─"):
            title = line.strip("╭─╮ ").strip()
            panels[title] = ""
        elif line.startswith("╰"):
            title = None
        elif title is not None:
            panels[title] += line + "\n"
    return panels


def test_train_help_groups_the_options_in_panels_and_lists_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no column too narrow for the flags
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    panels = _panels(out)
    assert list(panels) == ["Arguments", "Options", "Data", "Model", "Loss", "Optimisation", "Runtime"]
    flags = {name: {word for word in body.split() if word.startswith("--")} for name, body in panels.items()}
    for name, expected in (("Data", "--val-fraction"), ("Data", "--allow-missing"), ("Model", "--scaling"), ("Loss", "--labeled-noise"),
                           ("Optimisation", "--lr"), ("Runtime", "--seed"), ("Runtime", "--resume")):  # fmt: skip
        assert expected in flags[name], (name, expected)
    for spec in option_fields():  # every training option once, in the panel its declaration names
        assert flag(spec.name) in flags[spec.metadata["panel"].value], spec.name
        assert sum(flag(spec.name) in found for found in flags.values()) == 1, spec.name
    assert {p.value for p in Panel} <= set(panels)
    scaling = next(line for line in panels["Model"].splitlines() if "--scaling" in line)
    assert "[feature|shared]" in scaling
    assert "[reverse|random]" in next(line for line in panels["Model"].splitlines() if "--permutation" in line)
    assert "auto: 1.2 x median neighbour distance" in " ".join(panels["Loss"].split())
    assert "[default: 0.001]" in next(line for line in panels["Optimisation"].splitlines() if "--lr" in line)


def test_shell_completion_is_available_and_completes_choices(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "--install-completion" in out and "--show-completion" in out
    # what bash gets back when the user presses TAB (Click's completion on the app's command, in this process)
    import typer.main
    from click.shell_completion import ShellComplete

    from flowgmm_cli.cli import app

    completion = ShellComplete(typer.main.get_command(app), {}, "flowgmm", "_FLOWGMM_COMPLETE")
    for args, incomplete, expected in (([], "tr", ["train"]), (["train"], "--val-f", ["--val-fraction"]),
                                       (["train", "--scaling"], "", ["feature", "shared"]),
                                       (["train", "--permutation"], "r", ["reverse", "random"])):  # fmt: skip
        assert [item.value for item in completion.get_completions(args, incomplete)] == expected, (args, incomplete)


# ------------------------------------------------------------------------------- training runs
def test_resume_continues_to_the_same_model(workspace, capsys, monkeypatch):
    """Interrupt after epoch 2 of 4, resume, and get the model an uninterrupted run gives."""
    w = workspace
    args = ["train", w["features"], "--labels", w["labels.csv"], "--epochs", "4", "--hidden", "16", "--coupling-layers", "2", "--members", "1", "-q"]
    assert run_cli([*args, "-o", w["folder"] / "straight.flowgmm"], capsys)[0] == 0

    interrupt_after(monkeypatch, 2)
    resumed = w["folder"] / "resumed.flowgmm"
    code, _, err = run_cli([*args, "-o", resumed], capsys)
    assert code == 130 and "Interrupted" in err and not resumed.exists()
    assert Path(str(resumed) + ".ckpt").exists()
    monkeypatch.undo()
    assert run_cli([*args, "-o", resumed, "--resume"], capsys)[0] == 0
    [straight_model], straight_header = load_model(w["folder"] / "straight.flowgmm")
    [resumed_model], resumed_header = load_model(resumed)
    assert state_equal(straight_model.state_dict(), resumed_model.state_dict())
    assert resumed_header["history"] == straight_header["history"] and len(resumed_header["history"]) == 4


def test_an_ensemble_interrupted_in_its_second_member_resumes_to_the_same_model(workspace, capsys, monkeypatch):
    """Ctrl-C in the second member's third epoch: the resumed run keeps the finished first member,
    continues the second from its checkpoint, and writes what an uninterrupted run writes."""
    from flowgmm_cli import training

    w = workspace
    args = ["train", w["features"], "--labels", w["labels.csv"], "--epochs", "3", "--hidden", "8", "--coupling-layers", "2", "--members", "2", "-q"]
    assert run_cli([*args, "-o", w["folder"] / "ensemble.flowgmm"], capsys)[0] == 0
    real_save, saved = training._save_checkpoint, []

    def save_then_stop(path, *rest):
        real_save(path, *rest)
        saved.append(Path(path).name)
        if len(saved) == 5:  # three epochs of the first member, two of the second
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_stop)
    resumed = w["folder"] / "ensemble-resumed.flowgmm"
    code, _, err = run_cli([*args, "-o", resumed], capsys)
    assert code == 130 and not resumed.exists()
    assert saved == ["ensemble-resumed.flowgmm.ckpt"] * 3 + ["ensemble-resumed.flowgmm.ckpt.1"] * 2
    monkeypatch.undo()
    assert run_cli([*args, "-o", resumed, "--resume"], capsys)[0] == 0
    straight, straight_header = load_model(w["folder"] / "ensemble.flowgmm")
    again, resumed_header = load_model(resumed)
    assert len(again) == 2 and all(state_equal(a.state_dict(), b.state_dict()) for a, b in zip(straight, again, strict=True))
    assert resumed_header["history"] == straight_header["history"] and len(resumed_header["history"]) == 6
    assert not list(w["folder"].glob("ensemble-resumed.flowgmm.ckpt*")), "the checkpoints are removed once the model is written"
    lines = _info_lines(resumed, capsys)
    assert lines["flow"].endswith("; a seed ensemble of 2, probabilities averaged")
    assert lines["final loss"].endswith("after 3 epochs (the last member)")


def test_allow_missing_warns_and_ignores_unknown_ids(workspace, capsys):
    w = workspace
    f = w["folder"]
    (f / "known.csv").write_text("id,label\nr0,neg\nr4,neg\nr44,pos\nr48,pos\n")
    (f / "with_unknown.csv").write_text("id,label\nr0,neg\nzz1,martian\nr4,neg\nr44,pos\nzz2,neg\nr48,pos\n")
    code, _, err = run_cli(["train", w["features"], "--labels", f / "with_unknown.csv", "-o", f / "refused.flowgmm", *TINY], capsys)
    assert code == 2 and "--allow-missing" in err and not (f / "refused.flowgmm").exists()
    code, out, err = run_cli(["train", w["features"], "--labels", f / "with_unknown.csv", "-o", f / "allowed.flowgmm", "--allow-missing", *TINY], capsys)
    assert code == 0, err
    assert out == ""
    assert err.splitlines()[0] == (
        f"Warning: 2 ids in labels file '{f / 'with_unknown.csv'}' are not in feature file '{w['features']}', first 'zz1'; ignoring them."
    )
    header = read_header(f / "allowed.flowgmm")
    assert header["classes"] == ["neg", "pos"], "the unknown ids' class is not a class of the model"
    assert (header["n_labeled"], header["n_unlabeled"]) == (4, 76)
    assert run_cli(["train", w["features"], "--labels", f / "known.csv", "-o", f / "known.flowgmm", *TINY], capsys)[0] == 0
    assert state_equal(load_model(f / "allowed.flowgmm")[0][0].state_dict(), load_model(f / "known.flowgmm")[0][0].state_dict())


def _overlapping(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping classes in 3-D, alternating rows: no model is always right."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return rng.normal(size=(n, 3)) + np.where(y[:, None] == 1, 1.0, -1.0) * np.array([1.0, 0.5, 0.0]), y


def test_a_validation_file_chooses_the_best_epoch(workspace, capsys):
    """--val with --val-labels (rows not used for training): the saved weights are those of the epoch
    with the best validation accuracy (then NLL), not the last epoch's."""
    f = workspace["folder"]
    names = np.array(["neg", "pos"])
    X, y = _overlapping(80, 0)
    X_val, y_val = _overlapping(60, 1)
    _embed(_table(f / "ov.csv", [f"o{i}" for i in range(80)], X), f / "ov.h5")
    _embed(_table(f / "ov_val.csv", [f"v{i}" for i in range(60)], X_val), f / "ov_val.h5")
    pd.DataFrame({"id": [f"o{i}" for i in range(0, 80, 5)], "label": names[y[::5]]}).to_csv(f / "ov_labels.csv", index=False)
    pd.DataFrame({"id": [f"v{i}" for i in range(60)], "label": names[y_val]}).to_csv(f / "ov_val_labels.csv", index=False)
    checked = []
    for seed in (0, 1, 2):  # the first seed whose best epoch is not the last (else the test could not tell)
        out = f / f"val{seed}.flowgmm"
        code, _, err = run_cli(["train", f / "ov.h5", "--labels", f / "ov_labels.csv", "--val", f / "ov_val.h5", "--val-labels",
                                f / "ov_val_labels.csv", "-o", out, "--epochs", "10", "--hidden", "16", "--coupling-layers", "2",
                                "--lr", "0.01", "--batch-size", "8", "--seed", seed, "--members", "1"], capsys)  # fmt: skip
        assert code == 0, err
        history = read_header(out)["history"]
        assert len(history) == 10 and all(h["val_accuracy"] is not None for h in history)
        best = max(history, key=lambda h: (h["val_accuracy"], -h["val_nll"]))
        assert f"best epoch {best['epoch']} (val acc {best['val_accuracy']:.3f})" in " ".join(err.split())
        if best["epoch"] == len(history):
            continue
        estimator = FlowGMMClassifier.load(out)
        log_proba = estimator.predict_log_proba(X_val, temperature=1.0)  # as in training: the validation rows calibrate afterwards
        codes = y_val  # classes_ are ["neg", "pos"]: the codes are y_val
        accuracy, nll = float(np.mean(log_proba.argmax(1) == codes)), float(-np.mean(log_proba[np.arange(60), codes]))
        last = history[-1]
        assert accuracy == pytest.approx(best["val_accuracy"]) and nll == pytest.approx(best["val_nll"], rel=1e-4)
        assert (accuracy, nll) != pytest.approx((last["val_accuracy"], last["val_nll"]), rel=1e-4), "the last epoch's weights"
        checked.append(seed)
        break
    assert checked, "every seed's best epoch was the last: the setup no longer tells the best epoch from the last"


def test_the_training_summary_is_one_line(workspace, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # Rich's width when no stream is a terminal (cron, CI, nohup)
    w = workspace
    out = w["folder"] / "a-model-with-a-name-long-enough-to-pass-eighty-columns.flowgmm"
    code, _, err = run_cli(["train", w["features"], "--labels", w["labels.csv"], "--val", w["test"], "--val-labels", w["test_labels.csv"],
                            "-o", out, "--epochs", "2", "--hidden", "8", "--coupling-layers", "2"], capsys)  # fmt: skip
    assert code == 0, err
    summary = [line for line in err.splitlines() if line.startswith("wrote ")]
    assert len(summary) == 1 and re.search(r"from 60 validation rows, \d+% ± \d+ right$", summary[0]) and "best epoch" in summary[0] and str(out) in summary[0]


# ------------------------------------------------------------------------------- bad inputs
def _write_h5(path: Path, X: np.ndarray, ids: list[str]) -> Path:
    with h5py.File(path, "w") as handle:
        handle["features"] = X.astype(np.float32)
        handle["ids"] = np.array(ids, dtype=object).astype("S")
    return path


def _truncated(w: dict[str, Path], name: str, fraction: float) -> Path:
    data = w["features"].read_bytes()
    (w["folder"] / name).write_bytes(data[: int(len(data) * fraction)])
    return w["folder"] / name


def _five_per_class(w: dict[str, Path]) -> Path:
    path = w["folder"] / "five.csv"
    pd.DataFrame({"id": [f"r{i}" for i in [*range(0, 40, 8), *range(40, 80, 8)]], "label": ["neg"] * 5 + ["pos"] * 5}).to_csv(path, index=False)
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
        "truncated feature file (train)": train(_truncated(w, "cut_half.h5", 0.5), w["labels.csv"], "o3b.flowgmm"),
        "truncated feature file (predict)": (["predict", w["model"], _truncated(w, "cut_most.h5", 0.95), "-o", f / "o3c.csv"], f / "o3c.csv"),
        "labels without label column": train(w["features"], csv("l1.csv", "id,klass\nr0,neg\nr4,pos\n"), "o4.flowgmm"),
        "labels without id column": train(w["features"], csv("l2.csv", "name,label\nr0,neg\nr4,pos\n"), "o5.flowgmm"),
        "duplicate label ids": train(w["features"], csv("l3.csv", "id,label\nr0,neg\nr0,pos\nr44,pos\n"), "o6.flowgmm"),
        "duplicate feature ids": train(dup_h5, w["labels.csv"], "o7.flowgmm"),
        "label ids absent from features": train(w["features"], csv("l4.csv", "id,label\nzz,neg\nr44,pos\n"), "o8.flowgmm"),
        "a class empty after the validation split": train(w["features"], csv("l5.csv", "id,label\nr0,neg\nr44,pos\nr48,pos\n"), "o9.flowgmm", "--val-fraction", "0.5"),
        "--val-fraction 0.9 with 5 labels per class": train(w["features"], _five_per_class(w), "o9b.flowgmm", "--val-fraction", "0.9"),
        "--lr 0": train(w["features"], w["labels.csv"], "o9c.flowgmm", "--lr", "0"),
        "--variance nan": train(w["features"], w["labels.csv"], "o9d.flowgmm", "--variance", "nan"),
        "--val with --val-fraction": train(w["features"], w["labels.csv"], "o9e.flowgmm", "--val", w["test"], "--val-labels", w["test_labels.csv"], "--val-fraction", "0.2"),
        "fewer than 2 classes": train(w["features"], csv("l6.csv", "id,label\nr0,neg\nr4,neg\n"), "o10.flowgmm"),
        "NaN in features": train(nan_h5, csv("l7.csv", "id,label\na,x\nc,y\n"), "o11.flowgmm"),
        "non-numeric column": (["embed", "--model", "tabular", csv("s.csv", "id,a,b\nx0,1,hello\n"), "-o", f / "o12.h5"], f / "o12.h5"),
        "NaN in a tabular CSV": (["embed", "--model", "tabular", csv("n.csv", "id,a\nx0,1\nx1,nan\n"), "-o", f / "o13.h5"], f / "o13.h5"),
        "ragged tabular CSV": (["embed", "--model", "tabular", csv("r.csv", "id,a,b\nx0,1,2\nx1,3,4,5\nx2,1,1\n"), "-o", f / "o13b.h5"], f / "o13b.h5"),
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
        "resume without a checkpoint": train(w["features"], w["labels.csv"], "o20b.flowgmm", "--resume"),
        "unknown device": train(w["features"], w["labels.csv"], "o21.flowgmm", "--device", "tpu"),
        "validation labels without validation rows": train(w["features"], w["labels.csv"], "o22.flowgmm", "--val-labels", w["labels.csv"]),
        "validation file of another dimension": train(w["features"], w["labels.csv"], "o23.flowgmm", "--val", w["four"]),
    }


def test_every_bad_input_gets_exit_2_and_one_clear_sentence(workspace, capsys):
    w = workspace
    cases = bad_cases(w)
    # a checkpoint made on other data (the four-column file) for the resume case
    four_labels = w["folder"] / "four_labels.csv"
    four_labels.write_text("id,label\nq0,a\nq1,b\n")
    assert run_cli(["train", w["four"], "--labels", four_labels, "-o", w["folder"] / "four.flowgmm", *TINY], capsys)[0] == 0
    shutil.copy(w["folder"] / "four.flowgmm", w["folder"] / "other.flowgmm.ckpt")
    failures = bad_input_failures(cases, capsys)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("extra", "flag_name", "message"),
    [
        (["--val-fraction", "0.9"], "--val-fraction", "Class 'neg' has no labeled row left after the validation split (5 labeled); lower --val-fraction"),
        (["--lr", "0"], "--lr", "--lr must be greater than 0.0, got 0.0."),
        (["--variance", "-1"], "--variance", "--variance must be greater than 0.0, got -1.0."),
        (["--lr", "inf"], "--lr", "--lr must be a finite number, got inf."),
    ],
    ids=["val-fraction", "lr-zero", "variance-negative", "lr-infinite"],
)
def test_option_errors_name_the_flag_to_change(workspace, capsys, extra, flag_name, message):
    w = workspace
    out = w["folder"] / "flagged.flowgmm"
    code, _, err = run_cli(["train", w["features"], "--labels", _five_per_class(w), "-o", out, *TINY, *extra], capsys)
    assert code == 2 and not out.exists()
    assert err.startswith("Error: ") and message in err and len(err.strip().splitlines()) == 1
    assert flag_name.lstrip("-").replace("-", "_") not in err.replace(flag_name, ""), "the library's parameter name leaks"


def test_val_and_val_fraction_together_are_refused(workspace, capsys):
    w = workspace
    code, _, err = run_cli(["train", w["features"], "--labels", w["labels.csv"], "-o", w["folder"] / "both.flowgmm", "--val", w["test"],
                            "--val-labels", w["test_labels.csv"], "--val-fraction", "0.2", *TINY], capsys)  # fmt: skip
    assert code == 2
    assert err == "Error: --val and --val-fraction both choose the best epoch; give one of them.\n"


def test_usage_errors_name_the_flag(workspace, capsys):
    """Values outside a range Click checks itself (--val-fraction above 0.9) get Click's usage message."""
    w = workspace
    code, _, err = run_cli(["train", w["features"], "-o", w["folder"] / "u.flowgmm", "--val-fraction", "0.95"], capsys)
    assert code == 2 and "Invalid value for '--val-fraction'" in err and "Traceback" not in err
    code, _, err = run_cli(["train", w["features"], "-o", w["folder"] / "u.flowgmm", "--scaling", "both"], capsys)
    assert code == 2 and "'both' is not one of 'feature', 'shared'" in err


def test_a_truncated_feature_file_is_one_line_naming_it(workspace, capsys):
    w = workspace
    cut = _truncated(w, "cut.h5", 0.5)
    code, out, err = run_cli(["predict", w["model"], cut, "-o", "-"], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"Error: Cannot read feature file '{cut}' (")
    assert "truncated file" in err and err.rstrip().endswith("embed it again with 'flowgmm embed'.")


def test_a_ragged_csv_is_one_sentence_without_stray_brackets(workspace, capsys):
    f = workspace["folder"]
    (f / "ragged.csv").write_text("id,a,b\nx0,1,2\nx1,3,4,5\nx2,1,1\n")
    code, _, err = run_cli(["embed", "--model", "tabular", f / "ragged.csv", "-o", f / "ragged.h5"], capsys)
    assert code == 2 and not (f / "ragged.h5").exists()
    message = err.removesuffix("\n")
    assert "\n" not in message and "\r" not in message
    assert message.count("(") == message.count(")") == 1 and message.index("(") < message.index(")")
    assert "Expected 3 fields in line 3, saw 4" in message
    assert message.startswith(f"Error: CSV '{f / 'ragged.csv'}' could not be parsed (") and message.endswith("--encoding.")


def test_nan_message_names_the_first_row(workspace, capsys):
    f = workspace["folder"]
    nan_h5 = _write_h5(f / "nan3.h5", np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [np.inf, 2.0, 0.0]]), ["a", "b", "c"])
    code, _, err = run_cli(["predict", workspace["model"], nan_h5, "-o", f / "x.csv"], capsys)
    assert code == 2 and "row 2" in err and "'c'" in err


def test_non_numeric_message_names_the_column(workspace, capsys):
    f = workspace["folder"]
    (f / "mixed.csv").write_text("id,a,colour\nx0,1,red\n")
    code, _, err = run_cli(["embed", "--model", "tabular", f / "mixed.csv", "-o", f / "mixed.h5"], capsys)
    assert code == 2 and "'colour'" in err and "'red'" in err


def test_a_table_is_scaled_per_column_and_a_dataframe_too(tmp_path, capsys):
    """16 columns would get one shared scale by their number; the tabular extractor's units say per column."""
    X, y = _blobs(120, 3)
    X = np.hstack([X * 1000.0, np.random.default_rng(0).normal(size=(120, 13))]).astype(np.float32)  # mixed units, 16 columns
    pd.DataFrame({"id": [f"r{i}" for i in range(120)], **{f"c{k}": X[:, k] for k in range(16)}}).to_csv(tmp_path / "t.csv", index=False)
    features = _embed(tmp_path / "t.csv", tmp_path / "t.h5")
    with h5py.File(features) as handle:
        assert handle.attrs["units"] == "per-column"
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(0, 120, 6)], "label": y[::6].astype(str)}).to_csv(labels, index=False)
    for stream in ("--stream", "--no-stream"):
        code, _, err = run_cli(["train", features, "--labels", labels, "-o", tmp_path / "m.flowgmm", "--epochs", "1", "--hidden", "8", "--coupling-layers", "1", stream, "-q"], capsys)
        assert code == 0, err
        assert FlowGMMClassifier.load(tmp_path / "m.flowgmm").options_.scaling.value == "feature"
    partial = np.where(np.arange(120) % 6 == 0, y, -1)
    tiny = {"epochs": 1, "hidden": 8, "coupling_layers": 1}
    assert FlowGMMClassifier(**tiny).fit(pd.DataFrame(X), partial).options_.scaling.value == "shared"  # the container does not decide
    assert FlowGMMClassifier(**tiny).fit(X, partial).options_.scaling.value == "shared"
    assert FlowGMMClassifier(**tiny).fit(X, partial, units="per-column").options_.scaling.value == "feature"


HEAVY_MODULES = ("torch", "sklearn", "scipy", "pandas", "h5py", "transformers", "timm")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["visualize", "--help"], ["benchmark", "--help"]])
def test_help_does_not_import_the_heavy_libraries(argv):
    """Help is read in a shell many times: it must not wait for torch and scikit-learn (seconds) to load."""
    probe = (
        "import sys\nfrom flowgmm_cli.cli import main\n"
        f"sys.argv = ['flowgmm', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "Usage" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]"
