"""Invertible layers for images and the multiscale RealNVP built from them (Dinh et al., 2016).

Image layers map ``(N, C, H, W)`` tensors to ``(y, log|det J|)`` with one log-determinant per
image, like the vector layers of :mod:`flowgmm_cli.layers`. :class:`MultiscaleRealNVP` wraps them
as a :class:`~flowgmm_cli.layers.FlowLayer` on flat rows of ``C·H·W`` values, so the input
transform, the mixture and everything downstream see an image model as a vector model of the
same dimension: the latent is every factored-out part, flattened and concatenated.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .layers import ActNorm, FlowLayer

__all__ = [
    "ConvResNet",
    "CheckerboardCoupling",
    "ChannelCoupling",
    "Squeeze",
    "ActNorm2d",
    "MultiscaleRealNVP",
    "max_scales",
    "squeeze",
    "unsqueeze",
]


def squeeze(x: Tensor) -> Tensor:
    """``(N, C, H, W)`` to ``(N, 4C, H/2, W/2)``: each 2×2 block of a channel becomes 4 channels.

    Example:
        >>> squeeze(torch.arange(16.0).reshape(1, 1, 4, 4))[0, :, 0, 0].tolist()
        [0.0, 1.0, 4.0, 5.0]
    """
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """The inverse of :func:`squeeze`."""
    n, c, h, w = x.shape
    return x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)


class ConvResNet(nn.Module):
    """The s/t network of a coupling: a 3×3 convolution to ``hidden`` channels, ``blocks``
    residual blocks of two 3×3 convolutions, and a 3×3 convolution to ``out_channels`` that starts
    at zero, so a fresh coupling is the identity. No normalisation layer: an image's output must
    not depend on the other images of its batch."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1))
            for _ in range(blocks)
        )
        self.last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.first(x)
        for block in self.blocks:
            h = h + block(h)
        return self.last(torch.relu(h)).to(x.dtype)  # under autocast: back to the flow's dtype for tanh, exp and the log-determinant


class CheckerboardCoupling(FlowLayer):
    """Affine coupling over a checkerboard: pixels where ``(i + j + parity)`` is even condition
    the others, ``y = x·exp(s) + t`` there, with ``s = tanh(·)`` bounded to [−1, 1].

    The network sees the conditioning pixels (the others zeroed); its outputs are used only where
    the mask is 0, so the Jacobian is triangular and ``log|det| = Σ s`` over those pixels.
    """

    def __init__(self, channels: int, height: int, width: int, hidden: int, blocks: int, parity: int) -> None:
        super().__init__()
        rows, cols = torch.arange(height).view(-1, 1), torch.arange(width).view(1, -1)
        self.register_buffer("mask", ((rows + cols + parity) % 2 == 0).to(torch.get_default_dtype()).expand(1, 1, height, width).clone())
        self.net = ConvResNet(channels, 2 * channels, hidden, blocks)

    def _scale_shift(self, conditioning: Tensor) -> tuple[Tensor, Tensor]:
        raw, t = self.net(conditioning).chunk(2, dim=1)
        free = 1 - self.mask
        return torch.tanh(raw) * free, t * free

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(x * self.mask)
        return x * s.exp() + t, s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self._scale_shift(y * self.mask)  # the conditioning pixels are unchanged
        return (y - t) * torch.exp(-s)


class ChannelCoupling(FlowLayer):
    """Affine coupling over channels: one half of the channels conditions the other (``flip``
    swaps the roles), with tanh-bounded log-scales."""

    def __init__(self, channels: int, hidden: int, blocks: int, flip: bool) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError("a channel coupling needs at least 2 channels")
        self.split, self.flip = channels // 2, flip
        conditioning = channels - self.split if flip else self.split
        self.net = ConvResNet(conditioning, 2 * (channels - conditioning), hidden, blocks)

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x[:, : self.split], x[:, self.split :]
        return (second, first) if self.flip else (first, second)

    def _join(self, conditioning: Tensor, free: Tensor) -> Tensor:
        return torch.cat([free, conditioning] if self.flip else [conditioning, free], dim=1)

    def _scale_shift(self, conditioning: Tensor) -> tuple[Tensor, Tensor]:
        raw, t = self.net(conditioning).chunk(2, dim=1)
        return torch.tanh(raw), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        conditioning, free = self._halves(x)
        s, t = self._scale_shift(conditioning)
        return self._join(conditioning, free * s.exp() + t), s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        conditioning, free = self._halves(y)
        s, t = self._scale_shift(conditioning)
        return self._join(conditioning, (free - t) * torch.exp(-s))


