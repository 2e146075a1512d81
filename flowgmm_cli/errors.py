"""Errors the command line turns into exit codes: bad input (2) and failed work (1)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad usage or bad input: one sentence naming the file, row or column and the fix (exit 2)."""


class TrainingDiverged(RuntimeError):
    """Training produced a NaN or infinite loss; nothing was written (exit 1)."""
