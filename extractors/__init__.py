"""Feature extractors behind one small protocol, found by name in a registry.

Built-ins live in this package; other packages add extractors through the entry-point group
``flowgmm.extractors``, each entry point naming a zero-argument callable that returns an extractor.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable

from .base import EmbedRequest, Extractor, RowProgress

__all__ = ["EmbedRequest", "Extractor", "RowProgress", "get_extractor", "available_extractors", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "flowgmm.extractors"


def _builtins() -> dict[str, Callable[[], Extractor]]:
    from .image import ImageExtractor
    from .pixels import PixelsExtractor
    from .tabular import TabularExtractor
    from .text import TextExtractor

    return {
        "tabular": TabularExtractor,
        "minilm": TextExtractor.minilm,
        "bert": TextExtractor.bert,
        "efficientnet-lite0": ImageExtractor.lite0,
        "efficientnet": ImageExtractor.b0,
        "pixels": PixelsExtractor,
    }


def available_extractors() -> dict[str, Callable[[], Extractor]]:
    """Built-in extractors and those registered by installed packages, by name."""
    found = _builtins()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.load)
    return found


def get_extractor(name: str) -> Extractor:
    """The extractor called ``name``; an unknown name is a clear error listing the known ones."""
    from flowgmm_cli.errors import InputError

    known = available_extractors()
    if name not in known:
        raise InputError(f"Unknown extractor '{name}'; choose one of: {', '.join(sorted(known))}.")
    factory = known[name]
    extractor = factory()
    return extractor() if isinstance(extractor, type) else extractor
