"""`flowgmm benchmark`: the stratified draw, median ± MAD, the runner's splits, the table and JSON, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flowgmm_testutils import run_cli

from flowgmm_cli import benchmark
from flowgmm_cli.baselines import MLP, PiModel
from flowgmm_cli.errors import InputError
from flowgmm_cli.features import FeatureWriter
from flowgmm_cli.splits import pick_labeled, stratified_counts, stratified_subset


# ------------------------------------------------------------------------------------- the draw
def test_stratified_counts_follow_class_shares_with_one_row_at_least():
    assert stratified_counts(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert stratified_counts(np.array([50, 30, 20]), 7).tolist() == [4, 2, 1]  # remainders .5, .1, .4
    assert stratified_counts(np.array([98, 1, 1]), 10).tolist() == [8, 1, 1]  # the rare classes keep one row
    assert stratified_counts(np.array([3, 100]), 100).tolist() == [3, 97]  # a class cannot give more than it has


@pytest.mark.parametrize(("n", "message"), [(2, "at least one row per class"), (101, "only 100 rows have labels")])
def test_stratified_counts_refuse_impossible_draws(n, message):
    with pytest.raises(InputError, match=message):
        stratified_counts(np.array([60, 30, 10]), n)


def test_a_per_class_draw_refuses_a_class_with_too_few_rows_and_names_it():
    y = np.repeat([0, 1], [10, 3])
    with pytest.raises(InputError, match="Class '1' has 3 labeled rows"):
        pick_labeled(y, 4)
    with pytest.raises(InputError, match="Class 'rare' has 3 labeled rows"):
        pick_labeled(y, 4, names=["common", "rare"])


def test_stratified_subset_is_stratified_seeded_and_deterministic():
    y = np.repeat([0, 1, 2], [300, 200, 100])
    rows = stratified_subset(y, 60, seed=5)
    assert len(set(rows.tolist())) == 60
    assert np.bincount(y[rows]).tolist() == [30, 20, 10]
    assert np.array_equal(rows, stratified_subset(y, 60, seed=5))
    assert not np.array_equal(np.sort(rows), np.sort(stratified_subset(y, 60, seed=6)))


def test_stratified_subset_of_balanced_classes_is_the_per_class_draw():
    y = np.repeat(np.arange(4), 25)
    assert np.array_equal(stratified_subset(y, 20, seed=3), pick_labeled(y, 5, seed=3))


# ----------------------------------------------------------------------------- median and MAD
def test_median_and_median_absolute_deviation_by_hand():
    assert benchmark.median_mad([1.0, 2.0, 3.0, 4.0, 100.0]) == (3.0, 1.0)
    assert benchmark.median_mad([80.0, 82.0, 83.0, 87.0]) == (82.5, 1.5)  # deviations 2.5, 0.5, 0.5, 4.5
    assert benchmark.median_mad([90.0]) == (90.0, 0.0)


# --------------------------------------------------------------------------------- the runner
class Recorder:
    """A method that predicts class 0 and records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, frozenset, int]] = []

    def fit_predict(self, X_labeled, y_labeled, X_unlabeled, X_test, seed):
        self.calls.append((seed, frozenset(map(tuple, X_labeled.round(5).tolist())), len(X_unlabeled)))
        return np.zeros(len(X_test), dtype=np.int64)


def test_runner_gives_every_method_the_same_split_per_seed_and_reports_the_json_shape():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, -1], [40, 20, 30])  # 30 pool rows without a label
    data = benchmark.BenchmarkData(rng.normal(size=(90, 3)), y, rng.normal(size=(10, 3)), np.array([0] * 7 + [1] * 3), ["a", "b"])
    first, second = Recorder(), Recorder()
    report = benchmark.run_benchmark(data, {"knn": first, "flowgmm": second}, n_labeled=6, seeds=3)
    assert first.calls == second.calls
    assert [seed for seed, _, _ in first.calls] == [0, 1, 2]
    assert all(n_unlabeled == 84 for _, _, n_unlabeled in first.calls)
    assert len({rows for _, rows, _ in first.calls}) == 3, "each seed draws other labeled rows"
    assert set(report) == {"results", "n_labeled", "n_unlabeled", "n_test", "seeds"}
    assert (report["n_labeled"], report["n_unlabeled"], report["n_test"], report["seeds"]) == (6, 84, 10, 3)
    assert [r["method"] for r in report["results"]] == ["knn", "flowgmm"]
    assert report["results"][0]["runs"] == [70.0, 70.0, 70.0] and report["results"][0]["median"] == 70.0
    assert set(report["results"][0]) == {"method", "median", "mad", "runs", "seconds"}


