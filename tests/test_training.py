"""train(): learning, per-term history, repeatability, exact resume, divergence, best-epoch selection,
and the options that shape training (each test fails if its option were ignored)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from flowgmm_cli.errors import InputError, TrainingDiverged
from flowgmm_cli.stores import ArrayStore
from flowgmm_cli.factory import build_model, build_objective, build_schedule, build_source, prepare
from flowgmm_cli.layers import AffineCoupling
from flowgmm_cli.model import FlowGMM
from flowgmm_cli.options import TrainOptions
from flowgmm_cli import training as training_module
from flowgmm_cli.training import EpochReport, Schedule, train
from flowgmm_cli.transforms import Standardize
from flowgmm_testutils import state_equal

#: A tiny flow with every stochastic part switched on (dropout, labeled noise, learnt weights).
OPTIONS = TrainOptions(
    coupling_layers=2, hidden=16, hidden_layers=1, dropout=0.1, learn_weights=True, unlabeled_weight=1.0,
    labeled_noise=0.05, consistency_weight=0.0, epochs=4, batch_size=32, labeled_batch_size=8, random_state=3, device="cpu",
)  # fmt: skip
N_LABELED, N_UNLABELED = 12, 96
STEPS_PER_EPOCH = math.ceil(N_UNLABELED / OPTIONS.batch_size)


def _options(**changes) -> TrainOptions:
    return dataclasses.replace(OPTIONS, **changes)


def _blobs(n: int, seed: int, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs in feature units (offset, unequal scales); labels ``y``, by default alternating 0/1."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2 if y is None else y
    centres = torch.tensor([[-1.0, 0.3], [1.0, -0.3]])
    x = centres[y] + 0.4 * torch.randn(n, 2, generator=generator)
    return x * torch.tensor([2.0, 0.5]) + torch.tensor([3.0, -1.0]), y


@pytest.fixture(scope="module")
def problem():
    x_labeled, y_labeled = _blobs(N_LABELED, seed=0)
    x_unlabeled, y_unlabeled = _blobs(N_UNLABELED, seed=1)
    x_val, y_val = _blobs(40, seed=2)
    return x_labeled, y_labeled, x_unlabeled, y_unlabeled, (x_val, y_val)


def _build(problem, options: TrainOptions = OPTIONS, init_seed: int = 0, x_unlabeled: torch.Tensor | None = None):
    """The parts of one run, through the factory: model, source, objective, schedule.

    The input transform is always fitted on the problem's rows; ``x_unlabeled`` replaces the
    unlabeled rows the source serves (the transform stays the same).
    """
    x_l, y_l, x_u, _, _ = problem
    transform, resolved = prepare(ArrayStore(torch.cat([x_l, x_u])), len(x_l), len(x_u), options)
    torch.manual_seed(init_seed)  # the networks' initial weights
    model = build_model(transform, 2, resolved)
    source = build_source(ArrayStore(x_u if x_unlabeled is None else x_unlabeled), x_l, y_l, model, resolved)
    return model, source, build_objective(model, resolved), build_schedule(resolved)


def _train(problem, options: TrainOptions = OPTIONS, init_seed: int = 0, x_unlabeled=None, **kwargs):
    """Build and train; returns ``(initial model, trained model, history)``."""
    model, source, objective, schedule = _build(problem, options, init_seed, x_unlabeled)
    initial = copy.deepcopy(model)
    history = train(model, source, objective, schedule, **kwargs)
    return initial, model, history


def _flow_vector(model: FlowGMM) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.flow.parameters()])


class Recorder:
    """Remembers steps, reports and the weights after every epoch; can raise or poison after an epoch."""

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


# ------------------------------------------------------------------------------------ learning


def test_loss_goes_down_and_history_has_every_epoch_and_term(problem):
    EPOCHS = 60
    _, _, x_u, y_u, _ = problem
    options = _options(coupling_layers=4, hidden=32, dropout=0.0, lr=1e-2, epochs=EPOCHS, random_state=0)
    recorder = Recorder()
    _, model, history = _train(problem, options, callback=recorder)
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert all(h.keys() == {"epoch", "loss", "labeled_nll", "unlabeled_nll"} for h in history)
    assert [r.to_dict() for r in recorder.reports] == history
    for h in history:
        assert h["loss"] == pytest.approx(h["labeled_nll"] + h["unlabeled_nll"], rel=1e-6)
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    assert history[-1]["labeled_nll"] < history[0]["labeled_nll"]
    assert history[-1]["unlabeled_nll"] < history[0]["unlabeled_nll"]
    total = EPOCHS * STEPS_PER_EPOCH
    assert recorder.steps == [(s, total) for s in range(1, total + 1)]
    assert not model.training
    with torch.no_grad():
        accuracy = (model(x_u).argmax(1) == y_u).double().mean().item()
    assert accuracy > 0.9  # chance is 0.5


def test_epoch_terms_are_nats_per_dimension_and_weighted(problem):
    """One step per epoch (every row in one batch, no noise or dropout): epoch 1's terms are the
    initial model's NLLs divided by the feature dimension, and the loss weighs them."""
    x_l, y_l, x_u, _, _ = problem
    options = _options(dropout=0.0, labeled_noise=0.0, unlabeled_weight=0.25, batch_size=1000, labeled_batch_size=1000, epochs=1)
    initial, _, history = _train(problem, options)
    with torch.no_grad():
        labeled = -initial(x_l).gather(1, y_l.unsqueeze(1)).mean().item() / 2
        unlabeled = -torch.logsumexp(initial(x_u), dim=1).mean().item() / 2
    assert history[0]["labeled_nll"] == pytest.approx(labeled, rel=1e-5)
    assert history[0]["unlabeled_nll"] == pytest.approx(unlabeled, rel=1e-5)
    assert history[0]["loss"] == pytest.approx(labeled + 0.25 * unlabeled, rel=1e-5)


