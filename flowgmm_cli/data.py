"""Data sources for training: batches of labeled and unlabeled rows, seeded, with a resumable position.

A source yields, for each step of an epoch, a :class:`Batch` of labeled rows (cycled: there are
few) and unlabeled rows (one pass per epoch). Its :meth:`~InMemorySource.state_dict` is what a
checkpoint stores to continue at the same place; a streaming source (rows read from HDF5 in
chunks) implements the same three members.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["Batch", "DataSource", "InMemorySource"]


@dataclass
class Batch:
    """One step's rows: labeled features and class codes, unlabeled features (possibly none)."""

    x_labeled: Tensor
    y_labeled: Tensor
    x_unlabeled: Tensor


class DataSource(Protocol):
    """What the training loop needs from its data."""

    steps_per_epoch: int

    def epoch(self) -> Iterator[Batch]:
        """The next epoch's batches."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """The position after the last full epoch, as tensors (for a checkpoint)."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


class InMemorySource:
    """Batches from tensors in memory: an epoch is one shuffled pass over the unlabeled rows; labeled
    batches cycle through reshuffled labeled rows, always full. Without unlabeled rows an epoch has
    as many steps as one pass over the labeled rows takes.

    Arguments:
        x_labeled, y_labeled: labeled features and their class codes.
        x_unlabeled: unlabeled features (may have no rows).
        batch_size, labeled_batch_size: rows of each kind per step.
        seed: seed of the shuffles and the noise.
        labeled_noise: per-feature standard deviation of Gaussian noise added to each labeled
            batch (an augmentation), or ``None``.

    Example:
        >>> source = InMemorySource(torch.randn(6, 2), torch.tensor([0, 1] * 3), torch.randn(10, 2), 4, 3, seed=0)
        >>> [(len(b.x_labeled), len(b.x_unlabeled)) for b in source.epoch()]
        [(3, 4), (3, 4), (3, 2)]
    """

    def __init__(
        self,
        x_labeled: Tensor,
        y_labeled: Tensor,
        x_unlabeled: Tensor,
        batch_size: int,
        labeled_batch_size: int,
        seed: int = 0,
        labeled_noise: Tensor | None = None,
    ) -> None:
        if len(x_labeled) == 0:
            raise ValueError("training needs at least one labeled row")
        self.x_labeled, self.y_labeled, self.x_unlabeled = x_labeled, y_labeled, x_unlabeled
        self.labeled_noise = labeled_noise
        self.unlabeled_batch = min(batch_size, len(x_unlabeled))
        self.labeled_batch = min(labeled_batch_size, len(x_labeled))
        epoch_rows = len(x_unlabeled) or len(x_labeled)
        self.steps_per_epoch = math.ceil(epoch_rows / (self.unlabeled_batch or self.labeled_batch))
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self) -> Iterator[Batch]:
        device = self.x_labeled.device
        n_labeled = len(self.x_labeled)
        unlabeled_order = torch.randperm(len(self.x_unlabeled), generator=self.generator)
        labeled_order, cursor = torch.randperm(n_labeled, generator=self.generator), 0
        for step in range(self.steps_per_epoch):
            if cursor + self.labeled_batch > n_labeled:
                labeled_order, cursor = torch.randperm(n_labeled, generator=self.generator), 0
            labeled_rows = labeled_order[cursor : cursor + self.labeled_batch].to(device)
            cursor += self.labeled_batch
            x_labeled = self.x_labeled[labeled_rows]
            if self.labeled_noise is not None:
                noise = torch.randn(x_labeled.shape, generator=self.generator).to(device)
                x_labeled = x_labeled + noise * self.labeled_noise
            unlabeled_rows = unlabeled_order[step * self.unlabeled_batch : (step + 1) * self.unlabeled_batch]
            yield Batch(x_labeled, self.y_labeled[labeled_rows], self.x_unlabeled[unlabeled_rows.to(device)])

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
