"""Feature files for `flowgmm benchmark` on the cases of BENCHMARKS.md, written outside the repository.

    python bench/make_features.py digits      # 1,297 pool / 500 test rows, 64-D (demo.digits_split, seed 0)
    python bench/make_features.py two-moons   # 1,000 pool (seed 0) / 1,000 test (seed 1) points, 2-D
    python bench/make_features.py mnist       # first 10,000 train rows / the 10,000 test rows, pixels / 255

Each writes OUT/<case>/{features.h5, labels.csv, test.h5, test_labels.csv} (OUT defaults to
/work/flowgmm-data); every pool row is labeled, and `--n-labeled` picks the labeled draw from them.
MNIST is read from ../shared/data/mnist/mnist.npz and never copied into the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from flowgmm_cli.demo import digits_split
from flowgmm_cli.features import FeatureWriter
from flowgmm_cli.toy_data import make_toy

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist" / "mnist.npz"
MNIST_POOL_ROWS = 10_000


def load_case(case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_pool, y_pool, X_test, y_test)`` of one case."""
    if case == "digits":
        X_pool, _, y_pool, X_test, y_test = digits_split(0)
        return X_pool, y_pool, X_test, y_test
    if case == "two-moons":
        return (*make_toy(case, 1000, 0), *make_toy(case, 1000, 1))
    with np.load(MNIST) as mnist:
        return _pixels(mnist["x_train"][:MNIST_POOL_ROWS]), mnist["y_train"][:MNIST_POOL_ROWS], _pixels(mnist["x_test"]), mnist["y_test"]


def _pixels(images: np.ndarray) -> np.ndarray:
    """28 x 28 uint8 images as 784 features in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255


def write_part(folder: Path, stem: str, prefix: str, X: np.ndarray, y: np.ndarray, case: str) -> None:
    """``folder/<stem>.h5`` with ids ``<prefix><row>`` and ``folder/<stem>_labels.csv`` (``labels.csv`` for the pool)."""
    ids = [f"{prefix}{i}" for i in range(len(X))]
    with FeatureWriter(folder / f"{stem}.h5", dim=X.shape[1], attrs={"extractor": "none", "model": f"bench/make_features.py {case}"}) as writer:
        writer.append(ids, X)
    labels_name = "labels.csv" if stem == "features" else f"{stem}_labels.csv"
    pd.DataFrame({"id": ids, "label": [str(v) for v in y]}).to_csv(folder / labels_name, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["digits", "two-moons", "mnist"])
    parser.add_argument("--out", type=Path, default=Path("/work/flowgmm-data"))
    args = parser.parse_args()
    folder = args.out / args.case
    folder.mkdir(parents=True, exist_ok=True)
    X_pool, y_pool, X_test, y_test = load_case(args.case)
    write_part(folder, "features", "p", X_pool, y_pool, args.case)
    write_part(folder, "test", "t", X_test, y_test, args.case)
    print(f"wrote {len(X_pool)} pool and {len(X_test)} test rows of {X_pool.shape[1]} features to {folder}/")


if __name__ == "__main__":
    main()
