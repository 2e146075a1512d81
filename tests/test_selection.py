"""Choosing the projection's size with the labels: the size whose calibration fits predict the
hidden labels best, its fits reused for the temperature, nothing chosen where a size is given."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from flowgmm_cli import FlowGMMClassifier, crossfit, workers
from flowgmm_cli import fits as fits_module
from flowgmm_cli.calibration import held_out_losses
from flowgmm_cli.cli import describe_projection_choice
from flowgmm_cli.defaults import projection_candidates
from flowgmm_cli.features import FeatureWriter
from flowgmm_cli.selection import pick_within_one_standard_error
from flowgmm_testutils import run_cli, state_equal

SMALL = {"epochs": 12, "hidden": 16, "coupling_layers": 2, "device": "cpu", "random_state": 0, "members": 1}


def _signal_beyond_the_top_32(n_rows: int = 400, dim: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose two classes differ along 16 features of smaller variance than 40 noise features:
    their principal directions are about the 41st to the 56th, in the top 64 but not the top 32.
    Ten labels a class."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n_rows)
    X = rng.normal(size=(n_rows, dim))
    X[:, :40] *= 2.0  # noise of variance 4, ahead of the signal in the principal order
    X[:, 40:56] = np.where(y == 1, 1.0, -1.0)[:, None] + 0.5 * rng.normal(size=(n_rows, 16))  # variance 1.25
    partial = np.full(n_rows, -1)
    labeled = np.concatenate([np.flatnonzero(y == k)[:10] for k in range(2)])
    partial[labeled] = y[labeled]
    return X.astype(np.float32), partial


def test_candidates_follow_the_features_and_the_rows():
    assert projection_candidates(80, 400) == (32, 64)
    assert projection_candidates(64, 400) == ()  # the flow sees every feature
    assert projection_candidates(300, 40) == (32, 39)  # no more directions than rows allow
    assert projection_candidates(1280, 3000, square_root=True) == ()  # the features' kind sets the size


def test_the_size_that_keeps_the_classes_is_chosen_and_its_fits_calibrate_the_model():
    X, partial = _signal_beyond_the_top_32()
    chosen = FlowGMMClassifier(**SMALL).fit(X, partial)
    evidence = chosen.projection_choice_
    assert evidence["sizes"] == [32, 64]
    assert evidence["held_out_nll"][0] > np.log(2) - 0.01, "without the class's direction the fits guess (NLL log 2)"
    assert evidence["held_out_nll"][1] < np.log(2) - evidence["standard_error"][0], "with it they predict clearly better"
    assert chosen.options_.projection_dim == 64
    given = FlowGMMClassifier(**SMALL, projection_dim=64).fit(X, partial)
    assert given.projection_choice_ is None
    assert chosen.temperature_ == given.temperature_, "the winner's calibration fits are the model's"
    assert chosen.calibration_ == given.calibration_
    assert state_equal(chosen.model_.state_dict(), given.model_.state_dict())


def test_the_reported_nll_is_that_of_the_candidate_s_held_out_scores(monkeypatch):
    X, partial = _signal_beyond_the_top_32()
    seen, trained = [], []
    real_scores, real_fit = fits_module.fold_scores, crossfit.run_fit

    def recording(job, fits, results):
        scores = real_scores(job, fits, results)
        seen.append((job.options.projection_dim, round(float(held_out_losses(*scores).mean()), 4)))
        return scores

    def counting(fit, *args, **kwargs):
        trained.append((fit.job.options.projection_dim, fit.fold))
        return real_fit(fit, *args, **kwargs)

    monkeypatch.setattr("flowgmm_cli.selection.fold_scores", recording)
    monkeypatch.setattr(crossfit, "run_fit", counting)
    chosen = FlowGMMClassifier(**SMALL).fit(X, partial)
    evidence = chosen.projection_choice_
    assert seen == list(zip(evidence["sizes"], evidence["held_out_nll"]))
    calibration_fits = sorted(size for size, fold in trained if fold is not None)
    assert calibration_fits == [32] * 4 + [64] * 4, "one run of fits per size, the first member's not run again"
    assert [size for size, fold in trained if fold is None] == [chosen.options_.projection_dim]


def test_square_rooted_features_keep_128_directions_without_a_choice():
    """Activation-like rows (zero or log-normal, 160 features in one unit) take the root, and with
    it 128 directions and no choice among sizes; shifted below zero (no root) the labels choose."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 150)
    active = rng.random((300, 160)) < np.where(y[:, None] == 1, 0.6, 0.3)
    X = np.where(active, rng.lognormal(0.0, 1.5, (300, 160)), 0.0).astype(np.float32)
    partial = np.full(300, -1)
    partial[np.r_[0:10, 150:160]] = y[np.r_[0:10, 150:160]]
    rooted = FlowGMMClassifier(**{**SMALL, "epochs": 2}).fit(X, partial, units="shared")
    assert rooted.options_.square_root and rooted.options_.projection_dim == 128 and rooted.projection_choice_ is None
    given = FlowGMMClassifier(**{**SMALL, "epochs": 2, "projection_dim": 128}).fit(X, partial, units="shared")
    assert state_equal(rooted.model_.state_dict(), given.model_.state_dict()), "the default is the model of --projection-dim 128"
    shifted = FlowGMMClassifier(**{**SMALL, "epochs": 2}).fit(X - 0.5, partial, units="shared")
    assert not shifted.options_.square_root and shifted.projection_choice_["sizes"] == [32, 64]


