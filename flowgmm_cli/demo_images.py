"""The demo's image case: scikit-learn's digit images → EfficientNet-Lite0 features → FlowGMM → CSV.

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

__all__ = ["write_digit_images", "run_digit_images"]


def write_digit_images(folder: Path) -> None:
    """scikit-learn's 1,797 digits as 8x8 grey PNGs, ``folder/<class>/<index>.png``."""
    digits = load_digits()
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        (folder / str(target)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8)).save(folder / str(target) / f"{index:04d}.png")


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
