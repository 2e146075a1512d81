"""FlowGMMClassifier: a scikit-learn face over the model, its data source, objective and training loop.

Its parameters are the fields of :class:`~flowgmm_cli.options.TrainOptions` (declared once there);
``-1`` marks an unlabeled row, as in ``sklearn.semi_supervised``.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._version import __version__
from .calibration import calibration_evidence, cross_fitted_log_temperature, fit_temperature, mixture_log_joint, tempered_log_proba
from .crossfit import lane_count, run_fits
from .fits import FoldJob, fold_fits, fold_scores, model_fit
from .defaults import projection_candidates
from .devices import resolve_device
from .distributed import setup, world
from .errors import InputError
from .factory import prepare
from .inference import joint, map_rows
from .model import FlowGMM
from .modelfile import load_model, save_model
from .options import TrainOptions, option_fields
from .selection import choose_projection
from .splits import hold_out
from .stores import ArrayStore, RowStore
from .targets import encode_targets, require_classes, unlabeled_mask
from .training import TrainingCallback

__all__ = ["FlowGMMClassifier", "log_evidence", "member_checkpoint"]


def log_evidence(joint: np.ndarray) -> np.ndarray:
    """``log p(x) = log Σ_k p(x, y=k)`` per row from ``log p(x, y=k)`` (an ensemble's ``(M, N, K)``:
    of the members' mixture).

    Example:
        >>> np.exp(log_evidence(np.log([[0.1, 0.3]]))).round(3).tolist()
        [0.4]
    """
    return np.logaddexp.reduce(mixture_log_joint(joint), axis=1)


def member_checkpoint(checkpoint: str | os.PathLike | None, member: int) -> Path | None:
    """The checkpoint file of an ensemble's ``member``: ``checkpoint`` itself for the first, then
    ``checkpoint.1``, ``checkpoint.2``, ... (a resumed fit finds each member's where it stopped)."""
    if checkpoint is None:
        return None
    return Path(checkpoint) if member == 0 else Path(f"{checkpoint}.{member}")


class FlowGMMClassifier(ClassifierMixin, BaseEstimator):
    """FlowGMM (Izmailov et al., 2020): a RealNVP flow into a Gaussian mixture with one component per class.

    Fit on labeled and unlabeled rows at once by maximising their joint likelihood; predict by
    Bayes' rule in latent space. Parameters left at ``None`` are chosen from the data's size and
    dimension (:mod:`flowgmm_cli.defaults`); 0 always means 0. A row's prediction does not depend
    on the rows predicted with it: vector models infer in float64, image models in float32 in
    blocks of one fixed shape (:func:`~flowgmm_cli.inference.map_rows`).

    With ``members`` above 1 (3 by default for 5 or more classes) it is a seed ensemble: ``members_`` holds flows
    fitted with seeds ``random_state``, ``random_state + 1``, ..., their class probabilities are
    averaged at one temperature and ``log p(x)`` is their equal mixture's. The latent space
    (:meth:`encode`, :meth:`decode`, :attr:`means_`, :meth:`sample`) is the first member's, ``model_``.

    ``calibration_`` says what the temperature of the class probabilities rests on: the held-out
    labels of the calibration fits or validation rows, how many, and how often they were classified
    right (:func:`~flowgmm_cli.calibration.calibration_evidence`); ``None`` when nothing calibrated it.
    ``projection_choice_`` is what chose the projection's size (:mod:`flowgmm_cli.selection`): the
    sizes, their calibration fits' held-out NLL and its standard error against the lowest; ``None``
    when the size was given or there was no choice.

    Example:
        >>> from sklearn.datasets import make_moons
        >>> X, y = make_moons(300, noise=0.05, random_state=0)
        >>> y_partial = np.full_like(y, -1); y_partial[:10] = y[:10]
        >>> clf = FlowGMMClassifier(epochs=3).fit(X, y_partial)
        >>> clf.predict_proba(X).shape
        (300, 2)
    """

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - _PARAM_NAMES)
        if unknown:
            raise TypeError(f"FlowGMMClassifier got an unexpected keyword argument '{unknown[0]}'")
        for spec in option_fields():
            setattr(self, spec.name, params.get(spec.name, _plain_default(spec)))

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: Any,
        y: Any,
        *,
        X_val: Any = None,
        y_val: Any = None,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        fingerprint: str = "",
        callback: TrainingCallback | None = None,
        units: str | None = None,
    ) -> "FlowGMMClassifier":
        """Fit on all rows of ``X``; ``y`` holds a class per row or ``-1`` for an unlabeled row.

        ``X_val``/``y_val`` (or ``val_fraction``) choose the best epoch. ``checkpoint`` saves the
        training state after each epoch; ``resume=True`` continues from it. ``units`` says what the
        columns are measured in, for the defaults that follow it (:func:`flowgmm_cli.defaults.resolve_input`):
        ``"per-column"`` (a table) or ``"shared"`` (embeddings, pixels); ``None`` (unknown) decides
        the scaling by the number of features. The container does not decide: the same numbers in
        an array or a DataFrame give the same model. Images given as a ``(N, C, H, W)`` array of
        pixel values 0-255 get the image flow; predict on images of the same shape.
        """
        if isinstance(y, (list, tuple)) and any(isinstance(v, str) for v in y):
            y = np.array(list(y), dtype=object)  # keep -1 an integer beside string classes
        X, image_shape = _flat_images(X)
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2, y_numeric=False)
        X = X if X.flags.writeable else X.copy()  # a DataFrame's values can be a read-only view
        labeled = np.flatnonzero(~unlabeled_mask(np.asarray(y, dtype=object) if np.asarray(y).dtype.kind in "OUS" else y))
        chunks = 1 if not world().distributed else 4 * world().size  # several chunks to share out
        return self.fit_rows(
            ArrayStore(torch.from_numpy(X), chunks=chunks, units=units, image_shape=image_shape), labeled, np.asarray(y)[labeled], X_val=X_val, y_val=y_val,
            checkpoint=checkpoint, resume=resume, fingerprint=fingerprint, callback=callback,
        )  # fmt: skip

    def fit_rows(
        self,
        rows: RowStore,
        labeled: np.ndarray,
        y_labeled: Any,
        *,
        X_val: Any = None,
        y_val: Any = None,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        fingerprint: str = "",
        callback: TrainingCallback | None = None,
    ) -> "FlowGMMClassifier":
        """Fit on the rows of a store: in memory, or a feature file read in chunks
        (:class:`~flowgmm_cli.stores.FeatureStream`) for data larger than memory.

        ``labeled`` are the indices of the labeled rows and ``y_labeled`` their classes; every other
        row is unlabeled. Under ``torchrun`` each process trains on its share of the unlabeled rows
        and gradients are averaged (:mod:`flowgmm_cli.distributed`). Other arguments as :meth:`fit`.
        """
        options = TrainOptions(**self.get_params())
        self.classes_, codes = encode_targets(np.asarray(y_labeled, dtype=object) if np.asarray(y_labeled).dtype.kind in "OUS" else y_labeled)
        self.n_features_in_ = rows.dim
        labeled = np.asarray(labeled, dtype=np.int64)
        train_labeled = np.arange(len(labeled))
        validation_rows = None
        if X_val is not None:
            validation_rows = (validate_data(self, _flat_images(X_val)[0], dtype=np.float32, reset=False), self._encode(y_val))
        elif options.val_fraction > 0:
            train_labeled, held_out = hold_out(codes, options.val_fraction, options.random_state, self.classes_)
            validation_rows = (rows.read_rows(labeled[held_out]).numpy(), codes[held_out])
        self.n_labeled_, self.n_unlabeled_ = len(train_labeled), rows.n_rows - len(labeled)

        _, device = setup(resolve_device(options.device))
        class_counts = np.bincount(codes[train_labeled], minlength=len(self.classes_))
        transform, self.options_ = prepare(rows, self.n_labeled_, self.n_unlabeled_, options, class_counts)
        first_scores, self.projection_choice_ = None, None
        sizes = projection_candidates(rows.dim, rows.n_rows, bool(self.options_.square_root))
        if options.projection_dim is None and self.options_.projection_dim and self.options_.calibration_folds and len(sizes) > 1:
            choice = choose_projection(
                rows, labeled[train_labeled], codes[train_labeled], len(self.classes_), sizes, options, class_counts, callback,
                lanes=lane_count(device, rows, len(sizes) * self.options_.calibration_folds), prepared=(transform, self.options_),
            )  # fmt: skip
            transform, self.options_, self.projection_choice_ = choice.transform, choice.options, choice.evidence
            first_scores = choice.scores  # the first member's calibration fits, already run
        if validation_rows is not None:
            self.options_ = replace(self.options_, calibration_folds=0)  # the validation rows calibrate
        validation = None
        if validation_rows is not None:
            validation = (torch.from_numpy(np.ascontiguousarray(validation_rows[0])).to(device), torch.from_numpy(validation_rows[1]).to(device))
        fits, jobs = [], []
        held_back = np.setdiff1d(labeled, labeled[train_labeled])  # validation rows: in neither set
        for member in range(self.options_.members):
            member_options = replace(self.options_, random_state=self.options_.random_state + member)
            job = FoldJob(rows, transform, len(self.classes_), labeled[train_labeled], codes[train_labeled], member_options, held_back)
            prefix = f"member {member + 1}/{self.options_.members}" if self.options_.members > 1 else ""
            label = prefix or ("model" if first_scores is not None else "")
            fits.append(model_fit(job, label, checkpoint=member_checkpoint(checkpoint, member), resume=resume, fingerprint=fingerprint, validation=validation))
            if member > 0 or first_scores is None:  # none with validation rows: calibration_folds is 0 then
                fits += fold_fits(job, f"{prefix}, " if prefix else "")
            jobs.append(job)
        results = run_fits(fits, callback, lane_count(device, rows, len(fits)))
        models = [result for fit, result in zip(fits, results, strict=True) if fit.fold is None]
        self.members_: list[FlowGMM] = [result.model for result in models]  # type: ignore[misc]
        self.history_: list[dict[str, Any]] = [
            {**epoch, "member": member} if self.options_.members > 1 else epoch for member, result in enumerate(models) for epoch in result.history
        ]
        held_out: list[tuple[np.ndarray, np.ndarray]] = []
        if self.options_.calibration_folds:
            held_out = [first_scores if member == 0 and first_scores is not None else fold_scores(job, fits, results) for member, job in enumerate(jobs)]
        self.model_ = self.members_[0]
        self.calibration_: dict[str, Any] | None = None
        if validation_rows is not None:
            joints = self._member_joints(validation_rows[0])
            log_temperature = fit_temperature(joints, validation_rows[1])
            self.calibration_ = calibration_evidence("validation rows", joints, validation_rows[1], log_temperature)
        elif held_out:
            joints, held_codes = np.stack([scores for scores, _ in held_out]), held_out[0][1]
            log_temperature = cross_fitted_log_temperature(joints, held_codes)
            self.calibration_ = calibration_evidence("calibration fits", joints, held_codes, log_temperature)
        else:
            log_temperature = 0.0
        self._set_temperature(log_temperature)
        return self

    def _encode(self, y: Any) -> np.ndarray:
        """Class codes of labels ``y``, every one a class seen in training."""
        y = np.asarray(y, dtype=object if np.asarray(y).dtype.kind in "OUS" else None)
        known = np.isin(y, self.classes_)
        if not known.all():
            raise InputError(f"Label '{y[~known][0]}' is not a class of the training labels {list(self.classes_)}.")
        return np.searchsorted(self.classes_, y).astype(np.int64)

    # ---------------------------------------------------------------- inference
    def joint_log_prob(self, X: Any) -> np.ndarray:
        """``log p(x, y=k)`` per row and class; of a seed ensemble, its members' equal mixture."""
        return mixture_log_joint(self.member_log_joints(X))

    def member_log_joints(self, X: Any) -> np.ndarray:
        """Each member's ``log p(x, y=k)``, shape ``(members, N, K)``: the one pass that
        probabilities (:meth:`log_proba_from_joint`) and ``log p(x)`` (:func:`log_evidence`) share."""
        check_is_fitted(self, "model_")
        return self._member_joints(validate_data(self, _flat_images(X)[0], dtype=np.float32, reset=False))

    def _member_joints(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([map_rows(member, rows, joint, len(self.classes_)) for member in self.members_])

    def predict_log_proba(self, X: Any, temperature: float | None = None) -> np.ndarray:
        """``log p(y=k | x)`` per row and class, columns in the order of ``classes_``.

        At the model's calibration temperature (:attr:`temperature_`, see :meth:`calibrate`), or at
        ``temperature`` without changing the model (``temperature=1`` gives the probabilities as trained).
        """
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        return self.log_proba_from_joint(self.member_log_joints(X), temperature)

    def log_proba_from_joint(self, joint: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """``log p(y | x)`` from :meth:`member_log_joints`' output at the model's temperature (or
        ``temperature``): the members' mean posterior, so one pass through the flows gives both
        ``log p(x)`` and the probabilities."""
        return tempered_log_proba(joint, math.log(self.temperature_ if temperature is None else temperature))

    def predicted_from_joint(self, joint: np.ndarray) -> np.ndarray:
        """Index in ``classes_`` of each row's most probable class from :meth:`member_log_joints`'
        output: a seed ensemble's mean posterior decides, so the temperature can change it."""
        return self.log_proba_from_joint(joint).argmax(axis=1)

    def predict_proba(self, X: Any) -> np.ndarray:
        """``p(y=k | x)`` per row and class, columns in the order of ``classes_``."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        codes = self.predicted_from_joint(self.member_log_joints(X))
        return self.classes_[codes]

    def score_samples(self, X: Any) -> np.ndarray:
        """``log p(x)`` per row under the trained density (low values flag unusual inputs); calibration does not change it."""
        return log_evidence(self.member_log_joints(X))

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted model; returns ``(X, y)`` like GaussianMixture."""
        Z, y = self.sample_latent(n_samples, random_state)
        return self.decode(Z), y

    # ------------------------------------------------------------- latent space
    @property
    def means_(self) -> np.ndarray:
        """The class means ``μ_k`` in latent space, shape ``(n_classes, latent_dim_)``."""
        check_is_fitted(self, "model_")
        return self.model_.prior.means.detach().double().cpu().numpy()

    @property
    def temperature_(self) -> float:
        """The temperature ``T`` of the class probabilities, ``softmax_k(log p(x, y=k) / T)``, set by
        ``fit``'s calibration or :meth:`calibrate`; 1 is the model as trained."""
        check_is_fitted(self, "model_")
        return math.exp(float(self.model_.prior.log_temperature))  # exp in float64: log(T) round-trips

    @property
    def image_shape_(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of the images an image-flow model reads, ``None`` for a vector model."""
        check_is_fitted(self, "model_")
        shape = getattr(self.model_.flow, "shape", None)
        return tuple(shape) if shape is not None else None  # type: ignore[return-value]

    @property
    def latent_dim_(self) -> int:
        """Dimension of the latent space: the projection's (see ``projection_dim``), else the features'."""
        check_is_fitted(self, "model_")
        return self.model_.latent_dim

    def encode(self, X: Any) -> np.ndarray:
        """Latent codes ``z = f(x)`` of the rows of ``X`` (images ``(N, C, H, W)`` as in :meth:`fit`)."""
        check_is_fitted(self, "model_")
        rows = validate_data(self, _flat_images(X)[0], dtype=np.float32, reset=False)
        return map_rows(self.model_, rows, lambda m, x: m.encode(x), self.latent_dim_)

    def decode(self, Z: Any) -> np.ndarray:
        """Feature-space rows ``x = f⁻¹(z)`` of latent codes ``Z`` (the inverse of :meth:`encode`)."""
        check_is_fitted(self, "model_")
        Z = check_array(Z, dtype=np.float32, ensure_min_samples=0)
        if Z.shape[1] != self.latent_dim_:
            raise ValueError(f"latent codes have {Z.shape[1]} columns but the model's latent space has {self.latent_dim_}")
        return map_rows(self.model_, Z, lambda m, z: m.decode(z), self.n_features_in_)

    def sample_latent(self, n_samples: int = 1, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` latent codes from the mixture (classes drawn from its weights); returns ``(Z, y)``.

        :meth:`sample` maps the same draws to feature space.
        """
        check_is_fitted(self, "model_")
        generator = torch.Generator().manual_seed(self.random_state if random_state is None else random_state)
        Z, codes = self.model_.prior.sample(n_samples, generator=generator)
        return Z.cpu().numpy().astype(np.float64), self.classes_[codes.cpu().numpy()]

    def calibrate(self, X: Any, y: Any) -> "FlowGMMClassifier":
        """Fit the temperature ``T`` of the class probabilities on labeled validation rows (paper, section 6.1).

        ``T`` minimises the NLL of ``y`` under ``p(y | x) = softmax_k(log p(x, y=k) / T)``:
        temperature scaling of the class log-joints, which with equal mixture weights is the
        paper's variance scale (components ``N(μ_k, σ²T I)``) and never changes the most probable
        class (:mod:`flowgmm_cli.calibration`). ``log p(x)`` (:meth:`score_samples`, ``predict``'s
        ``log_px``, ``evaluate --ood``) and samples keep the trained variance: a density widened by
        ``T`` separates out-of-distribution rows less (digits trained without class 9, test 9s as
        outliers, three seeds: AUROC 0.83-0.90 at the trained variance, 0.59-0.77 at ``T`` ≈ 5.5).
        The fit starts from the trained variance, so calibrating again gives the same ``T``.
        ``fit`` already calibrates (``calibration_folds``); this is for a validation file.

        Example:
            >>> from sklearn.datasets import make_blobs
            >>> X, y = make_blobs(400, centers=2, cluster_std=3.0, random_state=0)
            >>> clf = FlowGMMClassifier(epochs=2, hidden=16, coupling_layers=2).fit(X[:200], y[:200])
            >>> clf.calibrate(X[200:], y[200:]).temperature_ != 1.0
            True
        """
        check_is_fitted(self, "model_")
        codes = self._encode(y)
        require_classes(self.classes_[np.unique(codes)].tolist(), "the calibration labels", task="Calibration")
        joints = self.member_log_joints(X)
        log_temperature = fit_temperature(joints, codes)
        self._set_temperature(log_temperature)
        self.calibration_ = calibration_evidence("validation rows", joints, codes, log_temperature)
        return self

    def _set_temperature(self, log_temperature: float) -> None:
        """One temperature for every member (their mean posterior is what it calibrates)."""
        with torch.no_grad():
            for member in self.members_:
                member.prior.log_temperature.fill_(log_temperature)

    # --------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike, **header: Any) -> None:
        """Write the fitted model to one safetensors file; extra ``header`` entries are stored too."""
        check_is_fitted(self, "model_")
        entries = {
            "flowgmm_version": __version__,
            "classes": self.classes_.tolist(),
            "n_labeled": self.n_labeled_,
            "n_unlabeled": self.n_unlabeled_,
            "feature_dim": int(self.n_features_in_),
            "options": TrainOptions(**self.get_params()).to_dict(),
            "resolved": self.options_.to_dict(),
            "history": self.history_,
            "calibration": self.calibration_,
            "projection_choice": self.projection_choice_,
        }
        save_model(self.members_, path, {**entries, **header})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "FlowGMMClassifier":
        """Read a model written by :meth:`save`; no code from the file is executed."""
        members, header = load_model(path, resolve_device(device))
        options = TrainOptions.from_dict(header.get("options", {}))
        estimator = cls(**{spec.name: getattr(options, spec.name) for spec in option_fields()})
        estimator.members_, estimator.model_ = members, members[0]
        classes = header["classes"]
        estimator.classes_ = np.array(classes, dtype=object if any(isinstance(c, str) for c in classes) else None)
        estimator.n_features_in_ = int(header["feature_dim"])
        estimator.options_ = TrainOptions.from_dict(header.get("resolved", {}))
        estimator.n_labeled_, estimator.n_unlabeled_ = header.get("n_labeled"), header.get("n_unlabeled")
        estimator.history_ = header.get("history", [])
        estimator.calibration_ = header.get("calibration")
        estimator.projection_choice_ = header.get("projection_choice")
        estimator.header_ = header
        return estimator


def _flat_images(X: Any) -> tuple[Any, tuple[int, int, int] | None]:
    """A ``(N, C, H, W)`` array of images as ``(N, C·H·W)`` rows and its ``(C, H, W)``; anything else unchanged."""
    if getattr(X, "ndim", None) != 4:
        return X, None
    X = np.asarray(X)
    return X.reshape(len(X), -1), tuple(int(v) for v in X.shape[1:])  # type: ignore[return-value]


_PARAM_NAMES = {spec.name for spec in option_fields()}


def _plain_default(spec) -> Any:
    """A field's default as scikit-learn wants a parameter's: a plain value (an enumeration's name)."""
    return getattr(spec.default, "value", spec.default)


def _signature() -> inspect.Signature:
    """``__init__``'s signature: one keyword parameter per option, so ``get_params``, ``clone`` and
    help() see the options as the estimator's parameters."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [
        inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=_plain_default(spec), annotation=spec.type)
        for spec in option_fields()
    ]
    return inspect.Signature(parameters)


def _arguments_doc() -> str:
    """The ``Arguments:`` section of the class docstring, from the options' help."""
    lines = ["", "    Arguments:"]
    for spec in option_fields():
        auto = spec.metadata["auto"]
        lines.append(f"        {spec.name}: {spec.metadata['help']}" + (f" Default (None): {auto}." if auto else ""))
    return "\n".join(lines) + "\n"


FlowGMMClassifier.__init__.__signature__ = _signature()  # type: ignore[attr-defined]
FlowGMMClassifier.__doc__ = (FlowGMMClassifier.__doc__ or "").replace("\n    Example:", _arguments_doc() + "\n    Example:", 1)
