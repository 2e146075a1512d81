"""One fit of a ``fit``: a member's model on all its labels, or a calibration fit that hides one
fold of them and scores its rows; and a fit's result as a worker's message.

A fit seeds itself from its options, so it computes the same numbers in whichever process runs
it, on the same number of threads (:mod:`~flowgmm_cli.crossfit` spreads fits over processes).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .defaults import calibration_epochs, steps_per_epoch
from .devices import resolve_device
from .distributed import setup
from .factory import build_model, build_objective, build_schedule, build_source
from .inference import joint, map_rows
from .model import FlowGMM
from .options import TrainOptions
from .splits import stratified_folds
from .stores import RowStore, SubsetStore
from .training import TrainingCallback, train
from .transforms import TransformChain

__all__ = ["FoldJob", "Fit", "FitResult", "model_fit", "fold_fits", "fold_scores", "train_one", "run_fit", "result_message", "result_from_message"]


def train_one(
    rows: RowStore, transform: TransformChain, n_classes: int, labeled: np.ndarray, codes: np.ndarray, unlabeled: np.ndarray,
    options: TrainOptions, validation: tuple[torch.Tensor, torch.Tensor] | None = None, **run: Any,
) -> tuple[FlowGMM, list[dict[str, Any]]]:  # fmt: skip
    """One model trained on ``rows``: the rows ``labeled`` with classes ``codes``, the rows where
    ``unlabeled`` is true without; ``run`` goes to :func:`~flowgmm_cli.training.train`."""
    here, device = setup(resolve_device(options.device))
    torch.manual_seed(options.random_state)
    model = build_model(copy.deepcopy(transform), n_classes, options, rows.image_shape).to(device)
    x_labeled = rows.read_rows(labeled).to(device)
    y_codes = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(device)
    source = build_source(SubsetStore(rows, unlabeled), x_labeled, y_codes, model, options, here)
    history = train(model, source, build_objective(model, options), build_schedule(options), validation, **run)
    return model, history


@dataclass
class FoldJob:
    """What a member's fits need: the rows, the fitted input transform, the labeled rows (indices
    into ``rows``) with their class codes, the member's resolved options, and the labeled rows
    ``held_back`` for validation, which are in neither set."""

    rows: RowStore
    transform: TransformChain
    n_classes: int
    labeled: np.ndarray
    codes: np.ndarray
    options: TrainOptions
    held_back: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def unlabeled(self, labeled: np.ndarray) -> np.ndarray:
        """The unlabeled mask of a fit that trains on the rows ``labeled``: every other row but those held back."""
        mask = np.ones(self.rows.n_rows, dtype=bool)
        mask[labeled] = False
        mask[self.held_back] = False
        return mask


@dataclass
class Fit:
    """One fit of a :class:`FoldJob`: its model on all its labels (``fold`` is ``None``), or the
    calibration fit that hides fold ``fold`` of them. ``label`` names it in progress reports;
    ``steps`` is its length; a model's fit may keep a ``checkpoint`` (and ``resume`` from it,
    refusing one whose ``fingerprint`` differs) and choose its epoch on ``validation`` rows (their
    features and class codes). Build with :func:`model_fit` and :func:`fold_fits`."""

    job: FoldJob
    fold: int | None
    label: str
    steps: int
    checkpoint: str | os.PathLike | None = None
    resume: bool = False
    fingerprint: str = ""
    validation: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class FitResult:
    """A model fit's model and history, or a calibration fit's ``log p(x, y=k)`` of the rows its fold holds out."""

    model: FlowGMM | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    scores: np.ndarray | None = None


def model_fit(job: FoldJob, label: str = "", **run: Any) -> Fit:
    """The fit of the job's model on all its labels; ``run``: ``checkpoint``, ``resume``, ``fingerprint``, ``validation``."""
    return Fit(job, None, label, _model_steps(job), **run)


def _model_steps(job: FoldJob) -> int:
    """Optimiser steps of the job's model on all its labels."""
    options = job.options
    n_unlabeled = int(job.unlabeled(job.labeled).sum())
    return options.epochs * steps_per_epoch(len(job.labeled), n_unlabeled, options.batch_size, options.labeled_batch_size)


