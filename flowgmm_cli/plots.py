"""Plot building blocks: class colours, decision regions and density of 2-D models (the paper's
Figures 1a and 2), and deterministic PNG output.

Figures are built as ``matplotlib.figure.Figure`` objects and written by the PNG canvas, without
pyplot: no global backend is chosen and nothing depends on a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from .atomic import atomic_path
from .estimator import FlowGMMClassifier, log_evidence

__all__ = ["Plot", "class_colours", "decision_grid", "draw_decision_panel", "plot_decision_boundaries", "save_png"]


class Plot(NamedTuple):
    """What a ``visualize`` kind produces: the figure, its numbers and one line for the user."""

    figure: Figure
    table: pd.DataFrame
    summary: str


def class_colours(n_classes: int) -> ListedColormap:
    """One distinct colour per class (tab10, tab20 beyond 10 classes, repeating beyond 20)."""
    palette = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"].colors
    return ListedColormap([palette[k % len(palette)] for k in range(n_classes)])


def decision_grid(model: FlowGMMClassifier, X: np.ndarray, grid: int = 200) -> dict[str, np.ndarray]:
    """A ``grid × grid`` lattice over ``X``'s range (padded 15%) with each point's predicted class
    index and ``log p(x)``; every entry has shape ``(grid, grid)``."""
    pad = 0.15 * (X.max(0) - X.min(0))
    lo, hi = X.min(0) - pad, X.max(0) + pad
    xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid))
    points = np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float32)
    joint = model.member_log_joints(points)
    return {
        "x0": xx,
        "x1": yy,
        "region": model.predicted_from_joint(joint).reshape(xx.shape),
        "log_px": log_evidence(joint).reshape(xx.shape),
    }


def draw_decision_panel(
    axis: Axes, model: FlowGMMClassifier, X: np.ndarray, labeled: np.ndarray, y_labeled: np.ndarray, grid: int = 200
) -> dict[str, np.ndarray]:
    """Predicted regions, log-density contours, all points and the labeled ones (triangles); returns the grid."""
    lattice = decision_grid(model, X, grid)
    n_classes = len(model.classes_)
    colours = class_colours(n_classes)
    xx, yy, density = lattice["x0"], lattice["x1"], lattice["log_px"]
    axis.contourf(xx, yy, lattice["region"], levels=np.arange(n_classes + 1) - 0.5, cmap=colours, alpha=0.25)
    axis.contour(xx, yy, np.clip(density, np.percentile(density, 20), None), levels=8, colors="k", linewidths=0.4, alpha=0.5)
    axis.scatter(X[:, 0], X[:, 1], s=3, c="tab:gray", alpha=0.5, label="unlabeled")
    codes = np.searchsorted(model.classes_, y_labeled)
    axis.scatter(X[labeled, 0], X[labeled, 1], s=60, c=codes, cmap=colours, vmin=-0.5, vmax=n_classes - 0.5, marker="^", edgecolors="k", label="labeled")
    axis.set_xticks([])
    axis.set_yticks([])
    return lattice


def plot_decision_boundaries(
    panels: Sequence[tuple[str, FlowGMMClassifier]],
    X: np.ndarray,
    labeled: np.ndarray,
    y_labeled: np.ndarray,
    path: str | os.PathLike,
    grid: int = 200,
) -> None:
    """One panel per model: predicted regions, log-density contours, unlabeled and labeled points."""
    figure = Figure(figsize=(5 * len(panels), 4.6))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, (title, model) in zip(axes[0], panels):
        draw_decision_panel(axis, model, X, labeled, y_labeled, grid)
        axis.set_title(title)
    figure.tight_layout()
    save_png(figure, path)


def save_png(figure: Figure, path: str | os.PathLike, dpi: int = 90) -> None:
    """Write ``figure`` as PNG atomically; no time stamp or version in the file, so the same figure
    gives the same bytes."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
