"""The training objective as a list of named, weighted terms (paper, equation 4; more terms plug in).

Each term maps one step's :class:`StepOutputs` to a scalar (a mean negative log-likelihood in
nats per row); :class:`Objective` weighs and adds them and reports each term per dimension, so a
new term (a consistency loss, a labeled cross-entropy) is a new class here and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from .data import Batch

__all__ = ["StepOutputs", "ObjectiveTerm", "LabeledNLL", "UnlabeledNLL", "Objective"]


@dataclass
class StepOutputs:
    """What the model computed for one step: ``log p(x, y=k)`` for the labeled and unlabeled rows.

    ``model`` and ``batch`` are there for terms that need another pass (perturbed views).
    """

    joint_labeled: Tensor
    joint_unlabeled: Tensor
    batch: Batch
    model: nn.Module = field(repr=False)


class ObjectiveTerm(Protocol):
    name: str

    def __call__(self, outputs: StepOutputs) -> Tensor:
        """The term's value for one step, a scalar tensor with gradient."""
        ...


class LabeledNLL:
    """``−mean log p(x, y)`` over the labeled rows: the flow's log-determinant and the class component."""

    name = "labeled_nll"

    def __call__(self, outputs: StepOutputs) -> Tensor:
        y = outputs.batch.y_labeled.unsqueeze(1)
        return -outputs.joint_labeled.gather(1, y).mean()


class UnlabeledNLL:
    """``−mean log p(x)`` over the unlabeled rows, the mixture summed over classes (zero without rows)."""

    name = "unlabeled_nll"

    def __call__(self, outputs: StepOutputs) -> Tensor:
        if len(outputs.joint_unlabeled) == 0:
            return outputs.joint_unlabeled.new_zeros(())
        return -torch.logsumexp(outputs.joint_unlabeled, dim=1).mean()


@dataclass
class Objective:
    """``Σ weight × term``, divided by the feature dimension ``dim`` (losses in nats per dimension).

    Example:
        >>> objective = Objective([(LabeledNLL(), 1.0), (UnlabeledNLL(), 0.3)], dim=2)
        >>> objective.names
        ['labeled_nll', 'unlabeled_nll']
    """

    terms: list[tuple[ObjectiveTerm, float]]
    dim: int

    @property
    def names(self) -> list[str]:
        return [term.name for term, _ in self.terms]

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """One forward pass over the batch; returns ``(loss, per-term values per dimension)``."""
        joint = model(torch.cat([batch.x_labeled, batch.x_unlabeled]))
        n = len(batch.x_labeled)
        outputs = StepOutputs(joint[:n], joint[n:], batch, model)
        values = torch.stack([term(outputs) for term, _ in self.terms]) / self.dim
        weights = torch.tensor([weight for _, weight in self.terms], dtype=values.dtype, device=values.device)
        return (weights * values).sum(), values.detach()
