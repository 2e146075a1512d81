"""Random views of images for training: translations, horizontal flips and dequantisation.

An :class:`ImageAugment` is a source's :data:`~flowgmm_cli.data.Noise`: it perturbs flat rows of
images, drawing every random number from the generator it is given, so a seeded source makes the
same views on every run and a resumed run continues them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ImageAugment"]


class ImageAugment:
    """Shift each image by up to ``translate`` pixels in each direction (zero padding, then a crop
    at a random offset), flip it left to right with probability 1/2 when ``flip``, and, with
    ``dequantize``, add uniform noise in [−1/2, 1/2) to every pixel value (the flow models a
    density, the pixels are integers).

    Example:
        >>> image = torch.zeros(1, 1, 5, 5); image[0, 0, 2, 2] = 9.0
        >>> shifted = ImageAugment((1, 5, 5), translate=1, dequantize=False)(image.flatten(1), torch.Generator().manual_seed(0))
        >>> int((shifted == 9.0).sum()), int(shifted.reshape(5, 5)[1:4, 1:4].eq(9.0).sum())
        (1, 1)
    """

    def __init__(self, shape: tuple[int, int, int], translate: int = 0, flip: bool = False, dequantize: bool = True) -> None:
        if translate < 0:
            raise ValueError(f"translate must be non-negative, got {translate}")
        self.shape, self.translate, self.flip, self.dequantize = tuple(int(v) for v in shape), int(translate), flip, dequantize

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n = len(x)
        images = x.reshape(n, *self.shape)
        if self.translate:
            images = self._translate(images, torch.randint(-self.translate, self.translate + 1, (n, 2), generator=generator))
        if self.flip:
            flipped = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            images = torch.where(flipped.view(n, 1, 1, 1), images.flip(-1), images)
        rows = images.reshape(n, -1)
        if self.dequantize:
            rows = rows + (torch.rand(rows.shape, generator=generator) - 0.5).to(x.device, x.dtype)
        return rows

    def _translate(self, images: Tensor, shifts: Tensor) -> Tensor:
        """Each image moved by its ``(down, right)`` shift; what moves in is zero."""
        t = self.translate
        _, _, height, width = images.shape
        padded = torch.nn.functional.pad(images, (t, t, t, t))
        out = torch.empty_like(images)
        for down, right in torch.unique(shifts, dim=0).tolist():
            rows = ((shifts[:, 0] == down) & (shifts[:, 1] == right)).nonzero().squeeze(1).to(images.device)
            out[rows] = padded[rows, :, t - down : t - down + height, t - right : t - right + width]
        return out
