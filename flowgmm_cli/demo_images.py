"""The demo's image cases: scikit-learn's digit images → EfficientNet-Lite0 features → FlowGMM → CSV,
and the same images as pixels through the image flow, with its class means and samples as images.

This is the user's main job end to end, offline: a folder of images (one sub-folder per class) is
embedded by the same extractor ``flowgmm embed --model efficientnet-lite0`` uses, FlowGMM is
trained on the pool rows with five labels per class, and the test rows' predictions are written
as CSV. The split is the one of the raw-pixel digits case, so the two accuracies compare.

The 8x8 digits are tiny for an ImageNet network, so expect its features to trail the raw pixels
here: the point is the pipeline, not the score.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from sklearn.datasets import load_digits

from .estimator import FlowGMMClassifier
from .targets import UNLABELED
from .features import read_features
from .predictions import prediction_table, write_table
from .progress import RowProgress

__all__ = ["write_digit_images", "digit_pixels", "run_digit_images", "run_digit_pixels"]

#: Steps of the demo's image flow (about 3 minutes on 2 cores). Until the data's codes reach the
#: class means (|μ| ≈ 16 at the image means scale of 2 in 64 dimensions), ``f⁻¹(μ_k)`` lies outside
#: what the flow has learnt and decodes to saturated noise: seed 0, the codes' median norm and the
#: test accuracy were 6.8 and 72% after 300 steps, 11.8 and 77% after 1,000 (means still noisy),
#: 14.3 and 88% after 1,500, whose means and samples look like digits.
DEMO_PIXEL_STEPS = 1500


def digit_pixels() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as uint8 images ``(N, 1, 8, 8)`` (0-16 scaled to 0-255) and their classes."""
    digits = load_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None], digits.target


def write_digit_images(folder: Path) -> None:
    """scikit-learn's 1,797 digits as 8x8 grey PNGs, ``folder/<class>/<index>.png``."""
    images, targets = digit_pixels()
    for index, (image, target) in enumerate(zip(images, targets)):
        (folder / str(target)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / str(target) / f"{index:04d}.png")


def run_digit_pixels(output: Path, console: Console, split: tuple, seed: int = 0) -> dict:
    """The digits' pixels through the image flow (multiscale RealNVP on 1×8×8 images), the split of
    ``split`` as in :func:`run_digit_images`; writes ``digits_pixels_predictions.csv`` and the
    class means and samples as image grids (``digits_pixels_means.png``, ``digits_pixels_samples.png``
    with their CSVs)."""
    from .visualize import Scene, render

    start = time.perf_counter()
    images, _ = digit_pixels()
    pool, partial, test, y_test = split
    steps_per_epoch = int(np.ceil((partial == UNLABELED).sum() / 32))
    model = FlowGMMClassifier(random_state=seed, device="cpu", epochs=max(1, round(DEMO_PIXEL_STEPS / steps_per_epoch))).fit(images[pool], partial)
    rows = images[test].reshape(len(test), -1)
    write_table(prediction_table(model, test.astype(str), rows), output / "digits_pixels_predictions.csv")
    scene = Scene(model, rows.astype(np.float32), test.astype(str), np.searchsorted(model.classes_, y_test), name="digits pixels", seed=seed, sample_temperature=0.7)
    plots = output / "digits_pixels"
    plots.mkdir(exist_ok=True)
    for kind in ("means", "samples"):
        render(kind, scene, plots)
    accuracy = float(model.score(images[test], y_test))
    console.print(f"digits (pixels, image flow): FlowGMM {accuracy:.3f}, means and samples in {plots} ({time.perf_counter() - start:.0f} s)")
    return {"dataset": "digits-pixels", "n_labeled": int((partial != UNLABELED).sum()), "flowgmm": accuracy}


def run_digit_images(output: Path, console: Console, split: tuple, seed: int = 0) -> dict:
    """Embed the digit images with Lite0, train FlowGMM on the pool rows of ``split``, score the test rows.

    ``split`` is ``(pool_index, partial_labels, test_index, test_labels)`` over scikit-learn's digit
    order, the same rows as the raw-pixel case; writes ``digits_lite0.h5`` and
    ``digits_lite0_predictions.csv`` in ``output``.
    """
    from extractors import EmbedRequest, get_extractor

    start = time.perf_counter()
    images = output / "digit_images"
    write_digit_images(images)
    features_path = output / "digits_lite0.h5"
    request = EmbedRequest(str(images), features_path, options={"labels_from_folders": True, "workers": 0}, console=console,
                           progress=lambda total: RowProgress(console, "embed", total))  # fmt: skip
    get_extractor("efficientnet-lite0").embed(request)
    embedded = read_features(features_path)
    # ids are "<class>/<index>": put the rows back in scikit-learn's order
    order = np.argsort([int(i.split("/")[1]) for i in embedded.ids])
    pool, partial, test, y_test = split
    X = embedded.features[order]
    model = FlowGMMClassifier(random_state=seed, device="cpu").fit(X[pool], partial)
    ids = embedded.ids[order][test]
    write_table(prediction_table(model, ids, X[test]), output / "digits_lite0_predictions.csv")
    accuracy = float(model.score(X[test], y_test))
    console.print(f"digits (EfficientNet-Lite0 features): FlowGMM {accuracy:.3f} ({time.perf_counter() - start:.0f} s)")
    return {"dataset": "digits-lite0", "n_labeled": int((partial != UNLABELED).sum()), "flowgmm": accuracy}
