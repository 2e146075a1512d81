"""The image-feature cases of BENCHMARKS.md: EfficientNet-Lite0 features of digit and MNIST images.

    python bench/image_features.py digits            # scikit-learn's 1,797 digits: 1,297 pool / 500 test (seed 7)
    python bench/image_features.py mnist             # MNIST train rows 50,000-52,999 / test rows 5,000-5,999
    python bench/image_features.py digits --validation   # also a stratified split of the pool (seed 11)
    flowgmm benchmark OUT/digit-images/pool.h5 --test OUT/digit-images/test.h5 --n-labeled 100 --threads 1

Neither case is in the suite (no default was chosen on them): they check the defaults from
outside on features a pretrained CNN writes (pooled ReLU activations, 1,280-D). Each writes the
images as PNG folders, one per class, and embeds them with `flowgmm embed --model
efficientnet-lite0 --labels-from-folders`, so the feature files carry /labels; OUT defaults to
/work/flowgmm-data. `--validation` writes `vpool.h5` / `val.h5` (300 held-out rows for digits,
600 for MNIST) with label CSVs, for choosing settings without the test rows. Embedding runs at
about 15-20 images/s on one CPU core. MNIST is read from ../shared/data/mnist/mnist.npz and never
copied into the repository; the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

from flowgmm_cli.demo import digits_rows
from flowgmm_cli.demo_images import digit_pixels
from flowgmm_cli.features import FeatureWriter, read_features

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist" / "mnist.npz"
#: case → (folder under OUT, validation rows held out of the pool)
CASES = {"digits": ("digit-images", 300), "mnist": ("mnist-images", 600)}
SPLIT_SEED = 7
VALIDATION_SEED = 11


def case_images(case: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{"pool": (images, classes, source row numbers), "test": ...}``, images as ``(N, H, W)`` uint8."""
    if case == "digits":
        images, classes = digit_pixels()
        return {part: (images[rows, 0], classes[rows], rows) for part, rows in zip(("pool", "test"), digits_rows(SPLIT_SEED))}
    if not MNIST.exists():
        raise SystemExit(f"{MNIST} is not here; the MNIST-image case needs shared/data.")
    with np.load(MNIST) as mnist:
        pool, test = np.arange(50_000, 53_000), np.arange(5_000, 6_000)
        return {"pool": (mnist["x_train"][pool], mnist["y_train"][pool], pool), "test": (mnist["x_test"][test], mnist["y_test"][test], test)}


def write_images(folder: Path, images: np.ndarray, classes: np.ndarray, rows: np.ndarray) -> None:
    """One grey PNG per image, ``folder/<class>/<row>.png``."""
    for image, label, row in zip(images, classes, rows):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{row:05d}.png")


def embed(images: Path, out: Path) -> None:
    """``flowgmm embed`` with EfficientNet-Lite0 on CPU, labels from the class folders."""
    command = [sys.executable, "-m", "flowgmm_cli", "embed", str(images), "-o", str(out), "--model", "efficientnet-lite0", "--labels-from-folders", "--device", "cpu"]
    subprocess.run(command, check=True)


def write_validation(folder: Path, held_out: int) -> None:
    """``vpool.h5`` and ``val.h5`` (with ``_labels.csv`` beside each): ``held_out`` rows of the pool, stratified."""
    features = read_features(folder / "pool.h5")
    classes = np.asarray(features.labels)
    rest, held = train_test_split(np.arange(len(classes)), test_size=held_out, stratify=classes, random_state=VALIDATION_SEED)
    for part, rows in (("vpool", np.sort(rest)), ("val", np.sort(held))):
        with FeatureWriter(folder / f"{part}.h5", features.dim, dict(features.attrs)) as writer:
            writer.append(features.ids[rows], np.asarray(features.features)[rows])
        pd.DataFrame({"id": features.ids[rows], "label": classes[rows]}).to_csv(folder / f"{part}_labels.csv", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=list(CASES))
    parser.add_argument("--out", type=Path, default=Path("/work/flowgmm-data"))
    parser.add_argument("--validation", action="store_true", help="also write the validation split of the pool")
    args = parser.parse_args()
    name, held_out = CASES[args.case]
    folder = args.out / name
    for part, (images, classes, rows) in case_images(args.case).items():
        if not (folder / f"{part}.h5").exists():
            write_images(folder / "images" / part, images, classes, rows)
            embed(folder / "images" / part, folder / f"{part}.h5")
    if args.validation:
        write_validation(folder, held_out)
    print(f"wrote {folder}/pool.h5 and test.h5" + (" and the validation split (vpool.h5, val.h5)" if args.validation else ""))


if __name__ == "__main__":
    main()
