"""Choosing the torch device from a --device option."""

from __future__ import annotations

import torch

from .errors import OptionError

__all__ = ["resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise OptionError("device", f"Unknown {{option}} '{device}'; use auto, cpu, cuda or cuda:N.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", f"Device '{device}' was asked for but CUDA is not available; use {{option}} cpu.")
    return resolved