class Squeeze(FlowLayer):
    """:func:`squeeze` as a flow layer (log-determinant 0: it only moves values)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return squeeze(x), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return unsqueeze(y)


class ActNorm2d(ActNorm):
    """ActNorm per channel (Glow): ``y = (x + b_c)·exp(log s_c)``, ``log|det| = H·W·Σ log s_c``.

    Initialised from the first training batch (per-channel mean and std over images and pixels):
    the batches are seeded, so the initialisation is reproducible.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        last = x.movedim(1, -1)
        y, log_det = super().forward(last)
        return y.movedim(-1, 1), log_det.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        return super().inverse(y.movedim(1, -1)).movedim(-1, 1)


def max_scales(height: int, width: int, limit: int = 3) -> int:
    """Scales an image of this size allows: halvings while both sides stay even and at least 2
    after halving, at most ``limit``.

    Example:
        >>> max_scales(28, 28), max_scales(32, 32), max_scales(27, 27), max_scales(4, 4)
        (2, 3, 0, 1)
    """
    scales = 0
    while scales < limit and height % 2 == 0 and width % 2 == 0 and height >= 4 and width >= 4:
        height, width, scales = height // 2, width // 2, scales + 1
    return scales


class MultiscaleRealNVP(FlowLayer):
    """RealNVP for images on flat rows: each scale is ``couplings`` checkerboard couplings, a
    squeeze, ``couplings`` channel couplings, and half of the channels factored out into the
    latent; the last part is ``couplings + 1`` checkerboard couplings on what remains.

    The latent ``z`` is the factored-out parts and the last output, each flattened, in that order;
    it has as many values as the image. :meth:`inverse` splits ``z`` the same way and needs no
    forward pass.

    Arguments:
        shape: ``(C, H, W)`` of the images.
        scales: squeeze-and-factor steps; ``H`` and ``W`` must halve evenly that many times (:func:`max_scales`).
        couplings: couplings per group (see above).
        hidden: channels of the s/t networks.
        blocks: residual blocks per s/t network.
        actnorm: an :class:`ActNorm2d` before every coupling.

    Example:
        >>> flow = MultiscaleRealNVP((1, 4, 4), scales=1, couplings=2, hidden=4, blocks=1)
        >>> x = torch.randn(3, 16)
        >>> z, log_det = flow(x)
        >>> z.shape, log_det.shape, torch.allclose(flow.inverse(z), x, atol=1e-6)
        (torch.Size([3, 16]), torch.Size([3]), True)
    """

    def __init__(
        self, shape: tuple[int, int, int] | list[int], scales: int, couplings: int = 3, hidden: int = 32, blocks: int = 2,
        actnorm: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        channels, height, width = (int(v) for v in shape)
        if scales > max_scales(height, width, limit=scales):
            raise ValueError(
                f"images of {height}x{width} pixels cannot be halved {scales} times; use at most {max_scales(height, width, limit=8)} scales"
            )
        if couplings < 1:
            raise ValueError("each group needs at least one coupling")
        self.shape = (channels, height, width)
        self._spec = {"type": "multiscale-realnvp", "shape": list(self.shape), "scales": scales, "couplings": couplings,
                      "hidden": hidden, "blocks": blocks, "actnorm": actnorm}  # fmt: skip
        self.stages = nn.ModuleList()
        self.factored: list[tuple[int, int, int]] = []
        c, h, w = channels, height, width
        for _ in range(scales):
            layers = self._checkerboards(c, h, w, couplings, hidden, blocks, actnorm)
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
            for index in range(couplings):
                if actnorm:
                    layers.append(ActNorm2d(c))
                layers.append(ChannelCoupling(c, hidden, blocks, flip=index % 2 == 1))
            self.stages.append(nn.ModuleList(layers))
            self.factored.append((c // 2, h, w))
            c = c - c // 2
        self.stages.append(nn.ModuleList(self._checkerboards(c, h, w, couplings + 1, hidden, blocks, actnorm)))
        self.final_shape = (c, h, w)

    @staticmethod
    def _checkerboards(c: int, h: int, w: int, count: int, hidden: int, blocks: int, actnorm: bool) -> list[FlowLayer]:
        layers: list[FlowLayer] = []
        for index in range(count):
            if actnorm:
                layers.append(ActNorm2d(c))
            layers.append(CheckerboardCoupling(c, h, w, hidden, blocks, parity=index % 2))
        return layers

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def ordered_layers(self) -> list[FlowLayer]:
        """Every layer in the order the forward pass applies them (for feature visualisation)."""
        return [layer for stage in self.stages for layer in stage]

    def _stage_starts(self) -> list[int]:
        starts, count = [], 0
        for stage in self.stages:
            starts.append(count)
            count += len(stage)
        return starts

    def activations(self, x: Tensor, depth: int) -> tuple[Tensor, list[Tensor]]:
        """``f_{:depth}(x)``: the activation ``(N, C, H, W)`` before layer ``depth`` of :meth:`layers`
        (``len(layers())``: the flow's last output), and the parts factored out before it."""
        if not 0 <= depth <= len(self.ordered_layers()):
            raise ValueError(f"depth must lie in [0, {len(self.ordered_layers())}], got {depth}")
        h, parts, starts = x.reshape(len(x), *self.shape), [], self._stage_starts()
        for index, stage in enumerate(self.stages):
            for position, layer in enumerate(stage):
                if starts[index] + position == depth:
                    return h, parts
                h = layer(h)[0]
            if index < len(self.factored):
                parts.append(h[:, : self.factored[index][0]])
                h = h[:, self.factored[index][0] :]
        return h, parts

    def invert_activations(self, h: Tensor, parts: list[Tensor], depth: int) -> Tensor:
        """The flat rows ``x`` whose :meth:`activations` at ``depth`` are ``(h, parts)``."""
        starts = self._stage_starts()
        for index in reversed(range(len(self.stages))):
            if depth < starts[index]:
                continue
            stage = self.stages[index]
            for position in reversed(range(min(len(stage), depth - starts[index]))):
                h = stage[position].inverse(h)
            if index > 0:
                h = torch.cat([parts[index - 1], h], dim=1)
        return h.reshape(len(h), -1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.reshape(len(x), *self.shape)
        log_det = x.new_zeros(len(x))
        parts = []
        for index, stage in enumerate(self.stages):
            for layer in stage:
                h, layer_log_det = layer(h)
                log_det = log_det + layer_log_det
            if index < len(self.factored):
                out = self.factored[index][0]
                parts.append(h[:, :out].flatten(1))
                h = h[:, out:]
        parts.append(h.flatten(1))
        return torch.cat(parts, dim=1), log_det

    def inverse(self, z: Tensor) -> Tensor:
        sizes = [math.prod(shape) for shape in self.factored] + [math.prod(self.final_shape)]
        pieces = list(torch.split(z, sizes, dim=1))
        h = pieces[-1].reshape(len(z), *self.final_shape)
        for index in reversed(range(len(self.stages))):
            if index < len(self.factored):
                h = torch.cat([pieces[index].reshape(len(z), *self.factored[index]), h], dim=1)
            for layer in reversed(self.stages[index]):
                h = layer.inverse(h)
        return h.reshape(len(z), -1)

    def spec(self) -> dict[str, Any]:
        """The constructor's arguments, with ``type``, as plain JSON values."""
        return dict(self._spec)
