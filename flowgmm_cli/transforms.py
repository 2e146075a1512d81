"""Input transforms: what the model does to the features before the flow, with its exact density term.

A transform maps rows ``x`` to ``(u, log_term)``. For a bijection (standardisation) ``log_term``
is ``log|det du/dx|``; for the principal projection it is the Gaussian log-density of the
directions the flow does not see. Either way ``log p(x) = log p_flow(u) + log_term``, so the
model stays an exact density of the features. Transforms keep their statistics as buffers (saved
with the model) and are rebuilt from :meth:`InputTransform.spec` when a model file is loaded.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .layers import Flow
from .moments import Moments

__all__ = [
    "InputTransform", "Standardize", "YeoJohnson", "SquareRoot", "PixelLogit", "PrincipalProjection", "TransformChain", "InputNoise", "build_transform",
]  # fmt: skip


class InputTransform(nn.Module):
    """A map applied to the features before the flow, with its log-density term per row."""

    #: Whether the log term is zero for every input (see :class:`~flowgmm_cli.layers.FlowLayer`; none is yet).
    volume_preserving = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """Return ``(u, log_term)`` with ``log_term`` of shape ``(N,)``."""
        raise NotImplementedError

    def inverse(self, u: Tensor) -> Tensor:  # pragma: no cover - interface
        """A feature-space row for ``u`` (for a projection: the point on the principal subspace)."""
        raise NotImplementedError

    @property
    def in_dim(self) -> int:  # pragma: no cover - interface
        """Dimension of ``x``."""
        raise NotImplementedError

    @property
    def out_dim(self) -> int:  # pragma: no cover - interface
        """Dimension of ``u``."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:  # pragma: no cover - interface
        """What :func:`build_transform` needs to rebuild this transform before loading its buffers."""
        raise NotImplementedError


class ElementwiseTransform(InputTransform):
    """A map of each feature on its own: ``u`` has the dimension of ``x``."""

    @property
    def out_dim(self) -> int:
        return self.in_dim


