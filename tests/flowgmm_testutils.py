"""Helpers shared by the tests (imported as ``flowgmm_testutils``; conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import torch


def perturb_(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Add Gaussian noise to every parameter in place.

    The last linear layer of every coupling network starts at zero, so a fresh coupling is the
    identity; perturbing makes Jacobian and gradient checks meaningful.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.add_(scale * noise.to(parameter.dtype))
    return module


def state_equal(a: dict, b: dict) -> bool:
    """Two state dicts with the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
