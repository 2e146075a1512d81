"""The model file: tensors in safetensors, everything else in a JSON header; loading runs no code.

The header's ``members`` entry lists each model's composition spec (:meth:`FlowGMM.spec`; one
for a single model, several for a seed ensemble), so any transform, flow and prior that
:class:`FlowGMM` can build is read back without special cases; member ``i``'s tensors are named
``members.i.*``. Files of format versions 1 (one fixed architecture) and 2 (one ``model``) are
upgraded when read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .atomic import atomic_path
from .errors import InputError, describe
from .model import FlowGMM

__all__ = ["FORMAT_VERSION", "save_model", "load_model", "read_header"]

FORMAT_VERSION = 3
_HEADER_KEY = "flowgmm"
#: The first byte of a pickle (protocol 2 and later).
_PICKLE_PROTO = b"\x80"


def save_model(members: Sequence[FlowGMM], path: str | os.PathLike, header: dict[str, Any]) -> None:
    """Write the ``members`` (one model, or a seed ensemble's) and ``header`` (class names,
    extractor, training options…) atomically.

    The entries that describe the models themselves (format, compositions, temperature) are taken
    from ``members`` and win over stale copies in ``header``, so re-saving a loaded model's header is safe.
    """
    own = {
        "format": "flowgmm",
        "format_version": FORMAT_VERSION,
        "members": [member.spec() for member in members],
        "temperature": float(members[0].prior.log_temperature.exp()),
    }
    full_header = {**own, **{key: value for key, value in header.items() if key not in own}}
    tensors = {f"members.{i}.{name}": tensor.detach().cpu().contiguous() for i, member in enumerate(members) for name, tensor in member.state_dict().items()}
    text = json.dumps(full_header)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_HEADER_KEY: text})
        if _first_byte(tmp) == _PICKLE_PROTO:
            # The file starts with its header's length; a low byte of 0x80 would make it look like a
            # pickle to anything that sniffs the first byte. Eight spaces (JSON whitespace) change it.
            save_file(tensors, str(tmp), metadata={_HEADER_KEY: text + " " * 8})


def _first_byte(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(1)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a model file (upgraded to the current format), without building the model."""
    with _open(path) as handle:
        header = _header(handle, path)
    try:
        return _upgrade(header, {})[0]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise _damaged(path, error) from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[list[FlowGMM], dict[str, Any]]:
    """Rebuild the models from a file written by :func:`save_model`; returns ``(members, header)``."""
    with _open(path) as handle:
        header = _header(handle, path)
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    try:
        header, tensors = _upgrade(header, tensors)
        specs = header["members"]
        if not isinstance(specs, list) or not specs:
            raise ValueError("no members")
        members = [FlowGMM.from_spec(spec) for spec in specs]
        unclaimed = set(tensors)
        for i, member in enumerate(members):
            prefix = f"members.{i}."
            own = {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
            missing = sorted(set(member.state_dict()) - set(own))
            if missing:
                raise ValueError(f"member {i + 1} of {len(members)} lacks {len(missing)} of its tensors, '{missing[0]}' first")
            member.load_state_dict(own, strict=True)
            unclaimed -= {prefix + name for name in own}
        if unclaimed:
            raise ValueError(f"tensors of no member: {sorted(unclaimed)[:3]}")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise _damaged(path, error) from None
    return [member.to(device).eval() for member in members], header


def _damaged(path: str | os.PathLike, error: BaseException) -> InputError:
    return InputError(f"Model file '{path}' is damaged or from an incompatible version ({describe(error)}); train it again.")


def _open(path: str | os.PathLike):
    file = Path(path)
    if not file.is_file():
        raise InputError(f"Model file '{file}' does not exist; train one with 'flowgmm train'.")
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"'{file}' is not a flowgmm model file (it is not in safetensors format: {error}).") from None