class Standardize(ElementwiseTransform):
    """``u = (x − mean) / scale`` with ``log|det| = −Σ log scale``.

    Example:
        >>> transform = Standardize.fit(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
        >>> transform(torch.tensor([[2.0, 30.0]]))[0]
        tensor([[1., 1.]])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @classmethod
    def fit(cls, x: Tensor, shared_scale: bool = False) -> "Standardize":
        """Mean and standard deviation of the rows ``x``: per feature, or one shared scale for all.

        Per-feature scaling suits tables in mixed units; a shared scale (the root mean variance of
        the features) keeps the relative sizes of features in one unit, such as pixels or
        embeddings, where a low-variance feature is often noise that per-feature scaling would
        blow up. Constant features get scale 1.
        """
        moments = Moments(x.shape[1], full=False)
        moments.update(x)
        return cls.from_moments(moments, shared_scale)

    @classmethod
    def from_moments(cls, moments: Moments, shared_scale: bool = False) -> "Standardize":
        """As :meth:`fit`, from float64 moments accumulated over any number of blocks."""
        std = moments.variance.sqrt()
        if shared_scale:
            std = torch.full_like(std, float(moments.variance.mean().sqrt()))
        transform = cls(len(std))
        transform.mean.copy_(moments.mean)
        transform.scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))
        return transform

    @property
    def in_dim(self) -> int:
        return self.mean.shape[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = (x - self.mean) / self.scale
        return u, (-torch.log(self.scale).sum()).expand(x.shape[0])

    def inverse(self, u: Tensor) -> Tensor:
        return u * self.scale + self.mean

    def spec(self) -> dict[str, Any]:
        return {"type": "standardize", "dim": self.out_dim}


class YeoJohnson(ElementwiseTransform):
    """A monotone power map of each feature (Yeo & Johnson, 2000) that makes skewed, heavy-tailed
    columns closer to normal; ``λ = 1`` is the identity.

    ``ψ(x) = ((1 + x)^λ − 1) / λ`` for ``x ≥ 0`` and ``−((1 − x)^(2−λ) − 1) / (2 − λ)`` for
    ``x < 0`` (logarithms at ``λ = 0`` and ``λ = 2``), so ``log ψ′(x) = (λ − 1) sign(x) log(1 + |x|)``
    and ``log p(x)`` stays a density of the features. Meant for standardised inputs, where ``λ``
    does not depend on a column's unit or offset.

    Example:
        >>> x = torch.tensor([[-1.0, 0.0, 3.0]]).T
        >>> transform = YeoJohnson(1)
        >>> transform.lambdas.fill_(0.0)
        tensor([0.])
        >>> u, log_det = transform(x)
        >>> u.squeeze(1), log_det
        (tensor([-1.5000,  0.0000,  1.3863]), tensor([ 0.6931,  0.0000, -1.3863]))
        >>> transform.inverse(u).squeeze(1)
        tensor([-1.,  0.,  3.])
    """

    #: ``λ`` is searched in this range: wide enough for a log-normal-like tail (``λ`` near 0) and
    #: its mirror image, narrow enough that ``ψ`` stays well conditioned in float32.
    LAMBDA_BOUNDS = (-2.0, 4.0)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("lambdas", torch.ones(dim))

    @classmethod
    def fit(cls, x: Tensor) -> "YeoJohnson":
        """Each column's ``λ`` by maximum likelihood under a normal model of ``ψ(x)`` (the profile
        likelihood ``−n/2 · log var ψ(x) + Σ log ψ′(x)``), in float64, by a bounded scalar search.
        Constant columns keep ``λ = 1``."""
        from scipy.optimize import minimize_scalar

        rows = x.detach().to("cpu", torch.float64)
        transform = cls(rows.shape[1])
        for j in range(rows.shape[1]):
            column = rows[:, j]
            if float(column.std()) < 1e-8:
                continue

            def negative_profile(lam: float, column: Tensor = column) -> float:
                value, log_slope = _yeo_johnson(column, torch.tensor(lam, dtype=torch.float64))
                return 0.5 * len(column) * math.log(max(float(value.var(correction=0)), 1e-300)) - float(log_slope.sum())

            result = minimize_scalar(negative_profile, bounds=cls.LAMBDA_BOUNDS, method="bounded", options={"xatol": 1e-6})
            transform.lambdas[j] = float(result.x)
        return transform

    @property
    def in_dim(self) -> int:
        return self.lambdas.shape[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u, log_slope = _yeo_johnson(x, self.lambdas.to(x.dtype))
        return u, log_slope.sum(-1)

    def inverse(self, u: Tensor) -> Tensor:
        """``ψ⁻¹``; where ``ψ`` is bounded (``λ < 0`` above, ``λ > 2`` below) values beyond the bound
        map to the largest finite feature value instead of NaN."""
        lam = self.lambdas.to(u.dtype)
        eps = torch.finfo(u.dtype).eps
        upper, lower = 2.0 - lam, lam  # exponents of the two branches, as in _yeo_johnson
        positive = torch.where(
            lower.abs() < _SMALL, torch.expm1(u.clamp_min(0)), torch.expm1(torch.log1p((lam * u.clamp_min(0)).clamp_min(-1 + eps)) / _nonzero(lam))
        )
        negative = torch.where(
            upper.abs() < _SMALL, -torch.expm1(-u.clamp_max(0)), -torch.expm1(torch.log1p((-upper * u.clamp_max(0)).clamp_min(-1 + eps)) / _nonzero(upper))
        )
        return torch.where(u >= 0, positive, negative)

    def spec(self) -> dict[str, Any]:
        return {"type": "yeo_johnson", "dim": self.out_dim}


#: Below this, ``λ`` (or ``2 − λ``) counts as 0 and the branch is a logarithm.
_SMALL = 1e-6


def _nonzero(value: Tensor) -> Tensor:
    """``value`` with entries near 0 replaced by 1 (their branch uses the logarithm instead)."""
    return torch.where(value.abs() < _SMALL, torch.ones_like(value), value)


def _yeo_johnson(x: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """``ψ_λ(x)`` and ``log ψ′_λ(x)`` elementwise (``lam`` broadcasts over the rows). A branch whose
    exponent is within :data:`_SMALL` of 0 is its logarithm, and the slope uses that same exponent."""
    zero = torch.zeros_like(x)
    log_positive = torch.log1p(torch.where(x >= 0, x, zero))  # where, not clamp: the gradient at 0 is 1 from the right
    log_negative = torch.log1p(torch.where(x < 0, -x, zero))
    lower_log, upper_log = lam.abs() < _SMALL, (2.0 - lam).abs() < _SMALL
    lower = torch.where(lower_log, torch.zeros_like(lam), lam)  # the exponent of the x ≥ 0 branch
    upper = torch.where(upper_log, torch.zeros_like(lam), 2.0 - lam)  # of the x < 0 branch
    positive = torch.where(lower_log, log_positive, torch.expm1(lower * log_positive) / _nonzero(lower))
    negative = torch.where(upper_log, -log_negative, -torch.expm1(upper * log_negative) / _nonzero(upper))
    value = torch.where(x >= 0, positive, negative)
    log_slope = (lower - 1.0) * log_positive + (upper - 1.0) * log_negative
    return value, log_slope


class SquareRoot(ElementwiseTransform):
    """A variance-stabilising square root for long-tailed non-negative features in one unit (pooled
    ReLU activations, counts): ``u = sign(x) · (√(|x|/s + c) − √c)``.

    Such features pile up at zero with a long right tail, and their few large values dominate both
    the shared scale and the principal directions; the root evens them out as it does for counts
    (:func:`~flowgmm_cli.defaults.default_square_root` says when it is on by default). The
    offset ``c`` (a tenth of the scale ``s``, the features' shared standard deviation) keeps the
    slope finite at zero, so ``log|u′(x)| = −log(2s) − ½ log(|x|/s + c)`` and ``log p(x)`` stays a
    density; the odd extension to negative values makes the map a bijection of the real line, so a
    row below zero still has a density.

    Example:
        >>> transform = SquareRoot(2, scale=4.0)
        >>> u, log_term = transform(torch.tensor([[0.0, 35.6]]))
        >>> [round(value, 3) for value in u[0].tolist()], torch.allclose(transform.inverse(u), torch.tensor([[0.0, 35.6]]))
        ([0.0, 2.684], True)
    """

    #: ``c``, in units of the scale: the map is close to linear below about ``c·s`` and a root above.
    OFFSET = 0.1

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("scale", torch.tensor(float(scale)))

    @classmethod
    def from_moments(cls, moments: Moments) -> "SquareRoot":
        """The root for rows with these moments: ``s`` is their shared standard deviation (the
        root mean variance of the features, as :class:`Standardize` with ``shared_scale``; 1 for constant rows)."""
        scale = float(moments.variance.mean().sqrt())
        return cls(len(moments.mean), scale if scale > 1e-8 else 1.0)

    @property
    def in_dim(self) -> int:
        return self.dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # u = (x/s) / (√(|x|/s + c) + √c): the same map without a difference of roots or a branch on
        # the sign, so it is exact for tiny x, odd to the last bit and its autograd slope is right at
        # 0; in place where autograd allows, as it runs on every batch and every noisy view.
        scale = self.scale.to(x.dtype)
        root = x.abs().div_(scale).add_(self.OFFSET).sqrt_()
        u = x.div(root.add(math.sqrt(self.OFFSET))).div_(scale)
        return u, -torch.log(root).sum(-1) - self.dim * torch.log(2 * scale)

    def inverse(self, u: Tensor) -> Tensor:
        # |x|/s = (|u| + √c)² − c = |u| (|u| + 2√c), with the sign of u.
        return u.mul(u.abs().add_(2 * math.sqrt(self.OFFSET))).mul_(self.scale.to(u.dtype))

    def spec(self) -> dict[str, Any]:
        return {"type": "square_root", "dim": self.dim}


class PixelLogit(ElementwiseTransform):
    """Pixel values (0-255) to logits, for a flow on images (RealNVP's preprocessing).

    ``v = (x + 1/2) / 256`` puts a pixel in the middle of its bin of width 1/256; training rows
    arrive dequantised (``x`` plus uniform noise in [−1/2, 1/2), :class:`~flowgmm_cli.augment.ImageAugment`),
    so ``v`` covers [0, 1). Then ``p = α + (1 − 2α) v`` keeps away from 0 and 1 and ``u = log p − log(1 − p)``.
    ``log_term = Σ log(1 − 2α) − log 256 − log p − log(1 − p)``, so ``log p(x)`` is a density of
    the dequantised pixels in pixel units, and ``−log p(x) / (D log 2)`` is bits per dimension.

    Example:
        >>> transform = PixelLogit(2)
        >>> u, log_term = transform(torch.tensor([[0.0, 255.0]]))
        >>> [round(value, 2) for value in u[0].tolist()], torch.allclose(transform.inverse(u), torch.tensor([[0.0, 255.0]]), atol=1e-4)
        ([-2.91, 2.91], True)
    """

    def __init__(self, dim: int, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5), got {alpha}")
        self.dim, self.alpha = dim, alpha

    @property
    def in_dim(self) -> int:
        return self.dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * (x + 0.5) / 256
        log_p, log_q = torch.log(p), torch.log1p(-p)
        constant = self.dim * (math.log(1 - 2 * self.alpha) - math.log(256))
        return log_p - log_q, constant - (log_p + log_q).sum(-1)

    def inverse(self, u: Tensor) -> Tensor:
        """Pixel values (continuous; round them for an image), clamped to the dequantised range
        [−1/2, 255.5): beyond ``logit(α)`` and ``logit(1 − α)`` the map has no preimage."""
        x = (torch.sigmoid(u) - self.alpha) / (1 - 2 * self.alpha) * 256 - 0.5
        return x.clamp(-0.5, 255.5 - 1e-3)

    def spec(self) -> dict[str, Any]:
        return {"type": "pixel_logit", "dim": self.dim, "alpha": self.alpha}


class PrincipalProjection(InputTransform):
    """Keep the top ``k`` principal directions ``W`` (D×k) for the flow; model the rest as noise.

    ``a = Wᵀu`` goes to the flow; the residual ``u − Wa`` is isotropic Gaussian noise of variance
    ``s²`` in the other D−k directions (as in probabilistic PCA). The split is a rotation, so
    ``log p(u) = log p_flow(a) − ‖u − Wa‖²/(2s²) − (D−k)/2·log(2πs²)`` is an exact density, and the
    residual term is the same for every class.

    Example:
        >>> u = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([3.0, 1.0, 0.1])
        >>> projection = PrincipalProjection.fit(u - u.mean(0), 1)
        >>> projection.directions.abs().argmax().item(), round(projection.residual_variance, 1)
        (0, 0.5)
    """

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        if not 0 < k < dim:
            raise ValueError(f"a projection keeps between 1 and dim - 1 = {dim - 1} directions, got {k}")
        self.register_buffer("directions", torch.eye(dim, k))
        self.register_buffer("log_residual_variance", torch.tensor(0.0))

    @classmethod
    def fit(cls, u: Tensor, k: int) -> "PrincipalProjection":
        """The top ``k`` principal directions of centred rows ``u`` and the mean variance of the
        others (PPCA's maximum-likelihood residual variance), from a float64 covariance."""
        return cls.from_covariance((u.T.double() @ u.double()) / len(u), k)

    @classmethod
    def from_covariance(cls, covariance: Tensor, k: int) -> "PrincipalProjection":
        """As :meth:`fit`, from the covariance matrix of the rows the projection will see.

        Signs are fixed (each direction's largest entry positive) so the result is reproducible.
        """
        values, vectors = torch.linalg.eigh(covariance.double())
        order = torch.argsort(values, descending=True)
        values, vectors = values[order].clamp_min(0), vectors[:, order]
        top = vectors[:, :k]
        top = top * torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
        transform = cls(covariance.shape[0], k)
        transform.directions.copy_(top)
        transform.log_residual_variance.fill_(math.log(max(float(values[k:].mean()), 1e-6)))
        return transform

    @property
    def in_dim(self) -> int:
        return self.directions.shape[0]

    @property
    def out_dim(self) -> int:
        return self.directions.shape[1]

    @property
    def residual_variance(self) -> float:
        return float(self.log_residual_variance.exp())

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        a = u @ self.directions
        squared = (u.pow(2).sum(-1) - a.pow(2).sum(-1)).clamp_min(0)
        free = self.in_dim - self.out_dim
        log_var = self.log_residual_variance
        return a, -0.5 * squared * torch.exp(-log_var) - 0.5 * free * (math.log(2 * math.pi) + log_var)

    def inverse(self, a: Tensor) -> Tensor:
        return a @ self.directions.T

    def spec(self) -> dict[str, Any]:
        return {"type": "projection", "dim": self.in_dim, "k": self.out_dim}


class TransformChain(Flow, InputTransform):
    """Transforms applied in order; their log terms add up (the composition of :class:`Flow`)."""

    def __init__(self, transforms: list[InputTransform]) -> None:
        if not transforms:
            raise ValueError("a transform chain needs at least one transform")
        super().__init__(transforms)

    @property
    def in_dim(self) -> int:
        return self.layers[0].in_dim

    @property
    def out_dim(self) -> int:
        return self.layers[-1].out_dim

    def spec(self) -> dict[str, Any]:
        return {"type": "chain", "transforms": [t.spec() for t in self.layers]}


class InputNoise:
    """Gaussian noise of standard deviation ``std`` in the units the flow sees, as feature rows:
    ``x ↦ g⁻¹(g(x) + std · ε)`` with ``ε`` standard normal from the generator, for the chain's
    invertible part ``g`` (the transforms before a projection). Standardisations at the end of ``g``
    only scale the noise: with standardisation alone that is ``x + std · scale · ε``, computed so.

    Example:
        >>> chain = TransformChain([Standardize.fit(torch.tensor([[0.0, 0.0], [2.0, 20.0]]))])
        >>> noisy = InputNoise(chain, 0.5)(torch.zeros(1000, 2), torch.Generator().manual_seed(0))
        >>> noisy.std(0).div(torch.tensor([0.5, 5.0])).round(decimals=1).tolist()
        [1.0, 1.0]
    """

    def __init__(self, transform: TransformChain, std: float) -> None:
        self.parts: list[InputTransform] = []
        for layer in transform.layers:
            if isinstance(layer, PrincipalProjection):
                break
            self.parts.append(layer)
        # Standardisations at the end are affine: noise of ``std`` after them is noise of ``std``
        # times their scales before them, so they need no round trip.
        self.scale = torch.full((transform.in_dim,), float(std), device=next(transform.buffers()).device)
        while self.parts and isinstance(self.parts[-1], Standardize):
            self.scale = self.scale * self.parts.pop().scale

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        draws = torch.randn(x.shape, generator=generator).to(x.device)
        if not self.parts:
            return x + draws * self.scale
        with torch.no_grad():
            u = x
            for part in self.parts:
                u = part(u)[0]
            u = u + draws * self.scale
            for part in reversed(self.parts):
                u = part.inverse(u)
        return u


def build_transform(spec: dict[str, Any]) -> InputTransform:
    """Rebuild a transform (with placeholder statistics) from its :meth:`~InputTransform.spec`."""
    kind = spec.get("type")
    if kind == "standardize":
        return Standardize(int(spec["dim"]))
    if kind == "yeo_johnson":
        return YeoJohnson(int(spec["dim"]))
    if kind == "square_root":
        return SquareRoot(int(spec["dim"]))
    if kind == "pixel_logit":
        return PixelLogit(int(spec["dim"]), float(spec["alpha"]))
    if kind == "projection":
        return PrincipalProjection(int(spec["dim"]), int(spec["k"]))
    if kind == "chain":
        return TransformChain([build_transform(part) for part in spec["transforms"]])
    raise ValueError(f"unknown input transform {kind!r}")
