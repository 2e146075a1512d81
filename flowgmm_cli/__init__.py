"""FlowGMM: semi-supervised classification with normalizing flows, as a library and a command line."""

from __future__ import annotations

__version__ = "0.1.0"

from .estimator import FlowGMMClassifier  # noqa: E402

__all__ = ["FlowGMMClassifier", "__version__"]
