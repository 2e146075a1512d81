"""Model analysis plots (paper, section 6): one function per kind, each returning a figure, the table
of numbers behind it and a one-line summary; :func:`render` writes ``<kind>.png`` and ``<kind>.csv``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from .estimator import log_evidence
from .metrics import expected_calibration_error, reliability_bins
from .plots import Plot, class_colours, draw_decision_panel, save_png
from .predictions import write_table
from .scene import MAX_POINTS, Scene, boundary_distance, latent_plane
from .visualize_images import feature_problem, features, image_interpolation, image_means, image_samples

__all__ = ["KINDS", "IMAGE_KINDS", "MAX_POINTS", "Scene", "Plot", "boundary_distance", "latent_plane", "unavailable", "render"]

#: Points along each interpolation segment.
INTERPOLATION_STEPS = 41


def _feature_plane(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature coordinates as they are for 2-D data, else the data's top two principal directions."""
    if X.shape[1] == 2:
        return np.zeros(2), np.eye(2)
    origin = X.mean(axis=0)
    return origin, np.linalg.svd(X - origin, full_matrices=False)[2][:2]


# ----------------------------------------------------------------------------------- the kinds
def boundary(scene: Scene) -> Plot:
    """2-D features: data, labeled points, decision regions and log p(x) contours (Figures 1a, 2)."""
    figure = Figure(figsize=(5.5, 5))
    axis = figure.subplots()
    labeled = scene.labeled
    lattice = draw_decision_panel(axis, scene.estimator, scene.X, labeled, scene.estimator.classes_[scene.y[labeled]])
    axis.set_title(f"{scene.name}: decision regions and log p(x)")
    _class_legend(axis, scene.classes)
    figure.tight_layout()
    table = pd.DataFrame(
        {
            "x0": lattice["x0"].ravel(),
            "x1": lattice["x1"].ravel(),
            "predicted": np.array(scene.classes, dtype=object)[lattice["region"].ravel()],
            "log_px": lattice["log_px"].ravel(),
        }
    )
    side = lattice["x0"].shape[0]
    return Plot(figure, table, f"decision regions and log p(x) on a {side}x{side} grid over {len(scene.X)} rows ({len(labeled)} labeled)")


def latent(scene: Scene) -> Plot:
    """Latent codes in the plane through the class means, coloured by predicted class, labeled rows
    as triangles, each component's 2-standard-deviation circle (Figure 1b)."""
    P = scene.project(scene.latent)
    means = scene.project(scene.estimator.means_)
    figure = Figure(figsize=(5.5, 5))
    axis = figure.subplots()
    _scatter_classes(axis, P[scene.shown], scene.predicted[scene.shown], len(scene.classes), size=4, alpha=0.5)
    _mark_labeled(axis, P, scene)
    _draw_means(axis, means, scene)
    axis.set_aspect("equal", adjustable="datalim")
    axis.set_title(f"{scene.name}: latent codes, plane through the means")
    _class_legend(axis, scene.classes)
    figure.tight_layout()
    table = pd.DataFrame(
        {"id": scene.ids, "u": P[:, 0], "v": P[:, 1], "predicted": _names(scene, scene.predicted), "label": _names(scene, scene.y)}
    )
    agree = float(np.mean(scene.predicted[scene.labeled] == scene.y[scene.labeled])) if len(scene.labeled) else float("nan")
    note = f", labeled rows on their class's side: {agree:.1%}" if len(scene.labeled) else ""
    return Plot(figure, table, f"{len(P)} latent codes projected on the plane through {len(means)} class means{note}")


