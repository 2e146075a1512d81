"""Mean and covariance of rows seen block by block, in float64, merged exactly (Chan et al., 1979).

The input transform's statistics come from here whether the rows are in memory (one block) or
streamed from a feature file (one block per chunk), so both paths share one computation; merging
centred blocks avoids the cancellation of ``E[x²] − E[x]²`` on features with a large mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Moments"]


class Moments:
    """Running count, mean, least value and centred co-moment matrix of the rows passed to
    :meth:`update` (only its diagonal with ``full=False``, for when no covariance is needed).

    Example:
        >>> x = torch.randn(100, 3, dtype=torch.float64) * 5 + 1e6
        >>> moments = Moments(3)
        >>> for block in x.split(7):
        ...     moments.update(block)
        >>> torch.allclose(moments.covariance, torch.cov(x.T, correction=0))
        True
    """

    def __init__(self, dim: int, full: bool = True) -> None:
        self.count, self.full = 0, full
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.minimum = torch.full((dim,), torch.inf, dtype=torch.float64)
        self._comoment = torch.zeros((dim, dim) if full else (dim,), dtype=torch.float64)

    def update(self, block: Tensor) -> None:
        """Add the rows of ``block`` (any float dtype)."""
        rows = block.detach().to("cpu", torch.float64)
        n = rows.shape[0]
        if n == 0:
            return
        block_mean = rows.mean(dim=0)
        centred = rows - block_mean
        total = self.count + n
        delta = block_mean - self.mean
        if self.full:
            self._comoment += centred.T @ centred + torch.outer(delta, delta) * (self.count * n / total)
        else:
            self._comoment += centred.pow(2).sum(dim=0) + delta.pow(2) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.minimum = torch.minimum(self.minimum, rows.amin(dim=0))
        self.count = total

    @property
    def covariance(self) -> Tensor:
        """The population covariance (divided by the count), float64."""
        if not self.full:
            raise ValueError("these moments keep only the variances; use Moments(dim, full=True)")
        return self._checked() / self.count

    @property
    def variance(self) -> Tensor:
        """The population variance of each feature, float64."""
        comoment = self._checked()
        return (comoment.diagonal() if self.full else comoment).clamp_min(0) / self.count

    def _checked(self) -> Tensor:
        if self.count == 0:
            raise ValueError("no rows were added")
        return self._comoment
