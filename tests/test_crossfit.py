"""A fit's independent fits (members' models, calibration fits) spread over worker processes: the
same models and temperature as one after the other, their progress in the fit's, their errors
raised, nothing left running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from flowgmm_cli import FlowGMMClassifier, crossfit, workers
from flowgmm_cli import estimator as estimator_module
from flowgmm_cli.errors import TrainingDiverged
from flowgmm_cli.features import FeatureWriter
from flowgmm_cli.stores import ArrayStore, FeatureStream
from flowgmm_testutils import state_equal

_POPEN = subprocess.Popen
SMALL = {"epochs": 12, "hidden": 16, "coupling_layers": 2, "device": "cpu", "random_state": 0}


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(400, centers=[[0.0, 0.0], [2.5, 0.5], [0.0, 3.0]], cluster_std=1.0, random_state=1)
    partial = np.full_like(y, -1)
    labeled = np.concatenate([np.flatnonzero(y == k)[:6] for k in range(3)])
    partial[labeled] = y[labeled]
    return X.astype(np.float32), partial


@pytest.fixture
def threads():
    """``threads(n)`` sets torch's thread count for the test; the suite's one thread comes back after."""
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


class _Recorder:
    """A training callback that keeps every call."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.phases: list[str] = []
        self.epochs = 0

    def on_step(self, step: int, total_steps: int) -> None:
        self.steps.append((step, total_steps))

    def on_epoch_end(self, report) -> None:
        self.epochs += 1

    def on_phase(self, label: str) -> None:
        self.phases.append(label)


class _Launches:
    """Counts the child processes started, keeping each (to check that none is left running)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, command: list[str] | None = None) -> None:
        self.processes: list[subprocess.Popen] = []
        real = _POPEN  # not subprocess.Popen, which an earlier _Launches of the test may have replaced

        def launching(args, **kwargs):
            process = real(command or args, **kwargs)
            self.processes.append(process)
            return process

        monkeypatch.setattr(workers.subprocess, "Popen", launching)


def test_beside_the_fit_the_calibration_fits_give_what_they_give_after_it(threads, monkeypatch):
    """Two threads: the model and two fits on one here, two fits on one in a worker (the fits of
    this short model are as long as it); one thread: all here. Each fit runs on one thread either
    way, so the weights and the temperature are bit for bit the same."""
    X, partial = _blobs()
    threads(1)
    one_after_another = _Recorder()
    after = FlowGMMClassifier(**SMALL).fit(X, partial, callback=one_after_another)
    launches = _Launches(monkeypatch)
    threads(2)
    recorder = _Recorder()
    beside = FlowGMMClassifier(**SMALL).fit(X, partial, callback=recorder)
    assert len(launches.processes) == 1 and launches.processes[0].poll() == 0
    assert torch.get_num_threads() == 2, "the fit gives its threads back"
    assert beside.temperature_ == after.temperature_ != 1.0
    assert state_equal(beside.model_.state_dict(), after.model_.state_dict())
    assert recorder.phases == ["model and 4 calibration fits in 2 processes"] and recorder.epochs == 3 * SMALL["epochs"]
    assert len(one_after_another.phases) == 4 and one_after_another.epochs == 5 * SMALL["epochs"], "fits as long as this short model"
    every_step = sum(total for step, total in one_after_another.steps if step == total)  # the model's and each fold's
    assert recorder.steps[-1] == (every_step, every_step), "the last report counts all five fits' steps as done"
    assert all(step <= total for step, total in recorder.steps)


def _in_turn_and_in_lanes(options: dict, threads, monkeypatch) -> tuple[FlowGMMClassifier, FlowGMMClassifier, list[str]]:
    """The same fit on one thread and on two (lanes), after checking that the second started one
    worker, that it ended well, and that both gave the same members, history and temperature;
    with the phases the second announced."""
    X, partial = _blobs()
    threads(1)
    in_turn = FlowGMMClassifier(**options).fit(X, partial)
    launches = _Launches(monkeypatch)
    threads(2)
    recorder = _Recorder()
    in_lanes = FlowGMMClassifier(**options).fit(X, partial, callback=recorder)
    assert len(launches.processes) == 1 and launches.processes[0].poll() == 0
    assert all(state_equal(a.state_dict(), b.state_dict()) for a, b in zip(in_lanes.members_, in_turn.members_, strict=True))
    assert in_lanes.history_ == in_turn.history_ and in_lanes.temperature_ == in_turn.temperature_
    return in_turn, in_lanes, recorder.phases


def test_an_ensemble_s_members_train_in_two_lanes_as_they_do_in_turn(threads, monkeypatch):
    """Three members and their twelve calibration fits on two threads: a member's model trained in
    the worker comes back with the weights, history and predictions of one trained here."""
    in_turn, in_lanes, phases = _in_turn_and_in_lanes({**SMALL, "members": 3, "epochs": 8}, threads, monkeypatch)
    assert phases == ["3 models and 12 calibration fits in 2 processes"]
    X, _ = _blobs()
    np.testing.assert_array_equal(in_lanes.predict_proba(X), in_turn.predict_proba(X))
    assert not in_lanes.members_[1].training, "a model from a worker is in evaluation mode, as one trained here"


def test_a_member_in_a_worker_keeps_its_checkpoint_and_resumes_from_it(threads, tmp_path, monkeypatch):
    """Two members on two threads: the second trains in the worker, which writes its checkpoint
    where the first's would be followed by ``.1``; resuming from both gives the same models."""
    X, partial = _blobs()
    rows, labeled = ArrayStore(torch.from_numpy(X)), np.flatnonzero(partial >= 0)
    options = {**SMALL, "members": 2, "calibration_folds": 0}
    threads(1)
    in_turn = FlowGMMClassifier(**options).fit_rows(rows, labeled, partial[labeled])
    launches = _Launches(monkeypatch)
    threads(2)
    checkpoint = tmp_path / "model.ckpt"
    in_lanes = FlowGMMClassifier(**options).fit_rows(rows, labeled, partial[labeled], checkpoint=checkpoint)
    assert len(launches.processes) == 1 and checkpoint.exists() and Path(f"{checkpoint}.1").exists()
    resumed = FlowGMMClassifier(**options).fit_rows(rows, labeled, partial[labeled], checkpoint=checkpoint, resume=True)
    for fitted in (in_lanes, resumed):
        assert all(state_equal(a.state_dict(), b.state_dict()) for a, b in zip(fitted.members_, in_turn.members_, strict=True))
        assert fitted.history_ == in_turn.history_