def samples(scene: Scene) -> Plot:
    """Draws from the mixture in latent space and mapped back to feature space (Figures 1c, 1d);
    features of more than 2 dimensions are shown on the data's top two principal directions."""
    n = min(2000, 200 * len(scene.classes))
    Z, drawn = scene.estimator.sample_latent(n, random_state=scene.seed)
    codes = np.searchsorted(scene.estimator.classes_, drawn)
    X_drawn = scene.estimator.decode(Z)
    origin, axes = _feature_plane(scene.X)
    latent_points, feature_points = scene.project(Z), (X_drawn - origin) @ axes.T
    data_latent, data_features = scene.project(scene.latent[scene.shown]), (scene.X[scene.shown] - origin) @ axes.T
    figure = Figure(figsize=(10.5, 5))
    left, right = figure.subplots(1, 2)
    for axis, data, points, title in (
        (left, data_latent, latent_points, "latent space: samples z ~ mixture"),
        (right, data_features, feature_points, "feature space: f⁻¹(z)" + ("" if scene.X.shape[1] == 2 else ", top 2 principal directions")),
    ):
        axis.scatter(data[:, 0], data[:, 1], s=3, c="tab:gray", alpha=0.3, label="data")
        _scatter_classes(axis, points, codes, len(scene.classes), size=5, alpha=0.7)
        axis.set_title(title)
    _class_legend(right, scene.classes)
    figure.tight_layout()
    table = pd.DataFrame(
        {
            "class": _names(scene, codes),
            "latent_u": latent_points[:, 0],
            "latent_v": latent_points[:, 1],
            "feature_u": feature_points[:, 0],
            "feature_v": feature_points[:, 1],
        }
    )
    return Plot(figure, table, f"{n} samples from the mixture and their images f^-1(z)")


def distance(scene: Scene) -> Plot:
    """Histogram of the distance to the decision boundary d(x) (section 6.2, Figure 3c), a second model overlaid."""
    mine = boundary_distance(scene.latent, scene.estimator.means_)
    curves = [(scene.name, mine)]
    if scene.compare is not None:
        other = scene.compare_name if scene.compare_name != scene.name else f"{scene.compare_name} (compared)"
        curves.append((other, boundary_distance(scene.compare.encode(scene.X), scene.compare.means_)))
    edges = np.histogram_bin_edges(np.concatenate([values for _, values in curves]), bins=40)
    figure = Figure(figsize=(6.5, 4.5))
    axis = figure.subplots()
    for (name, values), colour in zip(curves, ("tab:blue", "tab:orange")):
        axis.hist(values, bins=edges, alpha=0.55, color=colour, label=f"{name}: {int(np.sum(values < scene.near))} rows with d < {scene.near:g}")
    axis.axvline(scene.near, color="k", linestyle="--", linewidth=0.8)
    axis.set_xlabel("distance to the decision boundary in latent space, d(x)")
    axis.set_ylabel("rows")
    axis.legend()
    figure.tight_layout()
    table = pd.DataFrame({"id": scene.ids, "distance": mine})
    if scene.compare is not None:
        table["compare_distance"] = curves[1][1]
    counts = ", ".join(f"{name} {int(np.sum(values < scene.near))}" for name, values in curves)
    median = np.median(mine)
    return Plot(figure, table, f"rows of {len(scene.X)} with d(x) < {scene.near:g}: {counts}; median d(x) {median:.3g}")


def reliability(scene: Scene) -> Plot:
    """Reliability diagrams of the labeled rows, accuracy against confidence in 15 bins: at
    temperature 1 (as trained) and, beside it, at the model's calibrated temperature."""
    rows = scene.labeled
    X, y = scene.X[rows], scene.y[rows]
    temperature = scene.estimator.temperature_
    curves = {"before": (1.0, scene.estimator.predict_log_proba(X, temperature=1.0))}
    if temperature != 1.0:
        curves["after"] = (temperature, scene.estimator.predict_log_proba(X))
    figure = Figure(figsize=(4.8 * len(curves), 4.8))
    axes = figure.subplots(1, len(curves), squeeze=False)
    parts, eces = [], {}
    for axis, (curve, (scale, log_proba)) in zip(axes[0], curves.items()):
        proba = np.exp(log_proba)
        bins = pd.DataFrame(reliability_bins(proba, y))
        eces[curve] = expected_calibration_error(proba, y)
        filled = bins[bins["count"] > 0]
        width = filled["upper"] - filled["lower"]
        axis.bar(filled["lower"], filled["accuracy"], width=width, align="edge", color="tab:blue", edgecolor="k", linewidth=0.5, label="accuracy")
        low = np.minimum(filled["confidence"], filled["accuracy"])
        axis.bar(filled["lower"], np.abs(filled["confidence"] - filled["accuracy"]), bottom=low, width=width, align="edge",
                 color="tab:red", alpha=0.3, edgecolor="tab:red", linewidth=0.5, label="gap to confidence")  # fmt: skip
        axis.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{curve}: scale {scale:.3g}, ECE {eces[curve]:.4f}")
        axis.legend(loc="upper left", fontsize=8)
        parts.append(bins.assign(curve=curve, temperature=scale))
    figure.suptitle(f"{scene.name}: reliability on {len(rows)} labeled rows")
    figure.tight_layout()
    table = pd.concat(parts, ignore_index=True)[["curve", "temperature", "lower", "upper", "count", "confidence", "accuracy"]]
    if "after" in eces:
        summary = f"ECE {eces['before']:.4f} at scale 1 -> {eces['after']:.4f} at scale {temperature:.3g} on {len(rows)} labeled rows"
    else:
        summary = f"ECE {eces['before']:.4f} on {len(rows)} labeled rows; the model is not calibrated ('flowgmm calibrate' adds the after diagram)"
    return Plot(figure, table, summary)


