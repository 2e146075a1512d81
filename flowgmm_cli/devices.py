"""Choosing the torch device from a --device option."""

from __future__ import annotations

import torch

from .errors import InputError, OptionError

__all__ = ["require_gpus", "resolve_device"]


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


def require_gpus(device: torch.device, processes: int, gpus_needed: int) -> None:
    """Refuse, before any process starts, a CUDA run of several processes with too few GPUs:
    each process takes the GPU of its local rank, so ``gpus_needed`` (the highest local rank + 1)
    must be visible."""
    if device.type == "cuda" and processes > 1 and gpus_needed > torch.cuda.device_count():
        raise InputError(
            f"{processes} processes on CUDA need a GPU each, but {torch.cuda.device_count()} are visible; use fewer processes or --device cpu."
        )
