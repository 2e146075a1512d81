"""Plots: decision regions and data density of 2-D models (the paper's Figures 1a and 2)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .estimator import FlowGMMClassifier  # noqa: E402

__all__ = ["plot_decision_boundaries"]


def plot_decision_boundaries(
    panels: Sequence[tuple[str, FlowGMMClassifier]],
    X: np.ndarray,
    labeled: np.ndarray,
    y_labeled: np.ndarray,
    path: str | os.PathLike,
    grid: int = 200,
) -> None:
    """One panel per model: predicted regions, log-density contours, unlabeled and labeled points."""
    pad = 0.15 * (X.max(0) - X.min(0))
    lo, hi = X.min(0) - pad, X.max(0) + pad
    xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid))
    points = np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float32)
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for axis, (title, model) in zip(axes[0], panels):
        n_classes = len(model.classes_)
        colours = ListedColormap(plt.get_cmap("tab10").colors[:n_classes])
        region = np.searchsorted(model.classes_, model.predict(points)).reshape(xx.shape)
        density = model.score_samples(points).reshape(xx.shape)
        axis.contourf(xx, yy, region, levels=np.arange(n_classes + 1) - 0.5, cmap=colours, alpha=0.25)
        axis.contour(xx, yy, np.clip(density, np.percentile(density, 20), None), levels=8, colors="k", linewidths=0.4, alpha=0.5)
        axis.scatter(X[:, 0], X[:, 1], s=3, c="tab:gray", alpha=0.5, label="unlabeled")
        codes = np.searchsorted(model.classes_, y_labeled)
        axis.scatter(X[labeled, 0], X[labeled, 1], s=60, c=codes, cmap=colours, vmin=-0.5, vmax=n_classes - 0.5, marker="^", edgecolors="k", label="labeled")
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