def fold_fits(job: FoldJob, prefix: str = "") -> list[Fit]:
    """The job's calibration fits, one per fold that holds out a row (``calibration_folds`` of
    them, stratified by class): each a sixth of the model's steps, but at least about 500 behind a
    principal projection and 250 without (or the model's length where it is shorter;
    :func:`~flowgmm_cli.defaults.calibration_epochs`), with the same seed
    and options. ``prefix`` begins their labels (``"member 2/3, "``)."""
    fits = []
    for fold in range(job.options.calibration_folds):
        held, unlabeled, options = _fold_setup(job, fold)
        if held.any():
            steps = options.epochs * steps_per_epoch(int((~held).sum()), int(unlabeled.sum()), options.batch_size, options.labeled_batch_size)
            fits.append(Fit(job, fold, f"{prefix}calibration fit {fold + 1}/{job.options.calibration_folds}", steps))
    return fits


def _fold_setup(job: FoldJob, fold: int) -> tuple[np.ndarray, np.ndarray, TrainOptions]:
    """Which labeled rows fold ``fold`` holds out, the fit's unlabeled mask (they join the
    unlabeled rows), and its options."""
    options = job.options
    held = stratified_folds(job.codes, options.calibration_folds, options.random_state) == fold
    unlabeled = job.unlabeled(job.labeled[~held])
    labeled_batch = min(options.labeled_batch_size, int((~held).sum()))
    epoch_steps = steps_per_epoch(int((~held).sum()), int(unlabeled.sum()), options.batch_size, labeled_batch)
    epochs = calibration_epochs(_model_steps(job), epoch_steps, projected=bool(options.projection_dim))
    return held, unlabeled, replace(options, epochs=epochs, labeled_batch_size=labeled_batch)


def fold_scores(job: FoldJob, fits: list[Fit], results: list[FitResult]) -> tuple[np.ndarray, np.ndarray]:
    """From the results of the job's calibration fits (``fits`` may hold others): ``log p(x, y=k)``
    of each labeled row that some fold holds out, from the fit that did not see its label, and
    those rows' class codes. A class's only labeled row is in no fold and is not scored."""
    folds = stratified_folds(job.codes, job.options.calibration_folds, job.options.random_state)
    log_joint = np.zeros((len(job.labeled), job.n_classes))
    for fit, result in zip(fits, results, strict=True):
        if fit.job is job and fit.fold is not None:
            log_joint[folds == fit.fold] = result.scores
    scored = folds >= 0
    return log_joint[scored], job.codes[scored]


def run_fit(fit: Fit, callback: TrainingCallback | None = None) -> FitResult:
    """Train one fit here."""
    job = fit.job
    if fit.fold is None:
        run = {"checkpoint": fit.checkpoint, "resume": fit.resume, "fingerprint": fit.fingerprint}
        model, history = train_one(job.rows, job.transform, job.n_classes, job.labeled, job.codes, job.unlabeled(job.labeled), job.options, fit.validation, callback=callback, **run)
        return FitResult(model, history)
    held, unlabeled, options = _fold_setup(job, fit.fold)
    model, history = train_one(job.rows, job.transform, job.n_classes, job.labeled[~held], job.codes[~held], unlabeled, options, callback=callback)
    return FitResult(history=history, scores=map_rows(model, job.rows.read_rows(job.labeled[held]).numpy(), joint, job.n_classes))


def result_message(result: FitResult) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A result as a worker's message: the history in the header, the model's weights or the scores as arrays."""
    if result.model is not None:
        arrays = {f"state.{name}": value.detach().cpu().numpy() for name, value in result.model.state_dict().items()}
    else:
        arrays = {"scores": np.asarray(result.scores)}
    return {"kind": "fit", "history": result.history}, arrays


def result_from_message(fit: Fit, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> FitResult:
    """The :class:`FitResult` of ``fit`` that a worker sent (:func:`result_message`): a model is
    built from the job's options and given the weights; nothing in the message runs code."""
    if fit.fold is not None:
        return FitResult(history=header["history"], scores=arrays["scores"])
    job = fit.job
    model = build_model(copy.deepcopy(job.transform), job.n_classes, job.options, job.rows.image_shape)
    prefix = "state."
    model.load_state_dict({name[len(prefix) :]: torch.from_numpy(value.copy()) for name, value in arrays.items() if name.startswith(prefix)})
    return FitResult(model.eval(), header["history"])
