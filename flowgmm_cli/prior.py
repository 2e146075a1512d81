"""Latent Gaussian mixture with one isotropic component per class, in closed form."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GaussianMixturePrior"]


class GaussianMixturePrior(nn.Module):
    """``p(z) = Σ_k π_k N(z | μ_k, σ² I)``, and class probabilities at a calibration temperature ``T``
    (1 until calibrated).

    The log-density uses ``‖z − μ_k‖²`` directly (no covariance matrix, no Cholesky) and
    ``logsumexp`` over classes. Means are drawn once from ``N(0, means_scale² I)`` (the best
    separated of a few draws, which matters only in low dimension) and stay fixed unless
    ``learn_means``; mixture weights are uniform unless ``learn_weights``.

    Arguments:
        n_classes: number of components, one per class.
        dim: latent dimension.
        means_scale: standard deviation of the random means (the paper uses 1).
        variance: component variance σ² (the paper uses 1).
        learn_means: train the means with the flow.
        learn_weights: train the mixture weights (helps with class imbalance).
        seed: seed of the means' draw.
        separation: if given, ignore ``means_scale`` and scale the drawn means so that the
            closest two are ``separation`` component standard deviations apart.

    Example:
        >>> prior = GaussianMixturePrior(n_classes=3, dim=2)
        >>> prior.class_log_prob(torch.zeros(4, 2)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        n_classes: int,
        dim: int,
        means_scale: float = 1.0,
        variance: float = 1.0,
        learn_means: bool = False,
        learn_weights: bool = False,
        seed: int = 0,
        separation: float | None = None,
    ) -> None:
        super().__init__()
        self._spec = {
            "type": "gaussian-mixture", "n_classes": n_classes, "dim": dim, "means_scale": means_scale, "variance": variance,
            "learn_means": learn_means, "learn_weights": learn_weights, "seed": seed, "separation": separation,
        }  # fmt: skip
        if n_classes < 1 or dim < 1:
            raise ValueError("a mixture needs at least one class and one dimension")
        if variance <= 0 or means_scale < 0:
            raise ValueError("variance must be positive and means_scale non-negative")
        means = _spread_means(n_classes, dim, seed)
        if separation is not None and n_classes > 1:
            closest = torch.pdist(means).min()
            means = means * (separation * math.sqrt(variance) / closest)
        else:
            means = means * means_scale
        logits = torch.zeros(n_classes)
        self.means = nn.Parameter(means, requires_grad=learn_means)
        self.weight_logits = nn.Parameter(logits, requires_grad=learn_weights)
        self.register_buffer("log_variance", torch.tensor(math.log(variance)))
        self.register_buffer("log_temperature", torch.tensor(0.0))

    def spec(self) -> dict:
        """The constructor's arguments, with ``type``, as plain JSON values (what a model file stores)."""
        return dict(self._spec)

    @property
    def n_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def log_weights(self) -> Tensor:
        return torch.log_softmax(self.weight_logits, dim=0)

    def squared_distances(self, z: Tensor) -> Tensor:
        """``‖z − μ_k‖²`` for every row and class, shape ``(N, K)``."""
        # ‖z − μ‖² = ‖z‖² − 2 z·μ + ‖μ‖²: one matrix product for all classes.
        return (z.pow(2).sum(-1, keepdim=True) - 2 * z @ self.means.T + self.means.pow(2).sum(-1)).clamp_min(0)

    def class_log_prob(self, z: Tensor) -> Tensor:
        """``log π_k + log N(z | μ_k, σ² I)`` for every row and class, shape ``(N, K)``: the trained
        density, whatever the calibration temperature."""
        normaliser = 0.5 * self.dim * (math.log(2 * math.pi) + self.log_variance)
        return self.log_weights - 0.5 * self.squared_distances(z) * torch.exp(-self.log_variance) - normaliser

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p(z)``, shape ``(N,)``."""
        return torch.logsumexp(self.class_log_prob(z), dim=-1)

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` latent points and their components (drawn from π unless ``labels`` is given).

        The draws are made on the CPU (where ``generator`` lives) and moved to the mixture's device,
        so one seed gives the same points on every device.
        """
        if labels is None:
            labels = torch.multinomial(self.log_weights.detach().exp().cpu(), n, replacement=True, generator=generator)
        labels = labels.to(self.means.device)
        std = torch.exp(0.5 * self.log_variance)
        noise = torch.randn(len(labels), self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[labels] + std * noise.to(self.means.device), labels


def _spread_means(n_classes: int, dim: int, seed: int, draws: int = 64) -> Tensor:
    """Standard-normal means: of ``draws`` seeded draws, the one whose closest pair is farthest apart.

    In high dimension all draws are alike; in two dimensions this keeps, say, eight classes from
    starting with two nearly coincident components.
    """
    generator = torch.Generator().manual_seed(seed)
    candidates = torch.randn(draws, n_classes, dim, generator=generator)
    if n_classes < 2:
        return candidates[0]
    distances = torch.cdist(candidates, candidates).masked_fill(torch.eye(n_classes, dtype=torch.bool), float("inf"))
    return candidates[distances.amin(dim=(1, 2)).argmax()]