def test_lanes_are_dealt_longest_first_and_limited_by_memory(monkeypatch, threads):
    plan = crossfit.plan_lanes([1500] * 3 + [250] * 12, 2)
    assert sorted(sum(plan, [])) == list(range(15)) and [sum(1500 if i < 3 else 250 for i in lane) for lane in plan] == [3750, 3750]
    rows = ArrayStore(torch.zeros(1000, 4))
    threads(4)
    assert crossfit.lane_count(torch.device("cpu"), rows, 15) in (1, 2, 3, 4)
    monkeypatch.setattr(crossfit, "_available_memory", lambda: 10 * crossfit.WORKER_OVERHEAD_BYTES)
    assert crossfit.lane_count(torch.device("cpu"), rows, 15) == 4 and crossfit.lane_count(torch.device("cpu"), rows, 2) == 2
    monkeypatch.setattr(crossfit, "_available_memory", lambda: 3 * crossfit.WORKER_OVERHEAD_BYTES)
    assert crossfit.lane_count(torch.device("cpu"), rows, 15) == 2, "each worker wants twice its memory free"
    assert crossfit.lane_count(torch.device("meta"), rows, 15) == 1


def test_the_child_computes_in_torch_s_default_dtype_as_set_here(threads, float64):
    X, partial = _blobs()
    threads(1)
    after = FlowGMMClassifier(**SMALL).fit(X, partial)
    threads(2)
    beside = FlowGMMClassifier(**SMALL).fit(X, partial)
    assert beside.model_.prior.means.dtype == torch.float64
    assert beside.temperature_ == after.temperature_


def test_a_streamed_feature_file_is_read_again_in_the_child(threads, tmp_path, monkeypatch):
    X, partial = _blobs()
    names = np.where(partial >= 0, np.array(["a", "b", "c"])[partial.clip(0)], "")
    with FeatureWriter(tmp_path / "f.h5", X.shape[1], {"extractor": "tabular"}, with_labels=True) as writer:
        writer.append([f"r{i}" for i in range(len(X))], X, names)
    labeled = np.flatnonzero(partial >= 0)
    threads(1)
    after = FlowGMMClassifier(**SMALL).fit_rows(FeatureStream(tmp_path / "f.h5"), labeled, names[labeled])
    launches = _Launches(monkeypatch)
    threads(2)
    beside = FlowGMMClassifier(**SMALL).fit_rows(FeatureStream(tmp_path / "f.h5"), labeled, names[labeled])
    assert len(launches.processes) == 1
    assert beside.temperature_ == after.temperature_ != 1.0


def test_an_ensemble_with_validation_rows_trains_its_members_in_lanes_as_in_turn(threads, monkeypatch):
    """Validation rows choose each member's epoch in the worker as they do here: the same weights
    and the same history, validation accuracy and NLL per epoch included."""
    _, in_lanes, phases = _in_turn_and_in_lanes({**SMALL, "members": 3, "val_fraction": 0.3}, threads, monkeypatch)
    assert phases == ["3 models in 2 processes"]
    assert all("val_accuracy" in epoch and "val_nll" in epoch for epoch in in_lanes.history_)


def test_one_thread_or_a_single_fit_starts_no_child(threads, monkeypatch):
    """One thread; one member without calibration fits, for want of folds or beside validation rows."""
    X, partial = _blobs()
    launches = _Launches(monkeypatch)
    threads(1)
    FlowGMMClassifier(**SMALL).fit(X, partial)
    threads(2)
    FlowGMMClassifier(**SMALL, calibration_folds=0).fit(X, partial)
    FlowGMMClassifier(**SMALL, val_fraction=0.3).fit(X, partial)
    assert launches.processes == []


