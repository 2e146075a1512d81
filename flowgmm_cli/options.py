"""Training options, declared once: the estimator's parameters, the CLI's flags and help, the model header.

Each field of :class:`TrainOptions` carries its help text, its help panel, its bounds and, when
its default is chosen from the data, a short description of that rule (``auto``). ``None`` means
"choose from the data" (see :func:`flowgmm_cli.defaults.resolve`); every other value, 0 included,
is used as given.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from .errors import OptionError

__all__ = ["Scaling", "Permutation", "FlowKind", "Precision", "Panel", "TrainOptions", "option_fields"]


class Scaling(str, Enum):
    """How centred inputs are scaled: by each feature's standard deviation, or by one scale for all."""

    feature = "feature"
    shared = "shared"


class Permutation(str, Enum):
    """What sits between two couplings: a reversal of the features, or a fixed random permutation."""

    reverse = "reverse"
    random = "random"


class FlowKind(str, Enum):
    """The flow: couplings on feature vectors, or the multiscale convolutional flow on pixels."""

    vector = "vector"
    image = "image"


class Precision(str, Enum):
    """The arithmetic of the image flow's convolutions in training: float32, or bfloat16 under autocast."""

    float32 = "float32"
    bfloat16 = "bfloat16"


class Panel(str, Enum):
    """The groups of ``flowgmm train --help``."""

    data = "Data"
    model = "Model"
    loss = "Loss"
    optimisation = "Optimisation"
    runtime = "Runtime"


