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

__all__ = ["StepOutputs", "ObjectiveTerm", "LabeledNLL", "LabeledCrossEntropy", "UnlabeledNLL", "ConsistencyNLL", "Objective"]


@dataclass
class StepOutputs:
    """What the model computed for one step: ``log p(x, y=k)`` for the labeled and unlabeled rows.

    ``model`` and ``batch`` are there for terms that need another pass (perturbed views).
    """

    joint_labeled: Tensor
    joint_unlabeled: Tensor
    batch: Batch
    model: nn.Module = field(repr=False)
    view_target: Tensor | None = None
    """The class predicted on the second view of each unlabeled row, ``argmax_k p(y=k | x″)``,
    computed without gradient, when the batch has one."""


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


class LabeledCrossEntropy:
    """``−mean log p(y | x)`` over the labeled rows: the classification loss that the paper's own
    code adds (weight 3) beside equation 4. In nats per row, not per dimension: how sure a class is
    does not grow with the number of features (``per_dimension = False``)."""

    name = "labeled_ce"
    per_dimension = False

    def __call__(self, outputs: StepOutputs) -> Tensor:
        return torch.nn.functional.cross_entropy(outputs.joint_labeled, outputs.batch.y_labeled)


class UnlabeledNLL:
    """``−mean log p(x)`` over the unlabeled rows, the mixture summed over classes (zero without rows)."""

    name = "unlabeled_nll"

    def __call__(self, outputs: StepOutputs) -> Tensor:
        if len(outputs.joint_unlabeled) == 0:
            return outputs.joint_unlabeled.new_zeros(())
        return -torch.logsumexp(outputs.joint_unlabeled, dim=1).mean()


class ConsistencyNLL:
    """FlowGMM-cons (paper, equation 7): ``−mean log p(x′ | y″)`` over the unlabeled rows, where
    ``x′`` and ``x″`` are two perturbed views of a row and ``y″`` the class predicted on ``x″``
    without gradient; it pulls both views of a row into one component.

    ``x′`` is the unlabeled row as the likelihood term sees it (perturbed by the data source), so
    ``log p(x′, y)`` comes from the step's one forward pass and only ``x″`` costs another, without
    gradient: an image step costs 1.3 times one without the term (``bench/image_speed.py``), not 1.7.

    Its weight rises linearly from 0 over the first ``ramp`` share of the steps: early predictions
    are poor, and a consistency term at full weight then locks them in.
    """

    name = "consistency_nll"

    def __init__(self, ramp: float = 0.5) -> None:
        self.ramp = ramp

    def __call__(self, outputs: StepOutputs) -> Tensor:
        if outputs.view_target is None or len(outputs.view_target) == 0:
            return outputs.joint_unlabeled.new_zeros(())
        target = outputs.view_target.unsqueeze(1)
        log_weights = _module(outputs.model).prior.log_weights
        return -(outputs.joint_unlabeled.gather(1, target).squeeze(1) - log_weights[outputs.view_target]).mean()


def _module(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return getattr(model, "module", model)


@dataclass
class Objective:
    """``Σ weight × term``, each term divided by the feature dimension ``dim`` (nats per dimension)
    unless it says ``per_dimension = False``.

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

    def __call__(self, model: nn.Module, batch: Batch, progress: float = 1.0) -> tuple[Tensor, Tensor]:
        """One forward pass (with gradient) over the batch's labeled and unlabeled rows, and one
        without over its second view when it has one; returns ``(loss, per-term values per
        dimension)``. ``progress`` is the share of training done, for terms whose weight ramps up
        (a ``ramp`` attribute)."""
        joint = model(torch.cat([batch.x_labeled, batch.x_unlabeled]))
        n = len(batch.x_labeled)
        target = None
        if batch.x_view is not None:
            with torch.no_grad():  # outside the wrapper: a second forward must not touch DDP's bookkeeping
                target = _module(model)(batch.x_view).argmax(dim=1)
        outputs = StepOutputs(joint[:n], joint[n:], batch, model, target)
        values = torch.stack([term(outputs) / (self.dim if getattr(term, "per_dimension", True) else 1) for term, _ in self.terms])
        weights = torch.tensor([weight * _ramp(term, progress) for term, weight in self.terms], dtype=values.dtype, device=values.device)
        return (weights * values).sum(), values.detach()


def _ramp(term: ObjectiveTerm, progress: float) -> float:
    """A term's weight factor: ``min(1, progress / term.ramp)``, or 1 for a term without a ramp."""
    ramp = getattr(term, "ramp", 0.0)
    return 1.0 if ramp <= 0 else min(1.0, progress / ramp)