def test_runner_standardizes_with_the_pool_statistics_unless_told_not_to():
    rng = np.random.default_rng(1)
    data = benchmark.BenchmarkData(rng.normal(5.0, 3.0, size=(40, 2)), np.repeat([0, 1], 20), rng.normal(size=(4, 2)), np.array([0, 1, 0, 1]), ["a", "b"])
    raw_rows = set(map(tuple, data.X.round(5).tolist()))
    for standardize in (True, False):
        recorder = Recorder()
        benchmark.run_benchmark(data, {"knn": recorder}, n_labeled=4, seeds=1, standardize=standardize)
        (_, rows, _), = recorder.calls
        assert (rows <= raw_rows) is not standardize


def test_by_default_the_baselines_of_a_table_get_standardised_features():
    """Unscaled distances in a table follow its largest unit; one-unit features keep their scale."""
    rng = np.random.default_rng(1)
    for units, expected in (("per-column", True), ("shared", False), (None, False)):
        data = benchmark.BenchmarkData(
            rng.normal(5.0, 3.0, size=(40, 2)), np.repeat([0, 1], 20), rng.normal(size=(4, 2)), np.array([0, 1, 0, 1]), ["a", "b"], units=units
        )
        raw_rows = set(map(tuple, data.X.round(5).tolist()))
        recorder = Recorder()
        benchmark.run_benchmark(data, {"knn": recorder}, n_labeled=4, seeds=1)
        (_, rows, _), = recorder.calls
        assert (rows <= raw_rows) is not expected, units


def test_a_per_class_draw_gives_a_rare_class_as_many_labels_and_reports_the_total():
    rng = np.random.default_rng(2)
    y = np.array([0] * 90 + [1] * 10)
    data = benchmark.BenchmarkData(rng.normal(size=(100, 2)), y, rng.normal(size=(4, 2)), np.array([0, 1, 0, 1]), ["common", "rare"])
    for seed in (0, 1):
        assert np.bincount(benchmark.draw_split(data, 5, seed, per_class=True).y_labeled).tolist() == [5, 5]
    assert np.bincount(benchmark.draw_split(data, 10, 0).y_labeled).tolist() == [9, 1]  # shares as in the pool
    recorder = Recorder()
    report = benchmark.run_benchmark(data, {"knn": recorder}, n_labeled=5, seeds=1, per_class=True)
    assert (report["n_labeled"], report["n_unlabeled"]) == (10, 90)


def test_standardize_split_uses_the_pool_statistics():
    split = benchmark.Split(np.array([[0.0], [2.0]]), np.array([0, 1]), np.array([[4.0], [6.0]]), np.array([[3.0]]), np.array([0]))
    scaled = benchmark.standardize_split(split)
    pool = np.concatenate([scaled.X_labeled, scaled.X_unlabeled])
    assert pool.mean() == pytest.approx(0.0, abs=1e-6) and pool.std() == pytest.approx(1.0)
    assert scaled.X_test[0, 0] == pytest.approx(0.0, abs=1e-6)  # the pool's mean


def test_the_benchmark_marks_unlabeled_rows_as_the_estimator_does():
    from flowgmm_cli.targets import UNLABELED

    assert benchmark.UNLABELED == UNLABELED


def test_select_methods():
    assert benchmark.select_methods("all") == list(benchmark.TITLES)
    assert benchmark.select_methods("flowgmm,knn") == ["knn", "flowgmm"]
    with pytest.raises(InputError, match="Unknown method 'svm'"):
        benchmark.select_methods("knn,svm")