def interpolation(scene: Scene) -> Plot:
    """log p(x) along latent segments z(α) = (1 − α) z_i + α z_j mapped back by f⁻¹ (Figures 3a, 3b).

    Default pairs (:meth:`Scene.default_pairs`): from the row of highest ``log p(x)``, the nearest
    row (in latent space) of another class, and the same-class row whose distance is most like
    that one's, so the two segments have about the same length and differ only in crossing a class boundary. A row's
    class is its label, or its predicted class when unlabeled. The summary gives each path's
    deepest drop below the chord between its end values: a valley, whatever the ends' densities.
    """
    pairs = [("pair", *scene.pair)] if scene.pair is not None else scene.default_pairs()
    alpha = np.linspace(0.0, 1.0, INTERPOLATION_STEPS)
    figure = Figure(figsize=(6.5, 4.5))
    axis = figure.subplots()
    parts, dips = [], []
    for (name, i, j), colour in zip(pairs, ("tab:blue", "tab:red")):
        Z = np.outer(1 - alpha, scene.latent[i]) + np.outer(alpha, scene.latent[j])
        joint = scene.estimator.member_log_joints(scene.estimator.decode(Z))
        log_px = log_evidence(joint)
        below_chord = (1 - alpha) * log_px[0] + alpha * log_px[-1] - log_px
        dips.append(f"{name} {below_chord.max():.3g}")
        axis.plot(alpha, log_px, color=colour, marker=".", label=f"{name}: {scene.ids[i]} -> {scene.ids[j]}")
        parts.append(pd.DataFrame({"pair": name, "from_id": scene.ids[i], "to_id": scene.ids[j], "alpha": alpha, "log_px": log_px,
                                   "below_chord": below_chord, "predicted": _names(scene, scene.estimator.predicted_from_joint(joint))}))  # fmt: skip
    axis.set_xlabel("α along the latent segment")
    axis.set_ylabel("log p(x)")
    axis.set_title(f"{scene.name}: latent interpolation")
    axis.legend()
    figure.tight_layout()
    return Plot(figure, pd.concat(parts, ignore_index=True), "deepest log p(x) valley below the chord between the ends, in nats: " + ", ".join(dips))


def means(scene: Scene) -> Plot:
    """The class means mapped back to feature space, f⁻¹(μ_k), as a table and a heat-map (Appendix I)."""
    decoded = scene.estimator.decode(scene.estimator.means_)
    predicted = scene.estimator.predicted_from_joint(scene.estimator.member_log_joints(decoded))
    figure = Figure(figsize=(min(14.0, 4 + 0.15 * decoded.shape[1]), 1.5 + 0.4 * len(decoded)))
    axis = figure.subplots()
    image = axis.imshow(decoded, aspect="auto", cmap="viridis", interpolation="nearest")
    axis.set_yticks(np.arange(len(decoded)), scene.classes)
    axis.set_xlabel("feature")
    axis.set_ylabel("class")
    axis.set_title(f"{scene.name}: class means in feature space, f⁻¹(μ_k)")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    table = pd.DataFrame(decoded, columns=[f"x{d}" for d in range(decoded.shape[1])])
    table.insert(0, "class", scene.classes)
    table.insert(1, "predicted", _names(scene, predicted))
    own = int(np.sum(predicted == np.arange(len(decoded))))
    return Plot(figure, table, f"{len(decoded)} class means mapped to {decoded.shape[1]} features; {own} classified as their own class")


