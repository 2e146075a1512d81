"""A fitted model applied to rows in blocks, without gradients, so that a row's result never
depends on the rows predicted with it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .model import FlowGMM

__all__ = ["map_rows", "joint"]

#: Rows per inference block; image models use blocks of exactly :data:`IMAGE_CHUNK` rows (:func:`map_rows`).
PREDICT_CHUNK = 8192
IMAGE_CHUNK = 128


def map_rows(model: FlowGMM, X: np.ndarray, function: Callable[[Any, torch.Tensor], torch.Tensor], width: int) -> np.ndarray:
    """``function(model, rows)`` on ``X`` in blocks, without gradients, as numpy; each row's result
    does not depend on the rows beside it in a block.

    Vector models run on a float64 copy (float32 matrix products round differently for different
    batch shapes, by about 1e-7 relative). Image models run in float32, in blocks of exactly
    :data:`IMAGE_CHUNK` rows (the last one padded): convolutions in float64 are ten times slower
    on CPU, and with one block shape each image's result is the same whatever its neighbours.
    """
    image = getattr(model.flow, "shape", None) is not None
    dtype, chunk = (torch.float32, IMAGE_CHUNK) if image else (torch.float64, PREDICT_CHUNK)
    model = copy.deepcopy(model).to(dtype).eval()
    device = next(model.parameters()).device
    parts = []
    with torch.inference_mode():
        for start in range(0, len(X), chunk):
            block = torch.from_numpy(np.ascontiguousarray(X[start : start + chunk])).to(device, dtype)
            rows = len(block)
            if image and rows < chunk:
                block = torch.cat([block, block.new_zeros(chunk - rows, *block.shape[1:])])
            parts.append(function(model, block)[:rows].to(torch.float64).cpu().numpy())
    return np.concatenate(parts) if parts else np.empty((0, width))


def joint(model: FlowGMM, x: torch.Tensor) -> torch.Tensor:
    """``log p(x, y=k)`` per row and class, for :func:`map_rows`."""
    return model(x)
