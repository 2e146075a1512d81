"""FlowGMM as a composition: input transform → flow → latent Gaussian mixture (paper, section 4).

Each part sits behind a small interface (:class:`~flowgmm_cli.transforms.InputTransform`,
:class:`~flowgmm_cli.layers.FlowLayer`, the prior's ``class_log_prob``) and describes itself with a
``spec()``; :meth:`FlowGMM.from_spec` rebuilds any composition from the model file, so another
flow or prior drops in by registering its builder here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .image_layers import MultiscaleRealNVP
from .layers import FlowLayer, RealNVP
from .prior import GaussianMixturePrior
from .transforms import InputTransform, build_transform

__all__ = ["FlowGMM", "FLOWS", "PRIORS"]

#: Flow builders by the ``type`` of their spec; each takes the spec's other entries as keywords.
FLOWS: dict[str, Callable[..., FlowLayer]] = {"realnvp": RealNVP, "multiscale-realnvp": MultiscaleRealNVP}
#: Prior builders by the ``type`` of their spec.
PRIORS: dict[str, Callable[..., GaussianMixturePrior]] = {"gaussian-mixture": GaussianMixturePrior}


class FlowGMM(nn.Module):
    """``z = f(T(x))`` with ``z`` distributed as a Gaussian mixture, one component per class.

    ``forward`` (also :meth:`joint_log_prob`) gives ``log p(x, y=k)`` in the original feature
    space, the transform's and the flow's log-determinants included: everything the loss needs,
    from one call (so ``DistributedDataParallel`` can wrap the model). Bayes' rule on it gives
    the class probabilities, ``logsumexp`` over classes ``log p(x)``.

    Example:
        >>> from flowgmm_cli.transforms import Standardize
        >>> model = FlowGMM(Standardize(3), RealNVP(3, coupling_layers=2, hidden=8), GaussianMixturePrior(2, 3))
        >>> proba = model.predict_log_proba(torch.randn(4, 3)).exp()
        >>> torch.allclose(proba.sum(-1), torch.ones(4))
        True
    """

    def __init__(self, transform: InputTransform, flow: FlowLayer, prior: GaussianMixturePrior) -> None:
        super().__init__()
        if transform.out_dim != prior.dim:
            raise ValueError(f"the transform gives {transform.out_dim} features but the prior has dimension {prior.dim}")
        self.transform, self.flow, self.prior = transform, flow, prior

    @property
    def in_dim(self) -> int:
        """Dimension of the features the model reads."""
        return self.transform.in_dim

    @property
    def latent_dim(self) -> int:
        """Dimension of the flow and the mixture."""
        return self.prior.dim

    @property
    def n_classes(self) -> int:
        return self.prior.n_classes

    def forward(self, x: Tensor) -> Tensor:
        """``log p(x, y=k)``, shape ``(N, K)``."""
        u, log_term = self.transform(x)
        z, log_det = self.flow(u)
        with torch.autocast(z.device.type, enabled=False):  # under mixed precision the mixture stays exact
            return self.prior.class_log_prob(z) + (log_det + log_term).unsqueeze(-1)

    def joint_log_prob(self, x: Tensor) -> Tensor:
        """``log p(x, y=k)`` in feature space, shape ``(N, K)`` (the same as calling the model)."""
        return self(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)``, shape ``(N,)``."""
        return torch.logsumexp(self(x), dim=-1)

    def predict_log_proba(self, x: Tensor) -> Tensor:
        """``log p(y=k | x)`` by Bayes' rule at the prior's calibration temperature, shape ``(N, K)``."""
        return torch.log_softmax(self(x) * torch.exp(-self.prior.log_temperature), dim=-1)

    def encode(self, x: Tensor) -> Tensor:
        """Latent codes ``z = f(T(x))``."""
        return self.flow(self.transform(x)[0])[0]

    def decode(self, z: Tensor) -> Tensor:
        """Feature-space points ``x = T⁻¹(f⁻¹(z))``; with a projection, the point of the principal subspace."""
        return self.transform.inverse(self.flow.inverse(z))

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` feature-space samples and their classes."""
        z, y = self.prior.sample(n, labels, generator)
        return self.decode(z), y

    def spec(self) -> dict[str, Any]:
        """What :meth:`from_spec` needs to rebuild the model before loading its tensors."""
        return {"transform": self.transform.spec(), "flow": self.flow.spec(), "prior": self.prior.spec()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "FlowGMM":
        """An untrained model of the composition ``spec`` describes; load the tensors after."""
        flow, prior = dict(spec["flow"]), dict(spec["prior"])
        flow_type, prior_type = flow.pop("type"), prior.pop("type")
        if flow_type not in FLOWS or prior_type not in PRIORS:
            raise ValueError(f"unknown flow {flow_type!r} or prior {prior_type!r}")
        return cls(build_transform(spec["transform"]), FLOWS[flow_type](**flow), PRIORS[prior_type](**prior))