KINDS: dict[str, Callable[[Scene], Plot]] = {
    "boundary": boundary,
    "latent": latent,
    "samples": samples,
    "distance": distance,
    "reliability": reliability,
    "interpolation": interpolation,
    "means": means,
    "features": features,
}
#: Kinds drawn otherwise for image models: as images.
IMAGE_KINDS: dict[str, Callable[[Scene], Plot]] = {"samples": image_samples, "interpolation": image_interpolation, "means": image_means}


def unavailable(kind: str, scene: Scene) -> str | None:
    """Why ``kind`` cannot be drawn for ``scene`` (one sentence), or ``None`` when it can."""
    if kind == "features":
        return "'features' needs an image model (the image flow)" if not scene.is_image else feature_problem(scene)
    if kind == "boundary" and scene.X.shape[1] != 2:
        return f"'boundary' needs 2-dimensional features, these have {scene.X.shape[1]}"
    if kind == "reliability" and len(scene.labeled) == 0:
        return "'reliability' needs labeled rows; pass --labels"
    if kind == "interpolation" and scene.pair is None and len(np.unique(scene.row_classes[scene.shown])) < 2:
        return "'interpolation' needs rows of 2 classes, or --pair ID1 ID2"
    return None


def render(kind: str, scene: Scene, folder: str | os.PathLike) -> str:
    """Draw ``kind`` and write ``FOLDER/<kind>.png`` and ``FOLDER/<kind>.csv``; returns the summary."""
    plot = (IMAGE_KINDS if scene.is_image and kind in IMAGE_KINDS else KINDS)[kind](scene)
    save_png(plot.figure, Path(folder) / f"{kind}.png")
    write_table(plot.table, Path(folder) / f"{kind}.csv")
    return plot.summary


# --------------------------------------------------------------------------------------- helpers
def _names(scene: Scene, codes: np.ndarray) -> np.ndarray:
    """Class names of class indices, '' for -1."""
    names = np.array([*scene.classes, ""], dtype=object)
    return names[np.where(codes >= 0, codes, len(scene.classes))]


def _scatter_classes(axis, points: np.ndarray, codes: np.ndarray, n_classes: int, size: float, alpha: float) -> None:
    axis.scatter(points[:, 0], points[:, 1], s=size, c=codes, cmap=class_colours(n_classes), vmin=-0.5, vmax=n_classes - 0.5, alpha=alpha)


def _mark_labeled(axis, P: np.ndarray, scene: Scene) -> None:
    rows = scene.labeled
    if len(rows):
        n = len(scene.classes)
        axis.scatter(P[rows, 0], P[rows, 1], s=60, c=scene.y[rows], cmap=class_colours(n), vmin=-0.5, vmax=n - 0.5, marker="^", edgecolors="k")


def _draw_means(axis, means: np.ndarray, scene: Scene) -> None:
    """Each mean as a black cross with its class name and the 2-standard-deviation circle of its
    component (a projection of an isotropic Gaussian onto orthonormal axes keeps its variance)."""
    radius = 2 * np.sqrt(np.exp(float(scene.estimator.model_.prior.log_variance)))
    for (u, v), name in zip(means, scene.classes):
        axis.add_patch(Circle((u, v), radius, fill=False, color="k", linewidth=0.6, alpha=0.6))
        axis.scatter([u], [v], marker="x", s=60, c="k")
        axis.annotate(name, (u, v), textcoords="offset points", xytext=(5, 5), fontsize=9)


def _class_legend(axis, classes: list[str]) -> None:
    """A legend of class colours (at most 20 entries), plus labeled-row triangles."""
    colours = class_colours(len(classes))
    handles = [Line2D([], [], marker="o", linestyle="", color=colours(k), label=name) for k, name in enumerate(classes[:20])]
    handles.append(Line2D([], [], marker="^", linestyle="", color="w", markeredgecolor="k", label="labeled"))
    axis.legend(handles=handles, fontsize=7, loc="best", framealpha=0.7)
