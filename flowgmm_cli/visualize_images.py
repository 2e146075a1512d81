"""Plots of image models (paper, sections 6.2-6.3 and Appendix I): class means and samples as
images, latent interpolation strips, and feature visualisation by inverting perturbed activations.

Each kind takes the :class:`~flowgmm_cli.scene.Scene` of an image model and returns a
:class:`~flowgmm_cli.plots.Plot` (an image grid, the numbers behind it, a summary line).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from .estimator import log_evidence
from .plots import Plot
from .scene import Scene

__all__ = ["image_means", "image_samples", "image_interpolation", "features", "feature_problem", "FEATURE_ALPHAS", "FEATURE_IMAGES"]

#: Perturbations of a channel, in its standard deviations, and the images they are applied to.
FEATURE_ALPHAS = np.linspace(-4.0, 4.0, 9)
FEATURE_IMAGES = 16
#: Images on which ``features`` measures a channel's standard deviation (over images and positions).
SIGMA_IMAGES = 64
#: Samples per class in ``samples``.
SAMPLES_PER_CLASS = 10
#: Images along each interpolation strip.
INTERPOLATION_STRIP = 11


def _pixels(rows: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Flat rows of pixel values as displayable images ``(N, H, W)`` or ``(N, H, W, C)`` in [0, 1]."""
    images = np.clip(np.asarray(rows, dtype=np.float64).reshape(len(rows), *shape), 0, 255) / 255
    return images[:, 0] if shape[0] == 1 else images[:, :3].transpose(0, 2, 3, 1)


