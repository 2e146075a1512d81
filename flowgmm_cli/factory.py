"""From training rows and options to the parts of a fit: the model, its data source, its objective.

This is where the options' names meet the model's parts; :class:`~flowgmm_cli.estimator.FlowGMMClassifier`
calls these in order and the training loop runs what they return.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from .augment import ImageAugment
from .data import ShuffledSource
from .defaults import default_means_separation, default_square_root, noise_sample_rows, resolve, resolve_input
from .distributed import World
from .image_defaults import default_flow, resolve_image
from .image_layers import MultiscaleRealNVP
from .layers import FlowLayer, RealNVP
from .model import FlowGMM
from .moments import Moments
from .objective import ConsistencyNLL, LabeledCrossEntropy, LabeledNLL, Objective, UnlabeledNLL
from .options import FlowKind, Precision, Scaling, TrainOptions
from .prior import GaussianMixturePrior
from .stores import RowStore, moments_of
from .training import Schedule
from .transforms import InputNoise, PixelLogit, PrincipalProjection, SquareRoot, Standardize, TransformChain, YeoJohnson

__all__ = ["fit_input_transform", "image_transform", "build_model", "build_source", "build_objective", "build_schedule", "prepare"]


def fit_input_transform(rows: RowStore, options: TrainOptions, raw: Moments | None = None) -> TransformChain:
    """With ``options.square_root`` a square root of the features; standardisation (per feature or
    shared, as ``options.scaling`` says); with ``options.power_transform`` a Yeo-Johnson map of the
    standardised columns and a second standardisation; and, when ``options.projection_dim`` is
    positive, the principal projection. One pass over ``rows`` per standardisation, and one for
    the root's scale unless ``raw`` (the rows' moments as they are, which :func:`prepare` has when
    it chose the root) is given."""
    shared = options.scaling == Scaling.shared
    full = bool(options.projection_dim)
    parts: list = []
    if options.square_root:
        parts.append(SquareRoot.from_moments(raw if raw is not None else moments_of(rows, full=False)))
    moments = moments_of(rows, full=full and not options.power_transform, transform=TransformChain(list(parts)) if parts else None)
    parts.append(Standardize.from_moments(moments, shared_scale=shared))
    if options.power_transform:
        sample = rows.read_rows(noise_sample_rows(rows.n_rows, options.random_state, POWER_SAMPLE))
        with torch.no_grad():
            parts.append(YeoJohnson.fit(TransformChain(list(parts))(sample)[0]))
        moments = moments_of(rows, full=full, transform=TransformChain(list(parts)))
        parts.append(Standardize.from_moments(moments, shared_scale=shared))
    if options.projection_dim:
        scale = parts[-1].scale.double()
        parts.append(PrincipalProjection.from_covariance(moments.covariance / torch.outer(scale, scale), options.projection_dim))
    return TransformChain(parts)


def image_transform(rows: RowStore) -> TransformChain:
    """Pixels to logits (:class:`~flowgmm_cli.transforms.PixelLogit`), then centred per pixel and
    divided by one shared scale, so the flow starts from data about the origin and of unit size
    rather than some nats per pixel away from every class mean. One pass over ``rows``."""
    logit = PixelLogit(rows.dim)
    moments = moments_of(rows, full=False, transform=TransformChain([logit]))
    return TransformChain([logit, Standardize.from_moments(moments, shared_scale=True)])


#: Rows the Yeo-Johnson exponents are fitted on (a seeded sample of larger data).
POWER_SAMPLE = 20_000


def prepare(
    rows: RowStore, n_labeled: int, n_unlabeled: int, options: TrainOptions, class_counts: np.ndarray | None = None
) -> tuple[TransformChain, TrainOptions]:
    """The input transform fitted on every row of ``rows`` and the options with every
    data-dependent default chosen (``class_counts``: labeled rows per class). Rows that are images
    get the image flow (:func:`~flowgmm_cli.image_defaults.default_flow`) and the pixel logit transform."""
    flow = default_flow(rows.image_shape) if options.flow is None else options.flow
    if flow == FlowKind.image:
        options = resolve_image(options, rows.image_shape, n_labeled, n_unlabeled, class_counts)
        return image_transform(rows), options
    resolved = resolve_input(options, rows.dim, rows.n_rows, rows.units)
    sample = rows.read_rows(noise_sample_rows(rows.n_rows, resolved.random_state))
    raw = None
    if resolved.square_root is None:
        values = sample.numpy()
        chosen = default_square_root(resolved.scaling, float(values.min()), values)
        if chosen:  # the sample says yes: every row must agree that none is negative (the root's scale pass)
            raw = moments_of(rows, full=False)
            chosen = default_square_root(resolved.scaling, float(raw.minimum.min()), values)
        # the projection's default follows the root (default_projection_dim)
        resolved = resolve_input(replace(options, square_root=chosen), rows.dim, rows.n_rows, rows.units)
    options = resolved
    transform = fit_input_transform(rows, options, raw)
    with torch.no_grad():
        seen = transform(sample)[0].numpy()
    return transform, resolve(options, n_labeled=n_labeled, n_unlabeled=n_unlabeled, seen=seen, class_counts=class_counts)


def build_model(transform: TransformChain, n_classes: int, options: TrainOptions, image_shape: tuple[int, int, int] | None = None) -> FlowGMM:
    """Flow and mixture on the transform's output, as the resolved ``options`` describe them
    (``image_shape``: the images' ``(C, H, W)``, for the image flow)."""
    dim = transform.out_dim
    flow: FlowLayer
    if options.flow == FlowKind.image:
        flow = MultiscaleRealNVP(image_shape, options.scales, options.coupling_layers, options.hidden, options.hidden_layers, options.actnorm)
    else:
        flow = RealNVP(
            dim, options.coupling_layers, options.hidden, options.hidden_layers, options.dropout, options.actnorm,
            options.permutation.value, options.random_state,
        )  # fmt: skip
    separation = default_means_separation(dim) if options.means_scale is None else None
    prior = GaussianMixturePrior(
        n_classes, dim, 1.0 if options.means_scale is None else options.means_scale, options.variance,
        options.learn_means, options.learn_weights, options.random_state, separation,
    )  # fmt: skip
    return FlowGMM(transform, flow, prior)


def build_source(
    unlabeled: RowStore, x_labeled: Tensor, y_labeled: Tensor, model: FlowGMM, options: TrainOptions, world: World = World()
) -> ShuffledSource:
    """Batches of the rows, this process's share of the unlabeled ones; the labeled noise and the
    views' perturbation are given in the units the flow sees (:class:`~flowgmm_cli.transforms.InputNoise`).
    With the consistency term the unlabeled rows are perturbed as its second view is (they are its
    first). Images are shifted (and flipped) and dequantised instead: labeled, unlabeled and view alike."""
    if options.flow == FlowKind.image:
        augment = ImageAugment(model.flow.shape, options.translate, options.flip)
        noise, unlabeled_noise = augment, augment
        views = augment if options.consistency_weight > 0 else None
    else:
        noise = InputNoise(model.transform, options.labeled_noise) if options.labeled_noise else None
        views = InputNoise(model.transform, options.perturbation) if options.consistency_weight > 0 else None
        unlabeled_noise = views  # with the consistency term the unlabeled rows are its first view
    return ShuffledSource(
        unlabeled, x_labeled, y_labeled, options.batch_size, options.labeled_batch_size, options.random_state, noise,
        rank=world.rank, world_size=world.size, view_noise=views, unlabeled_noise=unlabeled_noise,
    )  # fmt: skip


def build_objective(model: FlowGMM, options: TrainOptions) -> Objective:
    """Equation 4: labeled NLL plus ``unlabeled_weight`` × unlabeled NLL, per feature dimension;
    with ``consistency_weight``, plus the consistency term of equation 7; with
    ``classification_weight``, plus the labeled rows' cross-entropy."""
    terms: list = [(LabeledNLL(), 1.0), (UnlabeledNLL(), options.unlabeled_weight)]
    if options.classification_weight > 0:
        terms.append((LabeledCrossEntropy(), options.classification_weight))
    if options.consistency_weight > 0:
        terms.append((ConsistencyNLL(), options.consistency_weight))
    return Objective(terms, dim=model.in_dim)


def build_schedule(options: TrainOptions) -> Schedule:
    autocast = torch.bfloat16 if options.precision == Precision.bfloat16 else None
    return Schedule(options.epochs, options.lr, options.weight_decay, options.grad_clip, options.random_state, autocast=autocast)