def test_labeled_only_training_runs(problem):
    x_l, y_l, _, _, _ = problem
    options = _options(epochs=3, labeled_batch_size=5)
    model, _, objective, schedule = _build(problem, options)
    source = build_source(ArrayStore(torch.empty(0, 2)), x_l, y_l, model, options)
    before = _flow_vector(model)
    recorder = Recorder()
    history = train(model, source, objective, schedule, callback=recorder)
    assert len(history) == 3
    assert all(h["unlabeled_nll"] == 0.0 and math.isfinite(h["labeled_nll"]) for h in history)
    assert len(recorder.steps) == 3 * math.ceil(N_LABELED / 5)
    assert not torch.equal(_flow_vector(model), before)


# ------------------------------------------------------------------------------------ repeatability


def test_same_seed_gives_bit_identical_weights(problem):
    validation = problem[4]
    runs = []
    for attempt in range(2):
        model, source, objective, schedule = _build(problem)
        torch.manual_seed(12345 + attempt)  # the caller's global RNG state must not matter
        history = train(model, source, objective, schedule, validation=validation)
        runs.append((model.state_dict(), history))
    assert state_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    _, other, _ = _train(problem, _options(random_state=4), validation=validation)
    assert not state_equal(other.state_dict(), runs[0][0])


@pytest.mark.parametrize(("with_validation", "consistency"), [(False, 0.0), (True, 0.0), (False, 1.0)], ids=["no-validation", "validation", "consistency"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(problem, tmp_path, with_validation, consistency):
    x_val, y_val = problem[4]
    # Flipped validation labels make an early epoch the best one, so the resumed run must also
    # restore the best weights that the interrupted run kept.
    validation = (x_val, 1 - y_val) if with_validation else None
    options = _options(epochs=5, consistency_weight=consistency)  # consistency: the views' own generator is restored too
    reference_recorder = Recorder()
    _, reference, reference_history = _train(problem, options, validation=validation, callback=reference_recorder)

    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _train(problem, options, validation=validation, checkpoint=checkpoint, fingerprint="data-1", callback=Recorder(interrupt_after=2))
    assert checkpoint.exists()

    # Different initial weights and a different global RNG state: the checkpoint must restore both.
    model, source, objective, schedule = _build(problem, options, init_seed=99)
    torch.manual_seed(777)
    recorder = Recorder()
    history = train(model, source, objective, schedule, validation, checkpoint=checkpoint, resume=True, fingerprint="data-1", callback=recorder)
    assert [r.epoch for r in recorder.reports] == [3, 4, 5]
    assert recorder.steps[0] == (2 * STEPS_PER_EPOCH + 1, 5 * STEPS_PER_EPOCH)
    assert history == reference_history
    assert state_equal(model.state_dict(), reference.state_dict())
    if with_validation:
        best = max(reference_recorder.reports, key=lambda r: (r.val_accuracy, -r.val_nll, -r.epoch)).epoch
        assert best <= 2, "the test needs a best epoch from before the interruption"

    # Resuming a finished run changes nothing.
    again, source, objective, schedule = _build(problem, options, init_seed=5)
    assert train(again, source, objective, schedule, validation, checkpoint=checkpoint, resume=True, fingerprint="data-1") == reference_history
    assert state_equal(again.state_dict(), reference.state_dict())


def test_resume_without_a_checkpoint_starts_from_scratch(problem, tmp_path):
    _, reference, reference_history = _train(problem)
    checkpoint = tmp_path / "new.ckpt"
    _, model, history = _train(problem, checkpoint=checkpoint, resume=True)
    assert history == reference_history
    assert state_equal(model.state_dict(), reference.state_dict())
    assert checkpoint.exists()


def test_resume_with_another_fingerprint_or_a_foreign_file_raises_input_error(problem, tmp_path):
    options = _options(epochs=1)
    checkpoint = tmp_path / "run.ckpt"
    _train(problem, options, checkpoint=checkpoint, fingerprint="data-1")
    with pytest.raises(InputError, match="other data or options"):
        _train(problem, options, checkpoint=checkpoint, resume=True, fingerprint="data-2")
    foreign = tmp_path / "foreign.ckpt"
    foreign.write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a flowgmm checkpoint"):
        _train(problem, options, checkpoint=foreign, resume=True, fingerprint="data-1")
    from safetensors.torch import save_file

    other_safetensors = tmp_path / "weights.safetensors"  # safetensors, but no checkpoint metadata
    save_file({"w": torch.zeros(2)}, str(other_safetensors))
    with pytest.raises(InputError, match="not a flowgmm checkpoint"):
        _train(problem, options, checkpoint=other_safetensors, resume=True, fingerprint="data-1")


# ------------------------------------------------------------------------------------ divergence


@pytest.mark.parametrize("each_step", [True, False], ids=["checked-each-step", "checked-each-epoch"])
def test_nan_in_the_data_raises_training_diverged_in_epoch_1(problem, tmp_path, monkeypatch, each_step):
    """Caught at the step (the CPU) or from the epoch's summed losses (a GPU, where a check per step
    would make the CPU wait for every step): either way in epoch 1, and no checkpoint."""
    monkeypatch.setattr(training_module, "_checks_each_step", lambda device: each_step)
    x_u = problem[2].clone()
    x_u[5, 0] = float("nan")
    checkpoint = tmp_path / "run.ckpt"
    model, _, objective, schedule = _build(problem)
    source = build_source(ArrayStore(x_u), problem[0], problem[1], model, OPTIONS)
    with pytest.raises(TrainingDiverged, match=r"epoch 1\b"):
        train(model, source, objective, schedule, checkpoint=checkpoint)
    assert not checkpoint.exists()


def test_huge_learning_rate_raises_training_diverged(problem):
    with pytest.raises(TrainingDiverged, match=r"epoch [1-4]\b"):
        _train(problem, _options(lr=1e30))


def test_divergence_names_the_epoch_it_happened_in(problem):
    model, source, objective, schedule = _build(problem)
    with pytest.raises(TrainingDiverged, match=r"epoch 3\b"):
        train(model, source, objective, schedule, callback=Recorder(model, poison_after=2))


# ------------------------------------------------------------------------------------ validation


def _best_epoch(reports: list[EpochReport]) -> int:
    """Highest validation accuracy, then lowest validation NLL; the earliest on a tie."""
    return max(reports, key=lambda r: (r.val_accuracy, -r.val_nll, -r.epoch)).epoch


def test_validation_keeps_the_best_epochs_weights(problem):
    x_val, y_val = problem[4]
    # Validation labels that contradict the training labels: the better the fit, the worse the
    # validation score, so the best epoch is an early one and not the last.
    flipped = 1 - y_val
    model, source, objective, schedule = _build(problem, _options(epochs=6))
    recorder = Recorder(model)
    history = train(model, source, objective, schedule, validation=(x_val, flipped), callback=recorder)
    assert all(h.keys() == {"epoch", "loss", "labeled_nll", "unlabeled_nll", "val_accuracy", "val_nll"} for h in history)
    best = _best_epoch(recorder.reports)
    assert best < 6, "the test needs a best epoch before the last one"
    assert state_equal(model.state_dict(), recorder.weights[best - 1])
    assert not state_equal(model.state_dict(), recorder.weights[-1])
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == flipped).double().mean().item()
    assert accuracy == pytest.approx(recorder.reports[best - 1].val_accuracy)


def test_without_validation_the_last_epochs_weights_are_kept(problem):
    model, source, objective, schedule = _build(problem)
    recorder = Recorder(model)
    train(model, source, objective, schedule, callback=recorder)
    assert state_equal(model.state_dict(), recorder.weights[-1])


def test_empty_validation_set_is_refused(problem):
    """Scores on zero rows are NaN; NaN never compares greater, so the first epoch would win forever."""
    model, source, objective, schedule = _build(problem)
    empty = (torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="validation set is empty"):
        train(model, source, objective, schedule, validation=empty)


# ------------------------------------------------------------------------------------ options act


def test_unlabeled_weight_zero_ignores_the_unlabeled_rows_values(problem):
    """With weight 0 the unlabeled rows' values cannot change the weights; with weight 1 they do."""
    x_u = problem[2]
    other_x_u = x_u.flip(1) * 1.5 + 0.7  # same number of rows, other values
    for weight, same in ((0.0, True), (1.0, False), (0.3, False)):
        options = _options(unlabeled_weight=weight, dropout=0.0)
        _, a, _ = _train(problem, options)
        _, b, _ = _train(problem, options, x_unlabeled=other_x_u)
        assert state_equal(a.state_dict(), b.state_dict()) is same, f"unlabeled_weight={weight}"
    _, a, _ = _train(problem, _options(unlabeled_weight=1.0))
    _, b, _ = _train(problem, _options(unlabeled_weight=0.3))
    assert not state_equal(a.state_dict(), b.state_dict())


def test_weight_decay_shrinks_the_weights(problem):
    options = _options(lr=1e-2, dropout=0.0, epochs=8)
    _, plain, _ = _train(problem, dataclasses.replace(options, weight_decay=0.0))
    _, decayed, _ = _train(problem, dataclasses.replace(options, weight_decay=20.0))
    assert _flow_vector(decayed).norm() < 0.5 * _flow_vector(plain).norm()


def test_grad_clip_limits_the_update_and_zero_turns_it_off(problem):
    options = _options(dropout=0.0)
    initial, unclipped, _ = _train(problem, dataclasses.replace(options, grad_clip=0.0))
    _, huge, _ = _train(problem, dataclasses.replace(options, grad_clip=1e30))
    assert state_equal(unclipped.state_dict(), huge.state_dict())
    # Adam divides out the gradient's scale, except below its eps (1e-8): a clip of 1e-9 makes
    # every step tiny.
    _, tiny, _ = _train(problem, dataclasses.replace(options, grad_clip=1e-9))
    start = _flow_vector(initial)
    assert (_flow_vector(tiny) - start).norm() < 0.1 * (_flow_vector(unclipped) - start).norm()
    _, moderate, _ = _train(problem, dataclasses.replace(options, grad_clip=0.05))
    assert not state_equal(moderate.state_dict(), unclipped.state_dict())


def test_cosine_schedule_starts_at_lr_and_ends_near_zero(problem, monkeypatch):
    """The learning rate of each optimiser step, read from the optimiser, and the steps' sizes."""
    learning_rates: list[float] = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            learning_rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    options = _options(lr=0.05, epochs=8, dropout=0.0, labeled_noise=0.0, weight_decay=0.0)
    model, source, objective, schedule = _build(problem, options)
    snapshots = [_flow_vector(model)]

    class StepSnapshots:
        def on_step(self, step, total_steps):
            snapshots.append(_flow_vector(model))

        def on_epoch_end(self, report):
            pass

    train(model, source, objective, schedule, callback=StepSnapshots())
    total = 8 * STEPS_PER_EPOCH
    assert len(learning_rates) == total
    assert learning_rates[0] == 0.05
    assert learning_rates[total // 2] == pytest.approx(0.025, rel=1e-12)
    assert learning_rates[-1] < 0.01 * 0.05
    assert all(a > b for a, b in zip(learning_rates, learning_rates[1:]))
    first_step = (snapshots[1] - snapshots[0]).norm()
    last_step = (snapshots[-1] - snapshots[-2]).norm()
    assert last_step < 0.05 * first_step


@pytest.mark.parametrize("learn_means", [False, True])
def test_means_change_only_when_learn_means(problem, learn_means):
    initial, trained, _ = _train(problem, _options(learn_means=learn_means, lr=1e-2))
    moved = (trained.prior.means - initial.prior.means).abs().max().item()
    assert (moved > 1e-3) if learn_means else (moved == 0.0)


@pytest.mark.parametrize("learn_weights", [False, True])
def test_mixture_weights_change_only_when_learn_weights(problem, learn_weights):
    # Nine labeled rows of class 0 and three of class 1: learnt weights move towards 3:1.
    _, _, x_u, y_u, validation = problem
    imbalanced = (*_blobs(N_LABELED, seed=0, y=torch.tensor([0] * 9 + [1] * 3)), x_u, y_u, validation)
    _, trained, _ = _train(imbalanced, _options(learn_weights=learn_weights, lr=1e-2))
    logits = trained.prior.weight_logits.detach()
    if learn_weights:
        assert logits[0] - logits[1] > 1e-3
    else:
        assert torch.equal(logits, torch.zeros(2))


def test_labeled_noise_is_added_to_labeled_batches_in_standardised_units(problem):
    """All labeled rows at one point: what the source serves minus that point is the noise, whose
    std per feature is ``labeled_noise`` times the feature's scale (2 and 0.5 apart here)."""
    x_l, y_l, x_u, _, _ = problem
    point = torch.tensor([[3.0, -1.0]])
    model, _, _, _ = _build(problem)
    scale = next(m for m in model.transform.modules() if isinstance(m, Standardize)).scale
    for noise in (0.0, 0.3):
        source = build_source(ArrayStore(x_u), point.expand(N_LABELED, 2), y_l, model, _options(labeled_noise=noise))
        offsets = torch.cat([batch.x_labeled - point for _ in range(60) for batch in source.epoch()])
        if noise == 0:
            assert torch.equal(offsets, torch.zeros_like(offsets))
        else:
            assert len(offsets) == 60 * STEPS_PER_EPOCH * OPTIONS.labeled_batch_size
            torch.testing.assert_close(offsets.std(0), noise * scale, rtol=0.1, atol=0)
    # ... and it changes training.
    _, a, _ = _train(problem, _options(labeled_noise=0.0, dropout=0.0))
    _, b, _ = _train(problem, _options(labeled_noise=0.3, dropout=0.0))
    assert not state_equal(a.state_dict(), b.state_dict())


def test_dropout_makes_training_mode_stochastic(problem):
    x_u = problem[2][:20]
    _, with_dropout, _ = _train(problem, _options(dropout=0.5))
    _, without, _ = _train(problem, _options(dropout=0.0))
    assert not with_dropout.training
    with torch.no_grad():
        torch.testing.assert_close(with_dropout(x_u), with_dropout(x_u), rtol=0, atol=0)  # eval: deterministic
        with_dropout.train()
        assert not torch.equal(with_dropout(x_u), with_dropout(x_u))
        without.train()
        assert torch.equal(without(x_u), without(x_u))
        assert torch.equal(without(x_u), without.eval()(x_u))


def test_zero_hidden_layers_gives_one_linear_map_per_coupling_and_trains(problem):
    _, model, history = _train(problem, _options(hidden_layers=0, dropout=0.0, lr=1e-2, epochs=6))
    couplings = [layer for layer in model.flow.layers if isinstance(layer, AffineCoupling)]
    assert len(couplings) == OPTIONS.coupling_layers
    for coupling in couplings:
        assert [type(m) for m in coupling.net] == [torch.nn.Linear]
        assert coupling.net[0].in_features == 1 and coupling.net[0].out_features == 2
    assert history[-1]["loss"] < history[0]["loss"]
    assert any(c.net[0].weight.abs().sum() > 0 for c in couplings)


def test_schedule_from_options():
    options = _options(epochs=7, lr=0.02, weight_decay=0.3, grad_clip=0.0, random_state=11)
    assert build_schedule(options) == Schedule(epochs=7, lr=0.02, weight_decay=0.3, grad_clip=0.0, seed=11)


def test_max_steps_stops_within_an_epoch_with_the_schedule_ending_there(problem):
    """``Schedule.max_steps`` ends the run after that many steps, mid-epoch, the cosine reaching 0
    at the last one: the history has the epochs begun, the last averaged over its steps run."""
    model, source, objective, schedule = _build(problem)
    seen: list[tuple[int, int]] = []

    class Steps:
        def on_step(self, step: int, total_steps: int) -> None:
            seen.append((step, total_steps))

        def on_epoch_end(self, report) -> None:
            pass

    stop = STEPS_PER_EPOCH + 1
    history = train(model, source, objective, dataclasses.replace(schedule, max_steps=stop), callback=Steps())
    assert seen == [(step, stop) for step in range(1, stop + 1)]
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert all(math.isfinite(entry["loss"]) for entry in history)