def _grid(figure: Figure, rows: np.ndarray, shape: tuple[int, int, int], n_cols: int, row_names: list[str], col_names: list[str] | None = None) -> None:
    """Images in a grid of ``n_cols`` columns, drawn as one mosaic (one axis: fast for hundreds of
    images), rows and columns named on the axis ticks."""
    images = _pixels(rows, shape)
    n_rows = int(np.ceil(len(images) / n_cols))
    height, width, gap = shape[1], shape[2], 1
    mosaic = np.ones((n_rows * (height + gap) - gap, n_cols * (width + gap) - gap, *images.shape[3:]))
    for index, image in enumerate(images):
        top, left = (index // n_cols) * (height + gap), (index % n_cols) * (width + gap)
        mosaic[top : top + height, left : left + width] = image
    axis = figure.subplots()
    axis.imshow(mosaic, cmap="gray" if images.ndim == 3 else None, vmin=0, vmax=1, interpolation="nearest")
    axis.set_yticks([r * (height + gap) + height / 2 - 0.5 for r in range(min(n_rows, len(row_names)))], row_names[:n_rows], fontsize=8)
    if col_names is not None:
        axis.set_xticks([c * (width + gap) + width / 2 - 0.5 for c in range(n_cols)], col_names, fontsize=8)
        axis.xaxis.tick_top()
    else:
        axis.set_xticks([])
    axis.tick_params(length=0)


def image_means(scene: Scene) -> Plot:
    """``f⁻¹(μ_k)`` of each class as an image (Appendix I), with its class as the model predicts it."""
    shape = scene.estimator.image_shape_
    decoded = scene.estimator.decode(scene.estimator.means_)
    predicted = scene.estimator.predicted_from_joint(scene.estimator.member_log_joints(decoded))
    n = len(decoded)
    figure = Figure(figsize=(1.2 * min(n, 10), 1.4 * int(np.ceil(n / 10))))
    _grid(figure, decoded, shape, min(n, 10), [], [f"{name}" for name in scene.classes[: min(n, 10)]] if n <= 10 else None)
    figure.suptitle(f"{scene.name}: class means as images, f⁻¹(μ_k)", fontsize=9)
    table = pd.DataFrame(decoded, columns=[f"x{d}" for d in range(decoded.shape[1])])
    table.insert(0, "class", scene.classes)
    table.insert(1, "predicted", np.array(scene.classes, dtype=object)[predicted])
    own = int(np.sum(predicted == np.arange(n)))
    return Plot(figure, table, f"{n} class means as {'x'.join(map(str, shape))} images; {own} classified as their own class")


def image_samples(scene: Scene) -> Plot:
    """Class-conditional samples, one row per class: ``f⁻¹(μ_k + τσε)`` at the scene's sampling
    temperature ``τ`` (1: the model's own density; lower values give cleaner, less varied images)."""
    estimator, shape = scene.estimator, scene.estimator.image_shape_
    prior = estimator.model_.prior
    n_classes = len(scene.classes)
    generator = torch.Generator().manual_seed(scene.seed)
    codes = np.repeat(np.arange(n_classes), SAMPLES_PER_CLASS)
    noise = torch.randn(len(codes), prior.dim, generator=generator, dtype=torch.float64).numpy()
    std = float(np.exp(0.5 * float(prior.log_variance)))
    Z = estimator.means_[codes] + scene.sample_temperature * std * noise
    rows = estimator.decode(Z)
    joint = estimator.member_log_joints(rows)
    figure = Figure(figsize=(1.0 * SAMPLES_PER_CLASS, 1.0 * n_classes + 0.5))
    _grid(figure, rows, shape, SAMPLES_PER_CLASS, scene.classes)
    figure.suptitle(f"{scene.name}: samples per class at temperature {scene.sample_temperature:g}", fontsize=9)
    names = np.array(scene.classes, dtype=object)
    predicted = estimator.predicted_from_joint(joint)
    table = pd.DataFrame({"class": names[codes], "predicted": names[predicted], "log_px": log_evidence(joint)})
    agree = float(np.mean(predicted == codes))
    return Plot(figure, table, f"{len(codes)} samples at temperature {scene.sample_temperature:g}; {agree:.0%} classified as the class they were drawn from")


def image_interpolation(scene: Scene) -> Plot:
    """Strips of images along latent segments between two images of one class and of two classes,
    ``f⁻¹((1 − α) z_i + α z_j)``, with ``log p(x)`` of each (Figures 3a, 3b)."""
    estimator, shape = scene.estimator, scene.estimator.image_shape_
    pairs = [("pair", *scene.pair)] if scene.pair is not None else scene.default_pairs()
    alpha = np.linspace(0.0, 1.0, INTERPOLATION_STRIP)
    figure = Figure(figsize=(1.0 * len(alpha), 1.6 * len(pairs) + 1.8))
    grid_figure, curve_figure = figure.subfigures(2, 1, height_ratios=[1.2 * len(pairs), 1.8])
    strips, parts, dips = [], [], []
    curve_axis = curve_figure.subplots()
    for (name, i, j), colour in zip(pairs, ("tab:blue", "tab:red")):
        Z = np.outer(1 - alpha, scene.latent[i]) + np.outer(alpha, scene.latent[j])
        rows = estimator.decode(Z)
        joint = estimator.member_log_joints(rows)
        log_px = log_evidence(joint)
        below_chord = (1 - alpha) * log_px[0] + alpha * log_px[-1] - log_px
        dips.append(f"{name} {below_chord.max():.3g}")
        strips.append(rows)
        curve_axis.plot(alpha, log_px, color=colour, marker=".", label=f"{name}: {scene.ids[i]} -> {scene.ids[j]}")
        parts.append(pd.DataFrame({"pair": name, "from_id": scene.ids[i], "to_id": scene.ids[j], "alpha": alpha, "log_px": log_px,
                                   "below_chord": below_chord, "predicted": np.array(scene.classes, dtype=object)[estimator.predicted_from_joint(joint)]}))  # fmt: skip
    _grid(grid_figure, np.concatenate(strips), shape, len(alpha), [name for name, _, _ in pairs], [f"α={a:.2f}" for a in alpha])
    curve_axis.set_xlabel("α along the latent segment")
    curve_axis.set_ylabel("log p(x)")
    curve_axis.legend(fontsize=8)
    figure.suptitle(f"{scene.name}: latent interpolation", fontsize=9)
    return Plot(figure, pd.concat(parts, ignore_index=True), "deepest log p(x) valley below the chord between the ends, in nats: " + ", ".join(dips))


def _feature_depth(scene: Scene) -> int:
    return len(scene.estimator.model_.flow.ordered_layers()) // 2 if scene.layer is None else scene.layer


def feature_problem(scene: Scene) -> str | None:
    """Why ``features`` cannot be drawn with the scene's layer and channel (one sentence), or ``None``."""
    flow = scene.estimator.model_.flow
    depth, layers = _feature_depth(scene), len(flow.ordered_layers())
    if depth > layers:
        return f"the model has {layers} layers; choose --layer in [0, {layers}]"
    with torch.inference_mode():
        probe = next(scene.estimator.model_.parameters()).new_zeros(1, flow.dim)
        channels = flow.activations(probe, depth)[0].shape[1]
    if scene.channel >= channels:
        return f"layer {depth} has {channels} channels; choose --channel in [0, {channels - 1}]"
    return None


def features(scene: Scene) -> Plot:
    """Feature visualisation (section 6.3, Figure 3d): ``x(α) = f⁻¹_{:ℓ}(f_{:ℓ}(x) + α σ_c δ_c)``
    for layer ``ℓ`` (``scene.layer``), channel ``c`` (``scene.channel``) and the values of
    :data:`FEATURE_ALPHAS`, on the first :data:`FEATURE_IMAGES` images. ``σ_c`` is the channel's
    standard deviation over positions and up to :data:`SIGMA_IMAGES` of the scene's images. No optimisation: one pass forward
    and one back, in float32."""
    estimator, shape = scene.estimator, scene.estimator.image_shape_
    model = estimator.model_
    flow = model.flow
    depth = _feature_depth(scene)
    device = next(model.parameters()).device
    with torch.inference_mode():
        measured = torch.from_numpy(np.ascontiguousarray(scene.X[scene.shown[:SIGMA_IMAGES]], dtype=np.float32)).to(device)
        h_all, _ = flow.activations(model.transform(measured)[0], depth)
        sigma = float(h_all[:, scene.channel].std())
        images = torch.from_numpy(np.ascontiguousarray(scene.X[: FEATURE_IMAGES], dtype=np.float32)).to(device)
        h, parts = flow.activations(model.transform(images)[0], depth)
        rows = []
        for a in FEATURE_ALPHAS:
            moved = h.clone()
            moved[:, scene.channel] += float(a) * sigma
            rows.append(model.transform.inverse(flow.invert_activations(moved, parts, depth)))
        grid = torch.stack(rows, dim=1).reshape(len(images) * len(FEATURE_ALPHAS), -1).cpu().numpy()
    figure = Figure(figsize=(1.0 * len(FEATURE_ALPHAS), 1.0 * len(images) + 0.5))
    _grid(figure, grid, shape, len(FEATURE_ALPHAS), [str(i) for i in scene.ids[: len(images)]], [f"α={a:g}" for a in FEATURE_ALPHAS])
    figure.suptitle(f"{scene.name}: layer {depth}, channel {scene.channel} (σ = {sigma:.3g})", fontsize=9)
    original = scene.X[: len(images)].astype(np.float64)
    change = np.abs(grid.reshape(len(images), len(FEATURE_ALPHAS), -1) - original[:, None, :]).mean(axis=2)
    table = pd.DataFrame({"id": np.repeat(scene.ids[: len(images)], len(FEATURE_ALPHAS)), "alpha": np.tile(FEATURE_ALPHAS, len(images)),
                          "mean_abs_pixel_change": change.ravel(), "layer": depth, "channel": scene.channel, "sigma": sigma})  # fmt: skip
    return Plot(figure, table, f"layer {depth} of {len(flow.ordered_layers())}, channel {scene.channel}: {len(images)} images x {len(FEATURE_ALPHAS)} values of α")