# ---------------------------------------------------------------------------- the command line
def write_case(folder: Path, name: str, X: np.ndarray, ids: list[str], labels: list[str] | None) -> Path:
    with FeatureWriter(folder / f"{name}.h5", dim=X.shape[1], attrs={"extractor": "tabular"}) as writer:
        writer.append(ids, X)
    if labels is not None:
        pd.DataFrame({"id": ids, "label": labels}).to_csv(folder / f"{name}_labels.csv", index=False)
    return folder / f"{name}.h5"


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, Path]:
    """Three well separated classes in 4-D: 90 pool rows (60 labeled) and 30 test rows."""
    folder = tmp_path_factory.mktemp("benchmark")
    rng = np.random.default_rng(0)
    centres = 4.0 * np.eye(3, 4)
    y, y_test = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
    names = np.array(["ant", "bee", "cat"])
    pool_labels = [names[k] if i % 3 else "" for i, k in enumerate(y)]
    paths = {
        "pool": write_case(folder, "pool", centres[y] + rng.normal(size=(90, 4)), [f"p{i}" for i in range(90)], pool_labels),
        "test": write_case(folder, "test", centres[y_test] + rng.normal(size=(30, 4)), [f"t{i}" for i in range(30)], list(names[y_test])),
        "test5d": write_case(folder, "test5d", rng.normal(size=(5, 5)), [f"f{i}" for i in range(5)], ["ant"] * 5),
        "other": write_case(folder, "other", rng.normal(size=(5, 4)), [f"o{i}" for i in range(5)], ["ant", "bee", "cat", "dog", "ant"]),
        "one": write_case(folder, "one", rng.normal(size=(6, 4)), [f"q{i}" for i in range(6)], ["ant"] * 3 + [""] * 3),
    }
    pd.DataFrame({"id": ["t0", "t1"], "label": ["ant", "ant"]}).to_csv(folder / "partial_labels.csv", index=False)
    return {**paths, "folder": folder}


def args(case: dict[str, Path], *extra: object, pool: str = "pool", test: str = "test") -> list:
    folder = case["folder"]
    return ["benchmark", case[pool], "--labels", folder / f"{pool}_labels.csv", "--test", case[test],
            "--test-labels", folder / f"{test}_labels.csv", *extra]  # fmt: skip


FAST_METHODS = "knn,logistic-regression,label-spreading-knn"


