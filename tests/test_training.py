"""fit_flowgmm: learning, repeatability, exact resume, divergence and best-epoch selection."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from flowgmm_cli.errors import InputError, TrainingDiverged
from flowgmm_cli.model import Architecture, FlowGMM
from flowgmm_cli.training import EpochReport, TrainingOptions, fit_flowgmm
from flowgmm_testutils import state_equal

ARCHITECTURE = Architecture(dim=2, n_classes=2, coupling_layers=2, hidden=16, dropout=0.1, learn_weights=True)
OPTIONS = TrainingOptions(epochs=4, batch_size=32, labeled_batch_size=8, labeled_noise=0.05, seed=3)


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs, standardised-looking, labels alternating 0/1."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centres = torch.tensor([[-1.0, 0.3], [1.0, -0.3]])
    return centres[y] + 0.4 * torch.randn(n, 2, generator=generator), y


@pytest.fixture(scope="module")
def problem():
    x_labeled, y_labeled = _blobs(12, seed=0)
    x_unlabeled, _ = _blobs(96, seed=1)
    x_val, y_val = _blobs(40, seed=2)
    return x_labeled, y_labeled, x_unlabeled, (x_val, y_val)


def _fresh_model(seed: int = 0, architecture: Architecture = ARCHITECTURE) -> FlowGMM:
    torch.manual_seed(seed)
    return FlowGMM(architecture)


class Recorder:
    """Remembers steps, reports and the weights at the end of every epoch; can raise after an epoch."""

    def __init__(self, model: FlowGMM | None = None, interrupt_after: int | None = None, poison_after: int | None = None):
        self.model, self.interrupt_after, self.poison_after = model, interrupt_after, poison_after
        self.steps: list[tuple[int, int]] = []
        self.reports: list[EpochReport] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_step(self, step: int, total_steps: int) -> None:
        self.steps.append((step, total_steps))

    def on_epoch_end(self, report: EpochReport) -> None:
        self.reports.append(report)
        if self.model is not None:
            self.weights.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        if report.epoch == self.poison_after:
            with torch.no_grad():
                next(self.model.flow.parameters()).fill_(float("nan"))
        if report.epoch == self.interrupt_after:
            raise KeyboardInterrupt


def test_loss_goes_down_and_history_is_complete(problem):
    EPOCHS = 100
    x_l, y_l, x_u, _ = problem
    # six couplings can rotate the blobs onto the means' axis; two cannot do it reliably
    model = _fresh_model(architecture=dataclasses.replace(ARCHITECTURE, coupling_layers=6))
    options = TrainingOptions(epochs=EPOCHS, batch_size=32, labeled_batch_size=8, lr=1e-2, seed=0)
    recorder = Recorder()
    history = fit_flowgmm(model, x_l, y_l, x_u, options, callback=recorder)
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert all(h["epochs"] == EPOCHS and h["val_accuracy"] is None for h in history)
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    assert history[-1]["labeled_nll"] < history[0]["labeled_nll"]
    for h in history:
        assert h["loss"] == pytest.approx(h["labeled_nll"] + h["unlabeled_nll"], rel=1e-6)
    steps_per_epoch = math.ceil(96 / 32)
    total = EPOCHS * steps_per_epoch
    assert recorder.steps == [(s, total) for s in range(1, total + 1)]
    assert not model.training
    # The trained model separates the two blobs.
    with torch.no_grad():
        accuracy = (model.joint_log_prob_standardized(x_u).argmax(1) == torch.arange(96) % 2).float().mean()
    assert accuracy > 0.85  # chance is 0.5; 100 short epochs of a tiny flow with dropout


def test_labeled_only_training_runs(problem):
    x_l, y_l, _, _ = problem
    model = _fresh_model()
    options = TrainingOptions(epochs=3, batch_size=32, labeled_batch_size=5, seed=0)
    recorder = Recorder()
    history = fit_flowgmm(model, x_l, y_l, torch.empty(0, 2), options, callback=recorder)
    assert len(history) == 3
    assert all(h["unlabeled_nll"] == 0.0 for h in history)
    assert len(recorder.steps) == 3 * math.ceil(12 / 5)


def test_same_seed_gives_bit_identical_weights(problem):
    x_l, y_l, x_u, validation = problem
    runs = []
    for _ in range(2):
        model = _fresh_model()
        torch.manual_seed(12345 + len(runs))  # the caller's global RNG state must not matter
        history = fit_flowgmm(model, x_l, y_l, x_u, OPTIONS, validation=validation)
        runs.append((model.state_dict(), history))
    assert state_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    other = _fresh_model()
    fit_flowgmm(other, x_l, y_l, x_u, TrainingOptions(**{**OPTIONS.to_dict(), "seed": 4}), validation=validation)
    assert not state_equal(other.state_dict(), runs[0][0])


def test_interrupted_run_resumes_to_the_uninterrupted_result(problem, tmp_path):
    x_l, y_l, x_u, validation = problem
    reference = _fresh_model()
    reference_history = fit_flowgmm(reference, x_l, y_l, x_u, OPTIONS, validation=validation)

    checkpoint = tmp_path / "run.ckpt"
    interrupted = _fresh_model()
    with pytest.raises(KeyboardInterrupt):
        fit_flowgmm(
            interrupted, x_l, y_l, x_u, OPTIONS, validation=validation, checkpoint=checkpoint,
            fingerprint="data-1", callback=Recorder(interrupt_after=2),
        )
    assert checkpoint.exists()

    resumed = _fresh_model(seed=99)  # different initial weights: the checkpoint must restore them
    torch.manual_seed(777)
    recorder = Recorder()
    history = fit_flowgmm(
        resumed, x_l, y_l, x_u, OPTIONS, validation=validation, checkpoint=checkpoint, resume=True,
        fingerprint="data-1", callback=recorder,
    )
    assert [r.epoch for r in recorder.reports] == [3, 4]
    steps_per_epoch = math.ceil(96 / 32)
    assert recorder.steps[0] == (2 * steps_per_epoch + 1, 4 * steps_per_epoch)
    assert history == reference_history
    assert state_equal(resumed.state_dict(), reference.state_dict())

    # Resuming a finished run changes nothing.
    again = _fresh_model(seed=5)
    assert fit_flowgmm(again, x_l, y_l, x_u, OPTIONS, validation=validation, checkpoint=checkpoint, resume=True, fingerprint="data-1") == reference_history
    assert state_equal(again.state_dict(), reference.state_dict())


def test_resume_without_a_checkpoint_starts_from_scratch(problem, tmp_path):
    x_l, y_l, x_u, _ = problem
    reference = _fresh_model()
    reference_history = fit_flowgmm(reference, x_l, y_l, x_u, OPTIONS)
    model = _fresh_model()
    checkpoint = tmp_path / "new.ckpt"
    history = fit_flowgmm(model, x_l, y_l, x_u, OPTIONS, checkpoint=checkpoint, resume=True)
    assert history == reference_history
    assert state_equal(model.state_dict(), reference.state_dict())
    assert checkpoint.exists()


def test_resume_with_another_fingerprint_or_a_foreign_file_raises_input_error(problem, tmp_path):
    x_l, y_l, x_u, _ = problem
    options = TrainingOptions(**{**OPTIONS.to_dict(), "epochs": 1})
    checkpoint = tmp_path / "run.ckpt"
    fit_flowgmm(_fresh_model(), x_l, y_l, x_u, options, checkpoint=checkpoint, fingerprint="data-1")
    with pytest.raises(InputError, match="other data or options"):
        fit_flowgmm(_fresh_model(), x_l, y_l, x_u, options, checkpoint=checkpoint, resume=True, fingerprint="data-2")
    foreign = tmp_path / "foreign.ckpt"
    foreign.write_text("not a checkpoint")
    with pytest.raises(InputError):
        fit_flowgmm(_fresh_model(), x_l, y_l, x_u, options, checkpoint=foreign, resume=True, fingerprint="data-1")


def test_nan_in_the_data_raises_training_diverged_in_epoch_1(problem, tmp_path):
    x_l, y_l, x_u, _ = problem
    x_u = x_u.clone()
    x_u[5, 0] = float("nan")
    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(TrainingDiverged, match=r"epoch 1\b"):
        fit_flowgmm(_fresh_model(), x_l, y_l, x_u, OPTIONS, checkpoint=checkpoint)
    assert not checkpoint.exists()


def test_huge_learning_rate_raises_training_diverged(problem):
    x_l, y_l, x_u, _ = problem
    options = TrainingOptions(**{**OPTIONS.to_dict(), "lr": 1e30})
    with pytest.raises(TrainingDiverged, match=r"epoch \d+"):
        fit_flowgmm(_fresh_model(), x_l, y_l, x_u, options)


def test_divergence_names_the_epoch_it_happened_in(problem):
    x_l, y_l, x_u, _ = problem
    model = _fresh_model()
    with pytest.raises(TrainingDiverged, match=r"epoch 3\b"):
        fit_flowgmm(model, x_l, y_l, x_u, OPTIONS, callback=Recorder(model, poison_after=2))


def _best_epoch(reports: list[EpochReport]) -> int:
    """Highest validation accuracy, then lowest validation NLL; the earliest on a tie."""
    best = max(reports, key=lambda r: (r.val_accuracy, -r.val_nll, -r.epoch))
    return best.epoch


def test_validation_keeps_the_best_epochs_weights(problem):
    x_l, y_l, x_u, (x_val, y_val) = problem
    # Validation labels that contradict the training labels: the better the fit, the worse the
    # validation score, so the best epoch is an early one and not the last.
    flipped = 1 - y_val
    model = _fresh_model()
    recorder = Recorder(model)
    options = TrainingOptions(**{**OPTIONS.to_dict(), "epochs": 6})
    history = fit_flowgmm(model, x_l, y_l, x_u, options, validation=(x_val, flipped), callback=recorder)
    assert all(h["val_accuracy"] is not None and h["val_nll"] is not None for h in history)
    best = _best_epoch(recorder.reports)
    assert best < 6, "the test needs a best epoch before the last one"
    assert state_equal(model.state_dict(), recorder.weights[best - 1])
    assert not state_equal(model.state_dict(), recorder.weights[-1])
    # The reported validation accuracy is that of the kept weights.
    with torch.no_grad():
        accuracy = (model.joint_log_prob_standardized(x_val).argmax(1) == flipped).double().mean().item()
    assert accuracy == pytest.approx(recorder.reports[best - 1].val_accuracy)


def test_without_validation_the_last_epochs_weights_are_kept(problem):
    x_l, y_l, x_u, _ = problem
    model = _fresh_model()
    recorder = Recorder(model)
    fit_flowgmm(model, x_l, y_l, x_u, OPTIONS, callback=recorder)
    assert state_equal(model.state_dict(), recorder.weights[-1])


def test_empty_validation_set_is_refused_or_ignored(problem):
    """Scores on zero rows are NaN; NaN never compares greater, so the first epoch would win forever."""
    x_l, y_l, x_u, _ = problem
    empty = (torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    reference = _fresh_model()
    fit_flowgmm(reference, x_l, y_l, x_u, OPTIONS)
    model = _fresh_model()
    try:
        fit_flowgmm(model, x_l, y_l, x_u, OPTIONS, validation=empty)
    except ValueError:
        return
    same = state_equal(model.state_dict(), reference.state_dict())
    assert same, "with an empty validation set the model kept other weights than the last epoch's"
