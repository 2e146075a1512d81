"""FlowGMM: input standardisation, a RealNVP flow and a latent Gaussian mixture, as one module."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .layers import build_realnvp
from .prior import GaussianMixturePrior

__all__ = ["Architecture", "FlowGMM", "standardization_stats"]


def standardization_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and standard deviation of ``x``; constant features get scale 1."""
    std = x.std(dim=0, unbiased=False)
    return x.mean(dim=0), torch.where(std > 1e-8, std, torch.ones_like(std))


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a FlowGMM before loading its tensors."""

    dim: int
    n_classes: int
    coupling_layers: int
    hidden: int
    hidden_layers: int = 2
    dropout: float = 0.0
    actnorm: bool = False
    permutation: str = "reverse"
    means_scale: float = 1.0
    variance: float = 1.0
    learn_means: bool = False
    learn_weights: bool = False
    seed: int = 0
    means_separation: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class FlowGMM(nn.Module):
    """``z = f((x − mean) / scale)`` with ``z`` distributed as a Gaussian mixture, one component per class.

    ``joint_log_prob`` gives ``log p(x, y=k)`` in the original feature space (the standardisation's
    log-determinant included); Bayes' rule on it gives the class probabilities.

    Example:
        >>> model = FlowGMM(Architecture(dim=3, n_classes=2, coupling_layers=2, hidden=8))
        >>> proba = model.predict_log_proba(torch.randn(4, 3)).exp()
        >>> torch.allclose(proba.sum(-1), torch.ones(4))
        True
    """

    def __init__(self, architecture: Architecture) -> None:
        super().__init__()
        a = architecture
        self.architecture = a
        self.flow = build_realnvp(
            a.dim, a.coupling_layers, a.hidden, a.hidden_layers, a.dropout, a.actnorm, a.permutation, a.seed
        )
        self.prior = GaussianMixturePrior(
            a.n_classes, a.dim, a.means_scale, a.variance, a.learn_means, a.learn_weights, a.seed, a.means_separation
        )
        self.register_buffer("feature_mean", torch.zeros(a.dim))
        self.register_buffer("feature_scale", torch.ones(a.dim))

    @torch.no_grad()
    def set_standardization(self, mean: Tensor, scale: Tensor) -> None:
        """Store the input statistics, usually ``standardization_stats(training_features)``."""
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(scale)

    def standardize(self, x: Tensor) -> Tensor:
        return (x - self.feature_mean) / self.feature_scale

    def standardization_log_det(self) -> Tensor:
        return -torch.log(self.feature_scale).sum()

    def joint_log_prob_standardized(self, u: Tensor) -> Tensor:
        """``log p(u, y=k)`` for standardised inputs ``u``, shape ``(N, K)``."""
        z, log_det = self.flow(u)
        return self.prior.class_log_prob(z) + log_det.unsqueeze(-1)

    def joint_log_prob(self, x: Tensor) -> Tensor:
        """``log p(x, y=k)`` in feature space, shape ``(N, K)``."""
        return self.joint_log_prob_standardized(self.standardize(x)) + self.standardization_log_det()

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)``, shape ``(N,)``."""
        return torch.logsumexp(self.joint_log_prob(x), dim=-1)

    def predict_log_proba(self, x: Tensor) -> Tensor:
        """``log p(y=k | x)`` by Bayes' rule, shape ``(N, K)``."""
        return torch.log_softmax(self.joint_log_prob(x), dim=-1)

    def encode(self, x: Tensor) -> Tensor:
        """Latent codes ``z = f(x)``."""
        return self.flow(self.standardize(x))[0]

    def decode(self, z: Tensor) -> Tensor:
        """Feature-space points ``x = f⁻¹(z)``."""
        return self.flow.inverse(z) * self.feature_scale + self.feature_mean

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` feature-space samples and their classes."""
        z, y = self.prior.sample(n, labels, generator)
        return self.decode(z), y