def _option(default: Any, panel: Panel, help: str, *, auto: str | None = None, min: float | None = None,
            max: float | None = None, above: float | None = None, flag: str | None = None) -> Any:  # fmt: skip
    """A field with what the estimator's docstring, the CLI and the checks need to know about it.

    ``min``/``max`` are inclusive bounds; ``above`` is an exclusive lower bound; ``flag`` is the
    CLI name when it differs from the field's (``random_state`` is ``--seed``).
    """
    metadata = {"panel": panel, "help": help, "auto": auto, "min": min, "max": max, "above": above, "flag": flag}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainOptions:
    """Every setting of a FlowGMM fit; ``None`` fields are chosen from the data.

    Example:
        >>> TrainOptions(hidden_layers=0).hidden_layers
        0
        >>> TrainOptions(dropout=1.5)
        Traceback (most recent call last):
        ...
        flowgmm_cli.errors.OptionError: dropout must be at most 0.9, got 1.5.
    """

    # model
    flow: FlowKind | None = _option(None, Panel.model, "The flow: 'image' (multiscale RealNVP on pixels: checkerboard and channel couplings with convolutional s/t networks, squeezes, factored-out channels) or 'vector' (couplings on feature vectors).", auto="image for files of uint8 images (the pixels extractor), else vector")
    coupling_layers: int | None = _option(None, Panel.model, "Affine coupling layers (image flow: couplings per group of each scale).", auto="10 up to 8 features or from 100 rows per feature (the flow's, after any projection), else 8; images 3", min=1)
    hidden: int | None = _option(None, Panel.model, "Width of the s/t networks (image flow: their channels).", auto="512 up to 8 features or from 100 rows per feature, else 2*dim in [128, 512]; images 16", min=1)
    hidden_layers: int | None = _option(None, Panel.model, "Hidden layers per s/t network (0: one linear map; image flow: residual blocks).", auto="1; images 2", min=0)
    scales: int | None = _option(None, Panel.model, "Image flow: squeeze-and-factor-out steps, each halving the image's side.", auto="as many as the side halves evenly (to at least 2 pixels), at most 3: MNIST 2", min=0)
    dropout: float = _option(0.0, Panel.model, "Dropout inside the s/t networks.", min=0.0, max=0.9)
    actnorm: bool = _option(False, Panel.model, "ActNorm before each coupling.")
    permutation: Permutation = _option(Permutation.reverse, Panel.model, "Between couplings: reverse the features, or a fixed random permutation.")
    means_scale: float | None = _option(None, Panel.model, "Std of the fixed random class means (paper: 1).", auto="closest means 7 std apart; images 2", min=0.0)
    variance: float | None = _option(None, Panel.model, "Variance of each mixture component.", auto="1.72; images 1", above=0.0)
    learn_means: bool = _option(False, Panel.model, "Train the class means with the flow.")
    learn_weights: bool | None = _option(None, Panel.model, "Train the mixture weights on all rows: the class shares of the data, which a draw of so many labels per class does not show (off: equal weights, as the paper).", auto="on for tables (columns in their own units), off for embeddings and pixels")
    scaling: Scaling | None = _option(None, Panel.model, "Divide the centred inputs by each feature's std, or by one scale for all (pixels, embeddings).", auto="the file's units: tables per feature, embeddings and pixels shared; unknown: shared above 8 features")
    power_transform: bool | None = _option(None, Panel.model, "A Yeo-Johnson map of each standardised feature, its exponent fitted by likelihood, for skewed and heavy-tailed columns (its log-derivative is in log p(x)).", auto="on for tables (columns in their own units), off for embeddings and pixels")
    square_root: bool | None = _option(None, Panel.model, "A square root of each feature before the scaling (offset at zero, sign kept; its log-derivative is in log p(x)): evens out features that pile up at zero with a long right tail, such as pooled CNN activations and counts.", auto="on where the features share one scale, none is negative and the positive values trail off longer than an exponential's (pooled CNN activations, counts; not pixels), else off")
    members: int | None = _option(None, Panel.model, "Flows fitted with seeds SEED, SEED+1, ... on the same rows; their class probabilities are averaged at one temperature, and log p(x) is their mixture's. Each member costs one fit.", auto="3 for 5 or more classes, else 1 (the image flow: 1)", min=1)
    projection_dim: int | None = _option(None, Panel.model, "Flow on this many principal directions, the rest as Gaussian noise (0: all features).", auto="above 64 features: 128 for square-rooted features (pooled CNN activations); else 32 or 64, whichever the calibration fits' held-out labels favour (32 without calibration fits); at most rows - 1; else 0", min=0)
    # loss
    unlabeled_weight: float | None = _option(None, Panel.loss, "Weight of the unlabeled NLL in the loss.", auto="1 up to 8 features, else 0.3; images 1", min=0.0)
    labeled_noise: float | None = _option(None, Panel.loss, "Std of Gaussian noise on standardised labeled inputs.", auto="1.2 x median neighbour distance / sqrt(dim); images 0", min=0.0)
    classification_weight: float | None = _option(None, Panel.loss, "Weight of the labeled rows' cross-entropy -log p(y|x), in nats per row, beside the likelihood (the paper's code: 3); 0: off.", auto="1 for tables (columns in their own units), 3 for the image flow, 0 for embeddings and pixels as vectors", min=0.0)
    consistency_weight: float | None = _option(None, Panel.loss, "Weight of the consistency term (FlowGMM-cons, paper eq. 7): -log p(x'|y'') for two noisy views of each unlabeled row (the row as the likelihood sees it, and one more), ramped up over the first half of training; 0: off.", auto="3 for feature vectors, 0 for images", min=0.0)
    perturbation: float | None = _option(None, Panel.loss, "Std of the Gaussian noise that makes the two views, on standardised inputs.", auto="half the labeled noise on dense data above 8 features, else the labeled noise", min=0.0)
    translate: int | None = _option(None, Panel.loss, "Image flow: shift training images and the consistency views by up to this many pixels (zero padding; 0: none).", auto="a fourteenth of the shorter side: MNIST 2", min=0)
    flip: bool = _option(False, Panel.loss, "Image flow: flip training images and views left to right at random (natural images; leave off for digits and text).")
    # optimisation
    epochs: int | None = _option(None, Panel.optimisation, "Passes over the unlabeled rows.", auto="about 3,000 steps; images about 4,000", min=1)
    batch_size: int | None = _option(None, Panel.optimisation, "Unlabeled rows per step.", auto="256; images 32", min=1)
    labeled_batch_size: int | None = _option(None, Panel.optimisation, "Labeled rows per step.", auto="64; images 32", min=1)
    lr: float = _option(1e-3, Panel.optimisation, "AdamW learning rate (cosine schedule to 0).", above=0.0)
    weight_decay: float = _option(1e-4, Panel.optimisation, "AdamW weight decay.", min=0.0)
    grad_clip: float = _option(10.0, Panel.optimisation, "Clip the gradient norm to this (0: no clipping).", min=0.0)
    calibration_folds: int | None = _option(None, Panel.loss, "Short fits that each hide one fold of the labels; the temperature T of the class probabilities (section 6.1) is fitted on their held-out rows so they are calibrated (0: T = 1, as trained). Each runs a sixth of the model's steps, but at least 250 (500 behind a principal projection) or, for a shorter model, as many as it. With 2 or more CPU threads they run in worker processes beside the model's fit. With validation rows (--val, --val-fraction) T is fitted on them instead.", auto="4; 0 when no class has 2 labeled rows; images 0", min=0)
    # data
    val_fraction: float = _option(0.0, Panel.data, "Hold out this share of each class's labeled rows to choose the best epoch.", min=0.0, max=0.9)
    # runtime
    random_state: int = _option(0, Panel.runtime, "Seed of the means, the weights' init, batches and noise.", flag="seed")
    device: str = _option("auto", Panel.runtime, "auto (CUDA when available), cpu, cuda or cuda:N.")
    precision: Precision = _option(Precision.float32, Panel.runtime, "Image flow, training only: 'bfloat16' runs the s/t networks' convolutions in bfloat16 under autocast (mixed precision, for GPUs with bfloat16 support); log-determinants, the mixture and the weights stay float32, and predictions are unchanged.")

    def __post_init__(self) -> None:
        for spec in option_fields():
            value = getattr(self, spec.name)
            if isinstance(value, np.generic):  # numpy scalars become plain Python values (JSON-ready)
                value = value.item()
                object.__setattr__(self, spec.name, value)
            if value is None:
                if spec.metadata["auto"] is None and spec.default is not None:
                    raise OptionError(spec.name, f"{{option}} has no automatic value; give one (default {_plain(spec.default)}).")
            elif spec.name in _ENUMS:
                _coerce_enum(self, spec, value)
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                _check_bounds(spec, value)

        if self.calibration_folds == 1:
            raise OptionError("calibration_folds", "{option} must be 0 (no calibration) or at least 2, got 1.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (enumerations as their names), for the model header."""
        return {name: _plain(value) for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainOptions":
        """Options from :meth:`to_dict`'s output; unknown keys (from another version) are ignored."""
        known = {spec.name for spec in option_fields()}
        return cls(**{name: value for name, value in values.items() if name in known})


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def option_fields() -> tuple[dataclasses.Field, ...]:
    """The fields of :class:`TrainOptions`, in declaration order."""
    return dataclasses.fields(TrainOptions)


_ENUMS = {"permutation": Permutation, "scaling": Scaling, "flow": FlowKind, "precision": Precision}


def _coerce_enum(options: TrainOptions, spec: dataclasses.Field, value: Any) -> None:
    """Accept an enumeration's member or its name (``"shared"``); anything else names the choices."""
    if value is None:
        return
    kind = _ENUMS[spec.name]
    try:
        member = kind(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise OptionError(spec.name, f"{{option}} must be one of {choices}, got {value!r}.") from None
    object.__setattr__(options, spec.name, member)


def _check_bounds(spec: dataclasses.Field, value: float) -> None:
    meta = spec.metadata
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(spec.name, f"{{option}} must be a finite number, got {value}.")
    if meta["min"] is not None and value < meta["min"]:
        raise OptionError(spec.name, f"{{option}} must be at least {meta['min']}, got {value}.")
    if meta["above"] is not None and value <= meta["above"]:
        raise OptionError(spec.name, f"{{option}} must be greater than {meta['above']}, got {value}.")
    if meta["max"] is not None and value > meta["max"]:
        raise OptionError(spec.name, f"{{option}} must be at most {meta['max']}, got {value}.")
