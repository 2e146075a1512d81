"""FlowGMM: semi-supervised classification with normalizing flows, as a library and a command line."""

from __future__ import annotations

from ._version import __version__

__all__ = ["FlowGMMClassifier", "__version__"]


def __getattr__(name: str):
    """Import the estimator (torch, scikit-learn) on first use, so ``flowgmm embed`` and ``--help`` start fast."""
    if name == "FlowGMMClassifier":
        from .estimator import FlowGMMClassifier

        return FlowGMMClassifier
    raise AttributeError(f"module 'flowgmm_cli' has no attribute '{name}'")
