"""Defaults that adapt to the data: architecture, variance and schedule from its size and dimension.

The rules were chosen on validation rows (see BENCHMARKS.md), never on test rows; every value can
be overridden.
"""

from __future__ import annotations

import math

__all__ = ["default_hidden", "default_coupling_layers", "default_epochs", "default_batch_sizes"]

#: Optimiser steps a default run aims at; enough for the flow to converge on the sizes we target.
TARGET_STEPS = 1500


def default_hidden(dim: int) -> int:
    """Width of the s/t networks: 256 for small inputs, growing with the dimension up to 1024."""
    return int(min(1024, max(256, 2 ** math.ceil(math.log2(2 * dim)))))


def default_coupling_layers(dim: int) -> int:
    """Coupling layers: 6 (each feature is transformed three times)."""
    return 6


def default_batch_sizes(n_labeled: int, n_unlabeled: int) -> tuple[int, int]:
    """(unlabeled, labeled) rows per step."""
    return min(max(n_unlabeled, 1), 256), min(n_labeled, 64)


def default_epochs(n_rows_per_epoch: int, batch_size: int) -> int:
    """Epochs that give about :data:`TARGET_STEPS` steps, at least 10 and at most 2000."""
    steps_per_epoch = math.ceil(n_rows_per_epoch / max(batch_size, 1))
    return int(min(2000, max(10, round(TARGET_STEPS / steps_per_epoch))))

#: Component variance σ² (the paper uses 1).
DEFAULT_VARIANCE = 1.0
#: Standard deviation of the noise on standardised labeled inputs during training.
DEFAULT_LABELED_NOISE = 0.0


def default_means_scale(dim: int) -> float:
    """Standard deviation of the random class means (the paper draws them from N(0, I))."""
    return 1.0