def test_a_child_that_dies_without_a_word_is_replaced_by_the_fits_here(threads, monkeypatch):
    """The fits then run here on all the threads, as they would after the model without a child."""
    X, partial = _blobs()
    threads(2)
    monkeypatch.setattr(estimator_module, "lane_count", lambda device, rows, n_fits: 1)
    after = FlowGMMClassifier(**SMALL).fit(X, partial)
    monkeypatch.undo()
    _Launches(monkeypatch, [sys.executable, "-c", "import sys; sys.stdin.buffer.read(); sys.exit(3)"])
    with pytest.warns(RuntimeWarning, match=r"ended without all its results \(exit code 3\); 2 of its fits run again here"):
        again = FlowGMMClassifier(**SMALL).fit(X, partial)
    assert again.temperature_ == after.temperature_
    garbled = "import sys, time; sys.stdin.buffer.read(); sys.stdout.buffer.write(b'not a message'); sys.stdout.flush(); time.sleep(600)"
    launches = _Launches(monkeypatch, [sys.executable, "-c", garbled])
    with pytest.warns(RuntimeWarning, match=r"ended without all its results \(signal 9\)"):
        again = FlowGMMClassifier(**SMALL).fit(X, partial)  # not ten minutes: a child that cannot be read is stopped
    assert again.temperature_ == after.temperature_ and launches.processes[0].poll() is not None


def test_the_child_s_error_is_raised_and_a_failed_fit_leaves_no_child(threads, monkeypatch):
    X, partial = _blobs()
    failing = (
        "import sys; from flowgmm_cli import workers; sys.stdin.buffer.read(); "
        "workers.write_message(sys.stdout.buffer, {'kind': 'error', 'type': 'TrainingDiverged', 'message': 'a calibration fit diverged'})"
    )
    root = str(Path(crossfit.__file__).resolve().parents[1])
    _Launches(monkeypatch, [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); " + failing])
    threads(2)
    with pytest.raises(TrainingDiverged, match="a calibration fit diverged"):
        FlowGMMClassifier(**SMALL).fit(X, partial)

    launches = _Launches(monkeypatch)

    class Interrupt(_Recorder):
        def on_epoch_end(self, report) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FlowGMMClassifier(**SMALL).fit(X, partial, callback=Interrupt())
    assert launches.processes[0].poll() is not None, "the child was stopped with the fit"
    assert torch.get_num_threads() == 2


def test_a_worker_s_message_carries_the_rows_and_a_shared_transform_once(threads):
    """A seed ensemble's members share one fitted transform: it travels once, and the worker's
    jobs share it too."""
    from flowgmm_cli.fits import FoldJob, fold_fits, model_fit
    from flowgmm_cli.options import TrainOptions

    threads(1)
    X, partial = _blobs()
    rows, transform = ArrayStore(torch.from_numpy(X[:50])), FlowGMMClassifier(**SMALL).fit(X, partial).model_.transform
    options = TrainOptions(epochs=2, batch_size=16, labeled_batch_size=8, calibration_folds=2, random_state=0)
    labeled, codes = np.arange(8), np.repeat([0, 1], 4)
    jobs = [FoldJob(rows, transform, 2, labeled, codes, options) for _ in range(3)]
    fits = [fit for job in jobs for fit in [model_fit(job), *fold_fits(job)]]
    header, arrays = workers._fits_message(fits, threads=1)
    assert len(header["transforms"]) == 1 and len(header["jobs"]) == 3 and len(header["fits"]) == 9
    assert sum(name == "rows" for name in arrays) == 1
    again = workers._fits_from_message(header, arrays)
    assert [(fit.fold, fit.steps) for fit in again] == [(fit.fold, fit.steps) for fit in fits]
    assert again[0].job.transform is again[3].job.transform, "the members' jobs share one transform in the worker too"


def test_messages_carry_json_and_plain_arrays_only():
    """The channel runs no code when read: an object array or an oversized header is refused."""
    import io

    stream = io.BytesIO()
    workers.write_message(stream, {"kind": "scores"}, {"log_joint": np.eye(2), "codes": np.array([1, 0])})
    header, arrays = workers.read_message(io.BytesIO(stream.getvalue()))
    assert header == {"kind": "scores"} and arrays["log_joint"].tolist() == [[1.0, 0.0], [0.0, 1.0]] and arrays["codes"].tolist() == [1, 0]
    forged = b'{"kind": "scores", "arrays": {"x": ["|O", [1]]}}'
    with pytest.raises(ValueError, match="may not carry"):
        workers.read_message(io.BytesIO(len(forged).to_bytes(8, "little") + forged + bytes(8)))
    with pytest.raises(ValueError, match="not one of this protocol"):
        workers.read_message(io.BytesIO(b"not a message"))
    with pytest.raises(EOFError):
        workers.read_message(io.BytesIO(stream.getvalue()[:-3]))
