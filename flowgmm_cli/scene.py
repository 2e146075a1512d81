"""What every ``visualize`` kind draws from: the model, the rows and the options (:class:`Scene`),
with the latent geometry the kinds share (the plane through the class means, the distance to the
decision boundary)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .estimator import FlowGMMClassifier, log_evidence

__all__ = ["MAX_POINTS", "Scene", "boundary_distance", "latent_plane"]

#: Most points a scatter plot draws (a seeded subsample beyond; labeled rows are always drawn).
MAX_POINTS = 5000
@dataclass
class Scene:
    """The model, the rows and the options every kind draws from; latent codes are computed once.

    Arguments:
        estimator: the fitted model.
        X: feature rows, shape ``(N, D)``.
        ids: row ids, shape ``(N,)``.
        y: class index of each row in ``estimator.classes_``, ``-1`` for an unlabeled row.
        name: the model's name in legends.
        compare: a second model whose distances ``distance`` overlays.
        compare_name: its name in legends.
        pair: row indices of the two ends for ``interpolation`` (default: chosen, see :func:`interpolation`).
        near: ``distance`` counts rows with ``d(x) < near``.
        seed: seed of the mixture samples and of the subsample of drawn points.
        sample_temperature: image models' ``samples``: the latent noise's scale (1: the model's density).
        layer, channel: image models' ``features``: the layer (default: the middle one) and channel perturbed.
    """

    estimator: FlowGMMClassifier
    X: np.ndarray
    ids: np.ndarray
    y: np.ndarray
    name: str = "model"
    compare: FlowGMMClassifier | None = None
    compare_name: str = "compare"
    pair: tuple[int, int] | None = None
    near: float = 5.0
    seed: int = 0
    sample_temperature: float = 1.0
    layer: int | None = None
    channel: int = 0

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.estimator.classes_]

    @property
    def labeled(self) -> np.ndarray:
        return np.flatnonzero(self.y >= 0)

    @cached_property
    def latent(self) -> np.ndarray:
        return self.estimator.encode(self.X)

    @cached_property
    def plane(self) -> tuple[np.ndarray, np.ndarray]:
        return latent_plane(self.estimator.means_, self.latent)

    @cached_property
    def joint(self) -> np.ndarray:
        """``log p(x, y=k)`` of each row and class, per member (:meth:`~flowgmm_cli.estimator.FlowGMMClassifier.member_log_joints`)."""
        return self.estimator.member_log_joints(self.X)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class index of each row."""
        return self.estimator.predicted_from_joint(self.joint)

    @property
    def log_px(self) -> np.ndarray:
        return log_evidence(self.joint)

    @cached_property
    def shown(self) -> np.ndarray:
        """Rows a scatter plot draws: all, or a seeded subsample of :data:`MAX_POINTS` plus the labeled rows."""
        if len(self.X) <= MAX_POINTS:
            return np.arange(len(self.X))
        sample = np.random.default_rng(self.seed).choice(len(self.X), MAX_POINTS, replace=False)
        return np.union1d(sample, self.labeled)

    @property
    def row_classes(self) -> np.ndarray:
        """Each row's class index: its label, or its predicted class when unlabeled."""
        return np.where(self.y >= 0, self.y, self.predicted)

    @property
    def is_image(self) -> bool:
        return self.estimator.image_shape_ is not None

    def default_pairs(self) -> list[tuple[str, int, int]]:
        """Interpolation ends: from the row of highest ``log p(x)``, the nearest row (in latent
        space) of another class, and the same-class row whose distance is most like that one's."""
        classes = self.row_classes
        candidates = self.shown
        start = candidates[np.argmax(self.log_px[candidates])]
        gaps = np.linalg.norm(self.latent[candidates] - self.latent[start], axis=1)
        other = classes[candidates] != classes[start]
        different = candidates[other][np.argmin(gaps[other])]
        same_rows = np.flatnonzero(~other & (candidates != start))
        pairs = []
        if len(same_rows):
            same = candidates[same_rows[np.argmin(np.abs(gaps[same_rows] - gaps[other].min()))]]
            pairs.append(("same class", int(start), int(same)))
        pairs.append(("different classes", int(start), int(different)))
        return pairs

    def project(self, Z: np.ndarray) -> np.ndarray:
        """Latent codes in the coordinates of :attr:`plane`, shape ``(N, 2)``."""
        origin, basis = self.plane
        return (Z - origin) @ basis.T


def boundary_distance(Z: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Distance of each latent code to the decision boundary between its two closest means (paper, section 6.2):
    ``d(x) = |‖μ′ − z‖² − ‖μ″ − z‖²| / (2‖μ′ − μ″‖)``, exact for equal weights and a shared variance.

    Example:
        >>> boundary_distance(np.array([[1.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 10.0]]))
        array([1., 1.])
    """
    squared = (Z**2).sum(1, keepdims=True) - 2 * Z @ means.T + (means**2).sum(1)
    closest = np.argsort(squared, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(Z))
    first, second = squared[rows, closest[:, 0]], squared[rows, closest[:, 1]]
    separation = np.linalg.norm(means[closest[:, 0]] - means[closest[:, 1]], axis=1)
    return np.abs(first - second) / (2 * separation)


def latent_plane(means: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origin and orthonormal axes (shape ``(2, D)``) of the plane latent plots project onto.

    The plane through the class means: the top two principal directions of the means about their
    centroid, which for up to 3 classes span exactly the plane through them. With 2 classes the
    second axis is the codes' main direction of spread orthogonal to the line through the means.
    Each axis is signed so that its largest entry is positive, for stable pictures.

    Example:
        >>> origin, axes = latent_plane(np.array([[0.0, 0, 0], [2, 0, 0], [0, 2, 0]]), np.zeros((1, 3)))
        >>> bool(np.abs(axes @ np.array([0.0, 0, 1])).max() < 1e-12)  # the plane z = 0
        True
    """
    origin = means.mean(axis=0)
    _, singular, directions = np.linalg.svd(means - origin, full_matrices=False)
    axes = directions[: min(2, int((singular > 1e-9 * max(singular.max(), 1e-300)).sum()))]
    if len(axes) < 2:
        residual = (Z - Z.mean(axis=0)) - np.outer((Z - Z.mean(axis=0)) @ axes[0], axes[0])
        spread = np.linalg.svd(residual, full_matrices=False)[2][0] if np.abs(residual).max() > 0 else _any_orthogonal(axes[0])
        axes = np.vstack([axes[0], spread - (spread @ axes[0]) * axes[0]])
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    signs = np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])
    return origin, axes * signs[:, None]


def _any_orthogonal(axis: np.ndarray) -> np.ndarray:
    """A unit vector orthogonal to ``axis`` (when the codes give no direction of spread)."""
    candidate = np.eye(len(axis))[np.abs(axis).argmin()]
    candidate = candidate - (candidate @ axis) * axis
    return candidate / np.linalg.norm(candidate)
