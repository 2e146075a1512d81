"""FlowGMMClassifier: a scikit-learn estimator for semi-supervised classification (``-1`` = unlabeled)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import defaults
from .calibration import fit_temperature, tempered_log_proba
from .devices import resolve_device
from .errors import InputError
from .model import Architecture, FlowGMM, principal_directions, standardization_stats
from .modelfile import load_model, save_model
from .splits import UNLABELED
from .training import TrainingCallback, TrainingOptions, fit_flowgmm

__all__ = ["FlowGMMClassifier", "resolve_device", "UNLABELED"]

_PREDICT_CHUNK = 8192


class FlowGMMClassifier(ClassifierMixin, BaseEstimator):
    """FlowGMM (Izmailov et al., 2020): a RealNVP flow into a Gaussian mixture with one component per class.

    Fit on labeled and unlabeled rows at once by maximising their joint likelihood; predict by
    Bayes' rule in latent space. Options left at ``None`` are chosen from the data's size and
    dimension (see :mod:`flowgmm_cli.defaults`).

    Arguments:
        coupling_layers: affine coupling layers (default: 10 up to 8 features, else 8).
        hidden: width of the s/t networks (default: 512 up to 8 features, else 2·dim within [128, 512]).
        hidden_layers: hidden layers per s/t network (default: 1).
        dropout: dropout inside the s/t networks.
        actnorm: add an ActNorm layer before each coupling.
        permutation: ``"reverse"`` or ``"random"`` fixed permutations between couplings.
        means_scale: standard deviation of the fixed random class means in latent space (the
            paper's 1). Default: the means are scaled so that the closest two lie 7 component
            standard deviations apart.
        variance: variance σ² of each mixture component (default: 1.72).
        learn_means, learn_weights: train the means / the mixture weights (class imbalance).
        projection_dim: let the flow model only the top principal directions of the standardised
            features, the rest as isotropic Gaussian noise (still an exact density; see
            :class:`FlowGMM`). ``0`` turns it off; default: 32 above 64 features, else off.
        scaling: ``"feature"`` divides each standardised feature by its own standard deviation,
            ``"shared"`` by one scale for all (features in one unit: pixels, embeddings); default:
            shared above 8 features, else per feature.
        unlabeled_weight: weight of the unlabeled NLL in the loss (equation 4 uses 1; default:
            1 up to 8 features, else 0.3).
        labeled_noise: standard deviation of Gaussian noise added to standardised labeled inputs
            (default: 1.2 × the median nearest-neighbour distance per √dimension).
        epochs: passes over the unlabeled rows (default: about 3,000 optimiser steps).
        batch_size, labeled_batch_size: unlabeled and labeled rows per step.
        lr, weight_decay, grad_clip: AdamW with a cosine schedule and gradient-norm clipping.
        val_fraction: share of the labeled rows held out (stratified) to choose the best epoch.
        random_state: seed of everything random; CPU runs with one seed are repeatable.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.

    Example:
        >>> from sklearn.datasets import make_moons
        >>> X, y = make_moons(300, noise=0.05, random_state=0)
        >>> y_partial = np.full_like(y, -1); y_partial[:10] = y[:10]
        >>> clf = FlowGMMClassifier(epochs=3).fit(X, y_partial)
        >>> clf.predict_proba(X).shape
        (300, 2)
    """

    def __init__(
        self,
        coupling_layers: int | None = None,
        hidden: int | None = None,
        hidden_layers: int | None = None,
        dropout: float = 0.0,
        actnorm: bool = False,
        permutation: str = "reverse",
        means_scale: float | None = None,
        variance: float | None = None,
        learn_means: bool = False,
        learn_weights: bool = False,
        projection_dim: int | None = None,
        scaling: str | None = None,
        unlabeled_weight: float | None = None,
        labeled_noise: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        labeled_batch_size: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        grad_clip: float = 10.0,
        val_fraction: float = 0.0,
        random_state: int = 0,
        device: str = "auto",
    ) -> None:
        self.coupling_layers = coupling_layers
        self.hidden = hidden
        self.hidden_layers = hidden_layers
        self.dropout = dropout
        self.actnorm = actnorm
        self.permutation = permutation
        self.means_scale = means_scale
        self.variance = variance
        self.learn_means = learn_means
        self.learn_weights = learn_weights
        self.projection_dim = projection_dim
        self.scaling = scaling
        self.unlabeled_weight = unlabeled_weight
        self.labeled_noise = labeled_noise
        self.epochs = epochs
        self.batch_size = batch_size
        self.labeled_batch_size = labeled_batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.device = device

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
    ) -> "FlowGMMClassifier":
        """Fit on all rows of ``X``; ``y`` holds a class per row or ``-1`` for an unlabeled row.

        ``X_val``/``y_val`` (or ``val_fraction``) choose the best epoch. ``checkpoint`` saves the
        training state after each epoch; ``resume=True`` continues from it.
        """
        if isinstance(y, (list, tuple)) and any(isinstance(v, str) for v in y):
            y = np.array(list(y), dtype=object)  # keep -1 an integer beside string classes
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2, y_numeric=False)
        y = np.asarray(y, dtype=object) if y.dtype.kind in "OUS" else y
        unlabeled = _unlabeled_mask(y)
        check_classification_targets(y[~unlabeled])
        self.classes_ = np.unique(y[~unlabeled])
        if len(self.classes_) < 2:
            raise InputError(
                f"FlowGMM needs labeled rows of at least 2 classes, got {len(self.classes_)}; "
                "use -1 as the label for unlabeled samples."
            )
        codes = np.full(len(y), -1, dtype=np.int64)
        codes[~unlabeled] = np.searchsorted(self.classes_, y[~unlabeled])
        labeled_idx = np.flatnonzero(~unlabeled)
        if X_val is None and self.val_fraction > 0:
            labeled_idx, val_idx = self._split_validation(labeled_idx, codes)
            X_val_arr, val_codes = X[val_idx], codes[val_idx]
        elif X_val is not None:
            X_val_arr = validate_data(self, X_val, dtype=np.float32, reset=False)
            val_codes = self._encode(y_val)
        else:
            X_val_arr = val_codes = None

        device = resolve_device(self.device)
        torch.manual_seed(self.random_state)
        features = torch.from_numpy(X)
        mean, scale = standardization_stats(features, shared_scale=self._shared_scale(X.shape[1]))
        standardized = (features - mean) / scale  # once, for the defaults and for training
        projection_dim = self._projection_dim(X.shape[1], len(X))
        directions = residual_variance = None
        seen = standardized
        if projection_dim:
            directions, residual_variance = principal_directions(standardized, projection_dim)
            seen = standardized @ directions
        self.architecture_, self.training_options_ = self._resolve(
            X.shape[1], len(labeled_idx), int(unlabeled.sum()), seen.numpy(), projection_dim
        )
        model = FlowGMM(self.architecture_)
        model.set_standardization(mean, scale)
        if projection_dim:
            model.set_projection(directions, residual_variance)
        model.to(device)
        validation = None
        if X_val_arr is not None:
            with torch.no_grad():
                u_val = model.standardize(torch.from_numpy(np.ascontiguousarray(X_val_arr)).to(device))
            validation = (u_val, torch.from_numpy(val_codes).to(device))
        self.history_ = fit_flowgmm(
            model,
            standardized[labeled_idx].to(device),
            torch.from_numpy(codes[labeled_idx]).to(device),
            standardized[torch.from_numpy(unlabeled)].to(device),
            self.training_options_,
            validation=validation,
            checkpoint=checkpoint,
            resume=resume,
            fingerprint=fingerprint,
            callback=callback,
        )
        self.model_ = model
        return self

    def _shared_scale(self, dim: int) -> bool:
        """Whether the features share one scale: the option, else the default for ``dim``."""
        scaling = defaults.default_scaling(dim) if self.scaling is None else self.scaling
        if scaling not in ("feature", "shared"):
            raise InputError(f"scaling must be 'feature' or 'shared', not '{scaling}'.")
        return scaling == "shared"

    def _projection_dim(self, dim: int, n_rows: int) -> int | None:
        """The principal directions the flow models: the option, else the default for ``dim``."""
        if self.projection_dim is None:
            return defaults.default_projection_dim(dim, n_rows)
        if self.projection_dim == 0 or self.projection_dim >= dim:
            return None
        if self.projection_dim < 0:
            raise InputError(f"projection_dim must be 0 (off) or positive, not {self.projection_dim}.")
        return self.projection_dim

    def _resolve(
        self, dim: int, n_labeled: int, n_unlabeled: int, seen: np.ndarray, projection_dim: int | None
    ) -> tuple[Architecture, TrainingOptions]:
        """Fill the options left at ``None`` from the data's size and the dimension the flow sees
        (see :mod:`.defaults`); ``seen`` are the standardised (and projected) rows."""
        flow_dim = seen.shape[1]
        variance = defaults.DEFAULT_VARIANCE if self.variance is None else self.variance
        unlabeled_batch, labeled_batch = defaults.default_batch_sizes(n_labeled, n_unlabeled)
        batch_size = self.batch_size or unlabeled_batch
        epoch_rows, epoch_batch = (n_unlabeled, batch_size) if n_unlabeled else (n_labeled, self.labeled_batch_size or labeled_batch)
        architecture = Architecture(
            dim=dim,
            n_classes=len(self.classes_),
            coupling_layers=self.coupling_layers or defaults.default_coupling_layers(flow_dim),
            hidden=self.hidden or defaults.default_hidden(flow_dim),
            hidden_layers=self.hidden_layers or defaults.DEFAULT_HIDDEN_LAYERS,
            dropout=self.dropout,
            actnorm=self.actnorm,
            permutation=self.permutation,
            means_scale=1.0 if self.means_scale is None else self.means_scale,
            means_separation=defaults.default_means_separation(flow_dim) if self.means_scale is None else None,
            variance=variance,
            learn_means=self.learn_means,
            learn_weights=self.learn_weights,
            seed=self.random_state,
            projection_dim=projection_dim,
        )
        options = TrainingOptions(
            epochs=self.epochs or defaults.default_epochs(epoch_rows, epoch_batch),
            batch_size=batch_size,
            labeled_batch_size=self.labeled_batch_size or labeled_batch,
            lr=self.lr,
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            unlabeled_weight=defaults.default_unlabeled_weight(flow_dim) if self.unlabeled_weight is None else self.unlabeled_weight,
            labeled_noise=defaults.default_labeled_noise(seen, self.random_state) if self.labeled_noise is None else self.labeled_noise,
            seed=self.random_state,
        )
        return architecture, options

    def _split_validation(self, labeled_idx: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hold out ``val_fraction`` of each class's labeled rows, keeping at least one for training."""
        rng = np.random.default_rng(self.random_state)
        train_parts, val_parts = [], []
        for code, name in enumerate(self.classes_):
            rows = rng.permutation(labeled_idx[codes[labeled_idx] == code])
            n_val = math.ceil(self.val_fraction * len(rows))
            if n_val >= len(rows):
                raise InputError(
                    f"Class '{name}' has no labeled row left after the validation split "
                    f"({len(rows)} labeled); lower --val-fraction or label more rows of it."
                )
            val_parts.append(rows[:n_val])
            train_parts.append(rows[n_val:])
        return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))

    def _encode(self, y: Any) -> np.ndarray:
        y = np.asarray(y, dtype=object if np.asarray(y).dtype.kind in "OUS" else None)
        known = np.isin(y, self.classes_)
        if not known.all():
            raise InputError(f"Validation label '{y[~known][0]}' is not a class of the training labels {list(self.classes_)}.")
        return np.searchsorted(self.classes_, y).astype(np.int64)

    # ---------------------------------------------------------------- inference
    def joint_log_prob(self, X: Any) -> np.ndarray:
        """``log p(x, y=k)`` per row and class: the one pass that probabilities and ``log p(x)`` share."""
        check_is_fitted(self, "model_")
        return self._map_rows(validate_data(self, X, dtype=np.float32, reset=False), self.model_.joint_log_prob, len(self.classes_))

    def predict_log_proba(self, X: Any, temperature: float | None = None) -> np.ndarray:
        """``log p(y=k | x)`` per row and class, columns in the order of ``classes_``.

        At the model's own variance scale (see :meth:`calibrate`), or at ``temperature`` without
        changing the model (``temperature=1`` gives the probabilities as trained).
        """
        if temperature is None:
            joint = self.joint_log_prob(X)
            return joint - np.logaddexp.reduce(joint, axis=1, keepdims=True)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        log_weights = self.model_.prior.log_weights.detach().double().cpu().numpy()
        return tempered_log_proba(self._scaled_distances(X), log_weights, math.log(temperature))

    def predict_proba(self, X: Any) -> np.ndarray:
        """``p(y=k | x)`` per row and class, columns in the order of ``classes_``."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        joint = self.joint_log_prob(X)
        return self.classes_[np.argmax(joint, axis=1)]

    def score_samples(self, X: Any) -> np.ndarray:
        """``log p(x)`` per row under the fitted density, calibrated variance included (low values flag unusual inputs)."""
        return np.logaddexp.reduce(self.joint_log_prob(X), axis=1)

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted model; returns ``(X, y)`` like GaussianMixture."""
        Z, y = self.sample_latent(n_samples, random_state)
        return self.decode(Z), y

    # ------------------------------------------------------------- latent space
    @property
    def means_(self) -> np.ndarray:
        """The class means ``μ_k`` in latent space, shape ``(n_classes, n_features)``."""
        check_is_fitted(self, "model_")
        return self.model_.prior.means.detach().double().cpu().numpy()

    @property
    def temperature_(self) -> float:
        """The variance scale ``T`` set by :meth:`calibrate` (1 as trained): components are ``N(μ_k, σ²T I)``."""
        check_is_fitted(self, "model_")
        return float(self.model_.prior.log_temperature.exp())

    @property
    def latent_dim_(self) -> int:
        """Dimension of the latent space: the projection's (see ``projection_dim``), else the features'."""
        check_is_fitted(self, "model_")
        return self.model_.architecture.latent_dim

    def encode(self, X: Any) -> np.ndarray:
        """Latent codes ``z = f(x)`` of the rows of ``X``."""
        check_is_fitted(self, "model_")
        return self._map_rows(validate_data(self, X, dtype=np.float32, reset=False), self.model_.encode, self.latent_dim_)

    def decode(self, Z: Any) -> np.ndarray:
        """Feature-space rows ``x = f⁻¹(z)`` of latent codes ``Z`` (the inverse of :meth:`encode`)."""
        check_is_fitted(self, "model_")
        Z = check_array(Z, dtype=np.float32, ensure_min_samples=0)
        if Z.shape[1] != self.latent_dim_:
            raise ValueError(f"latent codes have {Z.shape[1]} columns but the model's latent space has {self.latent_dim_}")
        return self._map_rows(Z, self.model_.decode, self.n_features_in_)

    def sample_latent(self, n_samples: int = 1, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` latent codes from the mixture (classes drawn from its weights); returns ``(Z, y)``.

        :meth:`sample` maps the same draws to feature space.
        """
        check_is_fitted(self, "model_")
        generator = torch.Generator().manual_seed(self.random_state if random_state is None else random_state)
        Z, codes = self.model_.prior.sample(n_samples, generator=generator)
        return Z.cpu().numpy().astype(np.float64), self.classes_[codes.cpu().numpy()]

    def calibrate(self, X: Any, y: Any) -> "FlowGMMClassifier":
        """Fit the variance scale ``T`` of all components on labeled validation rows (paper, section 6.1).

        ``T`` minimises the NLL of ``y`` under ``p(y | x)``, which is temperature scaling of the class
        log-densities. As in the paper, ``T`` is the variance of the model (components
        ``N(μ_k, σ²T I)``), so from then on class probabilities, ``log p(x)`` (:meth:`score_samples`,
        ``predict``'s ``log_px``, ``evaluate --ood``) and samples all use it: one density whose class
        posterior is the calibrated one. The price of ``T > 1`` is a wider density: ``log p(x)``
        values shift, samples spread, and out-of-distribution scores separate less (digits trained
        without class 9, test 9s as outliers, three seeds: AUROC 0.83-0.90 at ``T = 1``, 0.59-0.77 at
        ``T`` ≈ 5.5); keep the uncalibrated model for those. The fit starts from the trained variance,
        so calibrating again gives the same ``T``.

        Example:
            >>> from sklearn.datasets import make_blobs
            >>> X, y = make_blobs(400, centers=2, cluster_std=3.0, random_state=0)
            >>> clf = FlowGMMClassifier(epochs=2, hidden=16, coupling_layers=2).fit(X[:200], y[:200])
            >>> clf.calibrate(X[200:], y[200:]).temperature_ != 1.0
            True
        """
        check_is_fitted(self, "model_")
        codes = self._encode(y)
        if len(np.unique(codes)) < 2:
            raise InputError(f"Calibration needs labeled rows of at least 2 classes, got only '{self.classes_[codes[0]]}'.")
        log_weights = self.model_.prior.log_weights.detach().double().cpu().numpy()
        log_temperature = fit_temperature(self._scaled_distances(X), log_weights, codes)
        with torch.no_grad():
            self.model_.prior.log_temperature.fill_(log_temperature)
        return self

    def _scaled_distances(self, X: Any) -> np.ndarray:
        """``‖f(x) − μ_k‖² / (2σ²)`` per row and class at the trained variance σ² (``T = 1``)."""
        check_is_fitted(self, "model_")
        prior = self.model_.prior
        squared = self._map_rows(
            validate_data(self, X, dtype=np.float32, reset=False), lambda x: prior.squared_distances(self.model_.encode(x)), len(self.classes_)
        )
        return squared / (2 * math.exp(float(prior.log_variance)))

    def _map_rows(self, X: np.ndarray, function: Callable[[torch.Tensor], torch.Tensor], width: int) -> np.ndarray:
        """``function`` of the model applied to ``X`` in chunks without gradients, as float64 numpy."""
        model = self.model_.eval()
        device = next(model.parameters()).device
        parts = []
        with torch.inference_mode():
            for start in range(0, len(X), _PREDICT_CHUNK):
                chunk = torch.from_numpy(np.ascontiguousarray(X[start : start + _PREDICT_CHUNK])).to(device)
                parts.append(function(chunk).double().cpu().numpy())
        return np.concatenate(parts) if parts else np.empty((0, width))

    # --------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike, **header: Any) -> None:
        """Write the fitted model to one safetensors file; extra ``header`` entries are stored too."""
        check_is_fitted(self, "model_")
        save_model(
            self.model_,
            path,
            {
                "classes": self.classes_.tolist(),
                "feature_dim": int(self.n_features_in_),
                "params": self.get_params(),
                "training": self.training_options_.to_dict(),
                **header,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "FlowGMMClassifier":
        """Read a model written by :meth:`save`; no code from the file is executed."""
        model, header = load_model(path, resolve_device(device))
        params = {k: v for k, v in header.get("params", {}).items() if k in cls._get_param_names()}
        estimator = cls(**params)
        estimator.model_ = model
        estimator.classes_ = np.array(header["classes"], dtype=object if any(isinstance(c, str) for c in header["classes"]) else None)
        estimator.n_features_in_ = int(header["feature_dim"])
        estimator.architecture_ = model.architecture
        estimator.training_options_ = TrainingOptions(**header["training"]) if "training" in header else None
        estimator.header_ = header
        return estimator


def _unlabeled_mask(y: np.ndarray) -> np.ndarray:
    """Rows marked ``-1`` (as a number or, in object arrays, the integer -1)."""
    if y.dtype == object:
        return np.array([isinstance(v, (int, np.integer)) and v == UNLABELED for v in y], dtype=bool)
    return y == UNLABELED
