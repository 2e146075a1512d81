"""Defaults of the image flow (``flow="image"``): its size, augmentation, loss and schedule.

A flow on pixels is another regime than one on feature vectors: hundreds of dimensions with
strong local structure, tens of thousands of rows, and a cost per step that the convolutions set.
The sizes fit the budget of a fit on two CPU cores (about 25 minutes for MNIST at 167 training
images/s, ``bench/image_speed.py``); every value can be overridden. They come from the paper's
code and the issue's experiment, not from a search on validation images.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .errors import OptionError
from .image_layers import max_scales
from .options import FlowKind, Scaling, TrainOptions

__all__ = [
    "IMAGE_HIDDEN", "IMAGE_BLOCKS", "IMAGE_COUPLINGS", "IMAGE_MEANS_SCALE", "IMAGE_VARIANCE", "IMAGE_CLASSIFICATION_WEIGHT",
    "IMAGE_STEPS", "IMAGE_BATCH", "default_flow", "default_translate", "resolve_image",
]  # fmt: skip

#: Channels of the s/t networks, residual blocks in each, couplings per group.
IMAGE_HIDDEN, IMAGE_BLOCKS, IMAGE_COUPLINGS = 16, 2, 3
#: Means drawn from N(0, 2² I), components of unit variance: at initialisation the flow's output
#: is far from every mean, and means this far apart keep one class from taking every image.
IMAGE_MEANS_SCALE, IMAGE_VARIANCE = 2.0, 1.0
#: Weight of the labeled cross-entropy (nats per image). With the likelihood alone the
#: unlabeled term pulled every image to the mean that started nearest (chance accuracy).
IMAGE_CLASSIFICATION_WEIGHT = 3.0
#: Steps of a default run (rounded to whole epochs), and images of each kind per step. On MNIST
#: test images FlowGMM reached 95.1% after 2,572 steps (one thread, BENCHMARKS.md).
IMAGE_STEPS, IMAGE_BATCH = 4000, 32


def default_flow(image_shape: tuple[int, int, int] | None) -> FlowKind:
    """The image flow for rows that are images (a ``(C, H, W)`` shape), the vector flow otherwise."""
    return FlowKind.image if image_shape is not None else FlowKind.vector


def default_translate(image_shape: tuple[int, int, int]) -> int:
    """Random shifts of up to a fourteenth of the shorter side (MNIST: 2 pixels, 32×32: 2).

    Example:
        >>> default_translate((1, 28, 28)), default_translate((3, 96, 96)), default_translate((1, 8, 8))
        (2, 7, 1)
    """
    return max(1, round(min(image_shape[1:]) / 14))


def resolve_image(
    options: TrainOptions, image_shape: tuple[int, int, int] | None, n_labeled: int, n_unlabeled: int, class_counts: np.ndarray | None = None
) -> TrainOptions:
    """``options`` with every ``None`` chosen for the image flow on images of ``image_shape``.

    Options of the vector flow that have no meaning on pixels (a projection, a power transform)
    are refused when given; the labeled noise is 0 (the shifts and dequantisation perturb instead).
    The temperature is not cross-fitted by default (``calibration_folds`` 0): four more fits of an
    image flow cost too much; ``--val``/``--val-fraction`` or ``flowgmm calibrate`` calibrate it.
    """
    if image_shape is None:
        raise OptionError("flow", "{option} 'image' needs rows that are images: a feature file from 'flowgmm embed --model pixels'.")
    for name in ("projection_dim", "power_transform", "square_root"):
        if getattr(options, name):
            raise OptionError(name, "{option} applies to the vector flow, not to images.")
    _, height, width = image_shape
    scales = max_scales(height, width) if options.scales is None else options.scales
    if scales > max_scales(height, width, limit=scales):
        raise OptionError("scales", f"{{option}} {scales} is more than images of {height}x{width} pixels allow ({max_scales(height, width, limit=8)}).")
    batch = IMAGE_BATCH if options.batch_size is None else options.batch_size
    labeled_batch = min(n_labeled, IMAGE_BATCH) if options.labeled_batch_size is None else options.labeled_batch_size
    steps_per_epoch = math.ceil(max(n_unlabeled, 1) / batch) if n_unlabeled else math.ceil(n_labeled / labeled_batch)

    def given(value, default):
        return default if value is None else value

    return replace(
        options,
        flow=FlowKind.image, scales=scales, coupling_layers=given(options.coupling_layers, IMAGE_COUPLINGS),
        hidden=given(options.hidden, IMAGE_HIDDEN), hidden_layers=given(options.hidden_layers, IMAGE_BLOCKS),
        means_scale=given(options.means_scale, IMAGE_MEANS_SCALE), variance=given(options.variance, IMAGE_VARIANCE),
        learn_weights=given(options.learn_weights, False), scaling=given(options.scaling, Scaling.shared),
        power_transform=False, square_root=False, projection_dim=0, unlabeled_weight=given(options.unlabeled_weight, 1.0),
        labeled_noise=given(options.labeled_noise, 0.0), perturbation=given(options.perturbation, 0.0),
        consistency_weight=given(options.consistency_weight, 0.0),
        classification_weight=given(options.classification_weight, IMAGE_CLASSIFICATION_WEIGHT),
        translate=given(options.translate, default_translate(image_shape)),
        epochs=given(options.epochs, max(1, round(IMAGE_STEPS / steps_per_epoch))),
        batch_size=batch, labeled_batch_size=labeled_batch, calibration_folds=given(options.calibration_folds, 0),
        members=given(options.members, 1),
    )  # fmt: skip