def _header(handle, path: str | os.PathLike) -> dict[str, Any]:
    metadata = handle.metadata() or {}
    try:
        header = json.loads(metadata[_HEADER_KEY])
    except (KeyError, json.JSONDecodeError):
        raise InputError(f"'{path}' is a safetensors file but not a flowgmm model (no flowgmm header).") from None
    if not isinstance(header, dict) or not isinstance(header.get("format_version", 0), int):
        raise InputError(f"'{path}' has a damaged flowgmm header; train the model again.")
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"Model file '{path}' has format version {header['format_version']}; upgrade flowgmm to read it.")
    if not _is_calibration_entry(header.get("calibration")):
        raise InputError(f"'{path}' has a damaged flowgmm header (its 'calibration' entry); train the model again.")
    if not _is_projection_choice(header.get("projection_choice")):
        raise InputError(f"'{path}' has a damaged flowgmm header (its 'projection_choice' entry); train the model again.")
    return header


def _is_calibration_entry(entry: object) -> bool:
    """Whether a header's ``calibration`` entry is absent or what ``train``/``calibrate`` write:
    an object whose counts and rates, where present, are numbers (``info`` formats them)."""
    if entry is None:
        return True
    numbers = ("n", "accuracy", "standard_error", "temperature")
    return isinstance(entry, dict) and all(isinstance(entry[key], (int, float)) and not isinstance(entry[key], bool) for key in numbers if key in entry)


def _is_projection_choice(entry: object) -> bool:
    """Whether a header's ``projection_choice`` entry is absent or what ``train`` writes: ``sizes``
    (integers), ``held_out_nll`` and ``standard_error`` (numbers), one of each per size."""
    if entry is None:
        return True
    if not isinstance(entry, dict) or not isinstance(entry.get("sizes"), list):
        return False
    lists = [entry["sizes"], entry.get("held_out_nll"), entry.get("standard_error")]
    kinds = (int, (int, float), (int, float))
    return all(
        isinstance(values, list) and len(values) == len(entry["sizes"]) and all(isinstance(v, kind) and not isinstance(v, bool) for v in values)
        for values, kind in zip(lists, kinds)
    )


def _upgrade(header: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A version-1 or version-2 header and tensors in today's layout; others unchanged."""
    if header.get("format_version") == 1 and "architecture" in header:
        header, tensors = _upgrade_one(header, tensors)
    if header.get("format_version") == 2 and "model" in header:
        upgraded = {key: value for key, value in header.items() if key != "model"}
        upgraded.update(format_version=FORMAT_VERSION, members=[header["model"]])
        return upgraded, {f"members.0.{name}": tensor for name, tensor in tensors.items()}
    return header, tensors


def _upgrade_one(header: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A version-1 header and tensors (one fixed architecture) in the layout of version 2 (one ``model``)."""
    a = header["architecture"]
    latent = a.get("projection_dim") or a["dim"]
    transforms = [{"type": "standardize", "dim": a["dim"]}]
    renames = {"feature_mean": "transform.layers.0.mean", "feature_scale": "transform.layers.0.scale"}
    if a.get("projection_dim"):
        transforms.append({"type": "projection", "dim": a["dim"], "k": latent})
        renames.update(projection="transform.layers.1.directions", log_residual_variance="transform.layers.1.log_residual_variance")
    spec = {
        "transform": {"type": "chain", "transforms": transforms},
        "flow": {"type": "realnvp", "dim": latent, **{k: a[k] for k in ("coupling_layers", "hidden", "hidden_layers", "dropout", "actnorm", "permutation", "seed")}},
        "prior": {"type": "gaussian-mixture", "n_classes": a["n_classes"], "dim": latent, "separation": a.get("means_separation"),
                  **{k: a[k] for k in ("means_scale", "variance", "learn_means", "learn_weights", "seed")}},
    }  # fmt: skip
    upgraded = {key: value for key, value in header.items() if key not in ("architecture", "params", "training")}
    upgraded.update(format_version=2, model=spec, options=header.get("params", {}), resolved=header.get("training", {}))
    return upgraded, {renames.get(name, name): tensor for name, tensor in tensors.items()}