@pytest.mark.parametrize("options", [{"projection_dim": 32}, {"calibration_folds": 0}, {"val_fraction": 0.3}])
def test_a_given_size_no_calibration_fits_or_validation_rows(options):
    """A given size is kept; without calibration fits there is nothing to choose with and the size
    is :data:`~flowgmm_cli.defaults.PROJECTION_DIM`; with validation rows the labels left for
    training still choose (their fits only do not set the temperature)."""
    X, partial = _signal_beyond_the_top_32()
    fitted = FlowGMMClassifier(**{**SMALL, **options}).fit(X, partial)
    if "val_fraction" in options:
        assert fitted.projection_choice_["sizes"] == [32, 64] and fitted.calibration_["source"] == "validation rows"
    else:
        assert fitted.projection_choice_ is None and fitted.options_.projection_dim == 32


def test_with_two_threads_one_size_s_fits_run_beside_and_choose_the_same(monkeypatch):
    X, partial = _signal_beyond_the_top_32()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = FlowGMMClassifier(**SMALL).fit(X, partial)
        started = []
        real = workers.subprocess.Popen

        def launching(args, **kwargs):
            started.append(real(args, **kwargs))
            return started[-1]

        monkeypatch.setattr(workers.subprocess, "Popen", launching)
        torch.set_num_threads(2)
        beside = FlowGMMClassifier(**SMALL).fit(X, partial)
    finally:
        torch.set_num_threads(previous)
    assert len(started) == 1 and started[0].poll() == 0, "one child, for the choice; the model's fits are the winner's"
    assert beside.projection_choice_ == alone.projection_choice_
    assert beside.temperature_ == alone.temperature_


def test_the_choice_survives_the_model_file(tmp_path):
    X, partial = _signal_beyond_the_top_32()
    chosen = FlowGMMClassifier(**SMALL).fit(X, partial)
    chosen.save(tmp_path / "m.flowgmm")
    loaded = FlowGMMClassifier.load(tmp_path / "m.flowgmm")
    assert loaded.projection_choice_ == chosen.projection_choice_


def test_train_and_info_say_which_size_was_chosen_and_why(tmp_path, capsys):
    X, partial = _signal_beyond_the_top_32()
    ids = [f"r{i}" for i in range(len(X))]
    with FeatureWriter(tmp_path / "f.h5", X.shape[1], {"extractor": "test"}) as writer:
        writer.append(ids, X)
    labeled = np.flatnonzero(partial >= 0)
    pd.DataFrame({"id": np.array(ids)[labeled], "label": partial[labeled]}).to_csv(tmp_path / "labels.csv", index=False)
    small = ["--epochs", "12", "--hidden", "16", "--coupling-layers", "2", "--members", "1", "--threads", "1"]
    code, _, err = run_cli(["train", tmp_path / "f.h5", "--labels", tmp_path / "labels.csv", "--allow-missing", "-o", tmp_path / "m.flowgmm", *small], capsys)
    assert code == 0, err
    summary = next(line for line in err.splitlines() if line.startswith("wrote "))
    said = re.search(r"flow on the top 64 principal directions \(chosen of 32/64 by held-out NLL (0\.\d\d)/(0\.\d\d)\)", summary)
    assert said and float(said[2]) < float(said[1]), summary
    last_epoch = [line for line in err.splitlines() if "epoch 12/12" in line][-1]
    assert last_epoch.startswith("model: "), "the model's epochs are labelled as the model's, not as the choice's last fit"
    code, out, err = run_cli(["info", tmp_path / "m.flowgmm"], capsys)
    assert code == 0 and "flow on the top 64 principal directions (chosen of 32/64 by held-out NLL" in out, out + err


def test_the_fewest_directions_within_one_standard_error_of_the_lowest_are_kept():
    rng = np.random.default_rng(0)
    lowest = rng.exponential(0.5, 200)
    noise = rng.normal(0.0, 0.3, 200)
    noisy = lowest + 0.01 + noise - noise.mean()  # worse by 0.01, with a standard error of about 0.02
    clear = lowest + 0.3  # worse by far more than its noise
    chosen, evidence = pick_within_one_standard_error([clear, noisy, lowest], (16, 32, 64))
    assert chosen == 1 and evidence["sizes"] == [16, 32, 64] and evidence["standard_error"][2] == 0.0
    assert evidence["held_out_nll"][1] - evidence["held_out_nll"][2] <= evidence["standard_error"][1]
    assert pick_within_one_standard_error([lowest, noisy], (32, 64))[0] == 0, "the smaller size when it is the lowest"


@pytest.mark.parametrize(
    ("nll", "errors", "chosen", "tail"),
    [([0.89, 0.82], [0.08, 0.0], 32, ", the fewest within one standard error (0.08) of the lowest"), ([1.01, 1.22], [0.0, 0.09], 32, ""), ([1.93, 1.29], [0.1, 0.0], 64, "")],
)
def test_the_choice_in_words(nll, errors, chosen, tail):
    choice = {"sizes": [32, 64], "held_out_nll": nll, "standard_error": errors}
    assert describe_projection_choice(choice, chosen) == f"chosen of 32/64 by held-out NLL {nll[0]:.2f}/{nll[1]:.2f}{tail}"