def test_cli_prints_the_table(case, capsys):
    code, out, err = run_cli(args(case, "--n-labeled", 9, "--seeds", 2, "--methods", FAST_METHODS, "--threads", 1), capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "9 labeled / 81 unlabeled rows, 3 classes, 30 test rows; median ± MAD test accuracy (%) over 2 seeds"
    assert [line[:26].strip() for line in lines[2:]] == ["kNN (k by leave-one-out)", "logistic regression", "label spreading (kNN)"]
    assert err.count(" seed ") == 6, "one progress line per run when stderr is not a terminal"
    # each row: the median ± MAD of its two runs, which are the accuracies of the methods fitted here
    data = benchmark.load_benchmark_data(case["pool"], case["folder"] / "pool_labels.csv", case["test"], case["folder"] / "test_labels.csv")
    methods = benchmark.default_methods()
    for line, name in zip(lines[2:], ["knn", "logistic-regression", "label-spreading-knn"], strict=True):
        runs = [benchmark.score_run(methods[name], benchmark.draw_split(data, 9, seed), seed)[0] for seed in (0, 1)]
        median, mad = benchmark.median_mad(runs)
        assert line[26:].split()[:3] == [f"{median:.1f}", "±", f"{mad:.1f}"], name
        assert line.endswith(", ".join(f"{r:.1f}" for r in runs)), name


def test_cli_json_with_every_method(case, capsys, monkeypatch):
    """All seven methods, one seed, with few training steps for the networks: every one is wired to the
    same split and far better than chance on three well separated classes."""
    fast = {**benchmark.default_methods(), "mlp": MLP(steps=50), "pi-model": PiModel(steps=50),
            "flowgmm": benchmark.FlowGMMMethod(options={"epochs": 100, "hidden": 32, "coupling_layers": 4, "lr": 0.01})}  # fmt: skip
    monkeypatch.setattr(benchmark, "default_methods", lambda device="cpu", units=None, image_shape=None: fast)
    code, out, err = run_cli(args(case, "--n-labeled", 6, "--seeds", 1, "--json", "--quiet", "--threads", 1), capsys)
    assert code == 0, err
    assert err == ""
    report = json.loads(out)
    assert set(report) == {"results", "n_labeled", "n_unlabeled", "n_test", "seeds"}
    assert (report["n_labeled"], report["n_unlabeled"], report["n_test"], report["seeds"]) == (6, 84, 30, 1)
    assert [r["method"] for r in report["results"]] == list(benchmark.TITLES)
    for row in report["results"]:
        probabilities = row["method"] == "flowgmm"  # the one method with fit_predict_proba: its ECE is reported
        assert set(row) == {"method", "median", "mad", "runs", "seconds"} | ({"ece", "ece_runs"} if probabilities else set()) and len(row["runs"]) == 1
        assert not probabilities or 0 <= row["ece"] <= 1
        assert row["median"] == row["runs"][0] and row["mad"] == 0.0 and row["seconds"] >= 0
        assert row["median"] > 60, row  # three classes 4 std apart; chance is 33%
        assert row["runs"][0] * 30 / 100 == pytest.approx(round(row["runs"][0] * 30 / 100)), "a whole number of the 30 test rows"


@pytest.mark.parametrize(
    ("extra", "files", "message"),
    [
        (["--n-labeled", 61], {}, "only 60 rows have labels; lower --n-labeled or label more rows."),
        (["--n-labeled", 2], {}, "at least one row per class, so raise --n-labeled."),
        (["--n-labeled", 9, "--methods", "knn,svm"], {}, "Unknown method 'svm' in --methods;"),
        (["--n-labeled", 9], {"test": "test5d"}, "5-dimensional"),
        (["--n-labeled", 9], {"test": "other"}, "Test label 'dog'"),
        (["--n-labeled", 2], {"pool": "one"}, "at least 2 classes"),
        (["--n-labeled", 21, "--per-class"], {}, "Class 'ant' has 20 labeled rows in the pool; --n-labeled 21 per class needs as many."),
    ],
    ids=["too-many-labeled", "fewer-than-classes", "unknown-method", "test-dim", "unknown-test-class", "one-class", "per-class-too-many"],
)
def test_cli_bad_inputs_exit_2(case, capsys, extra, files, message):
    code, out, err = run_cli(args(case, *extra, **files), capsys)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "n_labeled" not in err and "test_labels" not in err, "the library's parameter names stay out of the CLI's messages"


def test_cli_missing_test_labels_exit_2(case, capsys):
    base = ["benchmark", case["pool"], "--labels", case["folder"] / "pool_labels.csv", "--test", case["test"], "--n-labeled", 9]
    code, _, err = run_cli(base, capsys)
    assert code == 2 and "have no label, first id 't0'; pass --test-labels with a label for every test row." in err
    code, _, err = run_cli([*base, "--test-labels", case["folder"] / "partial_labels.csv"], capsys)
    assert code == 2 and "28 test rows" in err and "first id 't2'" in err


def test_first_seed_gives_the_later_draws_alone(case, capsys):
    """--first-seed 1 --seeds 1 is the second run of --seeds 2: validation draws need seeds of their own."""
    runs = {}
    for extra in (["--seeds", 2], ["--seeds", 1, "--first-seed", 1]):
        code, out, err = run_cli(args(case, "--n-labeled", 9, "--methods", "knn,logistic-regression", "--json", "-q", *extra), capsys)
        assert code == 0, err
        runs[len(runs)] = {row["method"]: row["runs"] for row in json.loads(out)["results"]}
    assert {name: r[1:] for name, r in runs[0].items()} == runs[1]
    assert runs[0]["knn"] != runs[0]["knn"][::-1] or runs[0]["logistic-regression"] != runs[0]["logistic-regression"][::-1], "the two draws differ"
