"""The paper's 2-D data sets (Figure 2), generated offline from a seed."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_circles, make_moons

__all__ = ["TOY_DATASETS", "make_toy"]


def _pinwheel(n: int, rng: np.random.Generator, arms: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Spiral arms: points spread along a radius, then rotated by an angle that grows with it."""
    y = np.arange(n) % arms
    radial = rng.normal(1.0, 0.3, n)
    tangential = rng.normal(0.0, 0.05, n)
    angle = 2 * np.pi * y / arms + 0.25 * np.exp(radial)
    base = np.stack([radial, tangential], axis=1)
    rotation = np.stack([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], axis=1).reshape(n, 2, 2)
    return 2 * np.einsum("nij,nj->ni", rotation, base), y


def _eight_gaussians(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Eight small Gaussians on a circle of radius 2."""
    y = np.arange(n) % 8
    centres = 2 * np.stack([np.cos(np.pi * y / 4), np.sin(np.pi * y / 4)], axis=1)
    return centres + rng.normal(0.0, 0.2, (n, 2)), y


def make_toy(name: str, n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of one of :data:`TOY_DATASETS`; ``X`` is float32 of shape ``(n, 2)``."""
    rng = np.random.default_rng(seed)
    if name == "two-moons":
        X, y = make_moons(n, noise=0.05, random_state=seed)
    elif name == "two-circles":
        X, y = make_circles(n, noise=0.04, factor=0.5, random_state=seed)
    elif name == "pinwheel":
        X, y = _pinwheel(n, rng)
    elif name == "8-gaussians":
        X, y = _eight_gaussians(n, rng)
    else:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {TOY_DATASETS}")
    return X.astype(np.float32), y.astype(np.int64)


TOY_DATASETS = ("two-moons", "two-circles", "pinwheel", "8-gaussians")

