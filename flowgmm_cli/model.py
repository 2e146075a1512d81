"""FlowGMM: input standardisation, a RealNVP flow and a latent Gaussian mixture, as one module."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .layers import build_realnvp
from .prior import GaussianMixturePrior

__all__ = ["Architecture", "FlowGMM", "principal_directions", "standardization_stats"]


def standardization_stats(x: Tensor, shared_scale: bool = False) -> tuple[Tensor, Tensor]:
    """Per-feature mean of ``x`` and its standard deviation: per feature, or one shared by all.

    Per-feature scaling suits tables in mixed units; a shared scale (the root mean variance of the
    features) keeps the relative sizes of features in one unit, such as pixels or embeddings, where
    a low-variance feature is often noise that per-feature scaling would blow up. Constant features
    get scale 1.
    """
    std = x.std(dim=0, unbiased=False)
    if shared_scale:
        std = torch.full_like(std, float(std.pow(2).mean().sqrt()))
    return x.mean(dim=0), torch.where(std > 1e-8, std, torch.ones_like(std))


def principal_directions(u: Tensor, k: int) -> tuple[Tensor, float]:
    """The top ``k`` principal directions (D×k, orthonormal) of centred rows ``u`` and the mean
    variance of the other D−k directions (the maximum-likelihood residual variance of PPCA).

    Signs are fixed (each direction's largest entry positive) so the result is reproducible.

    Example:
        >>> u = torch.randn(500, 3) * torch.tensor([3.0, 1.0, 0.1])
        >>> directions, rest = principal_directions(u - u.mean(0), 1)
        >>> directions.abs().argmax().item(), round(rest, 1)
        (0, 0.5)
    """
    covariance = (u.T.double() @ u.double()) / len(u)
    values, vectors = torch.linalg.eigh(covariance)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order].clamp_min(0), vectors[:, order]
    top = vectors[:, :k]
    top = top * torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
    residual = float(values[k:].mean()) if k < len(values) else 0.0
    return top.to(u.dtype), max(residual, 1e-6)


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
    projection_dim: int | None = None
    """Model the top ``projection_dim`` principal directions with the flow, the rest as isotropic noise."""

    @property
    def latent_dim(self) -> int:
        """Dimension of the flow and the mixture: the projection's, or the features'."""
        return self.projection_dim or self.dim

    def to_dict(self) -> dict:
        return asdict(self)


class FlowGMM(nn.Module):
    """``z = f((x − mean) / scale)`` with ``z`` distributed as a Gaussian mixture, one component per class.

    ``joint_log_prob`` gives ``log p(x, y=k)`` in the original feature space (the standardisation's
    log-determinant included); Bayes' rule on it gives the class probabilities.

    With a projection (``Architecture.projection_dim = K``), the standardised input ``u`` is split
    by an orthonormal ``W`` (D×K, the top principal directions) into ``a = Wᵀu``, which the flow
    and mixture model, and the residual ``u − Wa``, modelled as isotropic Gaussian noise of
    variance ``s²`` in the other D−K directions (as in probabilistic PCA). The split is a rotation,
    so ``log p(u, y) = log p_flow(a, y) − ‖u − Wa‖²/(2s²) − (D−K)/2·log(2πs²)`` is still an exact
    density of the features; the residual term is the same for every class, so it leaves the
    class probabilities to the flow.

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
            a.latent_dim, a.coupling_layers, a.hidden, a.hidden_layers, a.dropout, a.actnorm, a.permutation, a.seed
        )
        self.prior = GaussianMixturePrior(
            a.n_classes, a.latent_dim, a.means_scale, a.variance, a.learn_means, a.learn_weights, a.seed, a.means_separation
        )
        self.register_buffer("feature_mean", torch.zeros(a.dim))
        self.register_buffer("feature_scale", torch.ones(a.dim))
        if a.projection_dim:
            if not 0 < a.projection_dim < a.dim:
                raise ValueError(f"projection_dim must be between 1 and dim - 1 = {a.dim - 1}, got {a.projection_dim}")
            self.register_buffer("projection", torch.eye(a.dim, a.projection_dim))
            self.register_buffer("log_residual_variance", torch.tensor(0.0))

    @torch.no_grad()
    def set_standardization(self, mean: Tensor, scale: Tensor) -> None:
        """Store the input statistics, usually ``standardization_stats(training_features)``."""
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(scale)

    @torch.no_grad()
    def set_projection(self, directions: Tensor, residual_variance: float) -> None:
        """Store the orthonormal principal directions (D×K) and the residual variance per direction."""
        self.projection.copy_(directions)
        self.log_residual_variance.fill_(math.log(residual_variance))

    def standardize(self, x: Tensor) -> Tensor:
        return (x - self.feature_mean) / self.feature_scale

    def project(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised rows to the flow's input and the log-density of what the flow does not see.

        Returns ``(a, log_residual)``: ``a = Wᵀu`` and the Gaussian log-density of ``u − Wa``, or
        ``(u, 0)`` without a projection.
        """
        if not self.architecture.projection_dim:
            return u, u.new_zeros(u.shape[0])
        a = u @ self.projection
        squared = (u.pow(2).sum(-1) - a.pow(2).sum(-1)).clamp_min(0)
        free = self.architecture.dim - self.architecture.projection_dim
        log_var = self.log_residual_variance
        return a, -0.5 * squared * torch.exp(-log_var) - 0.5 * free * (math.log(2 * math.pi) + log_var)

    def standardization_log_det(self) -> Tensor:
        return -torch.log(self.feature_scale).sum()

    def joint_log_prob_standardized(self, u: Tensor) -> Tensor:
        """``log p(u, y=k)`` for standardised inputs ``u``, shape ``(N, K)``."""
        a, log_residual = self.project(u)
        z, log_det = self.flow(a)
        return self.prior.class_log_prob(z) + (log_det + log_residual).unsqueeze(-1)

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
        """Latent codes ``z = f(x)`` (of the projection, when there is one)."""
        return self.flow(self.project(self.standardize(x))[0])[0]

    def decode(self, z: Tensor) -> Tensor:
        """Feature-space points ``x = f⁻¹(z)``; with a projection, the point of the principal subspace."""
        u = self.flow.inverse(z)
        if self.architecture.projection_dim:
            u = u @ self.projection.T
        return u * self.feature_scale + self.feature_mean

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` feature-space samples and their classes."""
        z, y = self.prior.sample(n, labels, generator)
        return self.decode(z), y
