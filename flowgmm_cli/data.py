"""Data sources for training: batches of labeled and unlabeled rows, seeded, with a resumable position.

A source yields, for each step of an epoch, a :class:`Batch` of labeled rows (cycled: there are
few) and unlabeled rows (one pass per epoch). The unlabeled rows come from a
:class:`~flowgmm_cli.stores.RowStore` chunk by chunk: each epoch permutes the chunks (by seed and
epoch), each process takes its share of them, and rows are shuffled within a buffer of several
chunks, so memory holds a few chunks whatever the size of the file. A store of one chunk (rows in
memory) is one shuffled pass. :meth:`~ShuffledSource.state_dict` is what a checkpoint stores to
continue at the same place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .stores import ArrayStore, RowStore

__all__ = ["Batch", "DataSource", "Noise", "ShuffledSource", "InMemorySource"]

#: How rows are perturbed: ``noise(x, generator)`` returns the perturbed rows, drawing every random
#: number from ``generator`` (so a seeded source perturbs the same way on every run).
Noise = Callable[[Tensor, torch.Generator], Tensor]


#: Chunks whose rows are shuffled together.
BUFFER_CHUNKS = 16


@dataclass
class Batch:
    """One step's rows: labeled features and class codes, unlabeled features (possibly none), and
    with view noise a second perturbed view of the unlabeled rows (for the consistency term, which
    takes the unlabeled rows as its first view)."""

    x_labeled: Tensor
    y_labeled: Tensor
    x_unlabeled: Tensor
    x_view: Tensor | None = None


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


class ShuffledSource:
    """Unlabeled batches from a row store, labeled batches cycling through reshuffled labeled rows.

    An epoch has ``ceil(unlabeled rows / (batch_size × world_size))`` steps on every process (an
    equal count, as gradient averaging needs): process ``rank`` reads the chunks at positions
    ``rank, rank + world_size, …`` of the epoch's chunk permutation and shuffles their rows in
    buffers of ``buffer_chunks`` chunks; when its rows run out first, its last batches have fewer
    unlabeled rows. Labeled batches are always full. Without unlabeled rows an epoch has as many
    steps as one pass over the labeled rows takes.

    Arguments:
        unlabeled: the store of unlabeled rows (may have none).
        x_labeled, y_labeled: labeled features (in memory: there are few) and their class codes.
        batch_size, labeled_batch_size: rows of each kind per step and process.
        seed: seed of the shuffles and the noise; the chunk permutation depends on seed and epoch only.
        labeled_noise: how labeled rows are perturbed (:data:`Noise`, e.g.
            :class:`~flowgmm_cli.transforms.InputNoise` or :class:`~flowgmm_cli.augment.ImageAugment`),
            applied to each labeled batch (an augmentation), or ``None``.
        view_noise: the same for the second view of each unlabeled batch (:attr:`Batch.x_view`),
            or ``None`` for no view. Drawn from a generator of its own, so turning the view on
            changes no other draw.
        unlabeled_noise: the same for the unlabeled rows of each batch (after the view is made
            from the rows as stored), from a third generator; with the view on, it makes the
            rows the first view. Images use it to dequantise and shift.
        rank, world_size: this process's share of the unlabeled rows.
        buffer_chunks: chunks shuffled together.
        device: where batches go.
    """

    def __init__(
        self,
        unlabeled: RowStore,
        x_labeled: Tensor,
        y_labeled: Tensor,
        batch_size: int,
        labeled_batch_size: int,
        seed: int = 0,
        labeled_noise: Noise | None = None,
        rank: int = 0,
        world_size: int = 1,
        buffer_chunks: int = BUFFER_CHUNKS,
        device: torch.device | str | None = None,
        view_noise: Noise | None = None,
        unlabeled_noise: Noise | None = None,
    ) -> None:
        if len(x_labeled) == 0:
            raise ValueError("training needs at least one labeled row")
        self.unlabeled, self.x_labeled, self.y_labeled = unlabeled, x_labeled, y_labeled
        self.labeled_noise, self.view_noise, self.unlabeled_noise = labeled_noise, view_noise, unlabeled_noise
        self.rank, self.world_size, self.buffer_chunks = rank, world_size, buffer_chunks
        self.device = torch.device(device) if device is not None else x_labeled.device
        self.unlabeled_batch = min(batch_size, unlabeled.n_rows)
        self.labeled_batch = min(labeled_batch_size, len(x_labeled))
        if unlabeled.n_rows:
            self.steps_per_epoch = math.ceil(unlabeled.n_rows / (self.unlabeled_batch * world_size))
        else:
            self.steps_per_epoch = math.ceil(len(x_labeled) / self.labeled_batch)
        self.seed, self.epochs_done = seed, 0
        self.generator = torch.Generator().manual_seed(seed + 1_000_003 * rank)
        self.view_generator = torch.Generator().manual_seed(seed + 1_000_003 * rank + 7)
        self.unlabeled_generator = torch.Generator().manual_seed(seed + 1_000_003 * rank + 11)

    def epoch(self) -> Iterator[Batch]:
        for batch in self._batches():
            if self.view_noise is not None and len(batch.x_unlabeled):
                batch.x_view = self.view_noise(batch.x_unlabeled, self.view_generator)
            if self.unlabeled_noise is not None and len(batch.x_unlabeled):
                batch.x_unlabeled = self.unlabeled_noise(batch.x_unlabeled, self.unlabeled_generator)
            yield batch

    def _batches(self) -> Iterator[Batch]:
        self.epochs_done += 1
        labeled = self._labeled_batches()
        empty = self.x_labeled.new_zeros((0, self.x_labeled.shape[1]))
        if not self.unlabeled.n_rows:
            for _ in range(self.steps_per_epoch):
                yield Batch(*next(labeled), empty)
            return
        steps = 0
        pending = empty
        for rows, order in self._buffers(labeled):
            position = 0
            if len(pending):
                take = order[: self.unlabeled_batch - len(pending)]
                pending, position = torch.cat([pending, rows[take]]), len(take)
                if len(pending) < self.unlabeled_batch:
                    continue
                yield Batch(*next(labeled), pending)
                steps, pending = steps + 1, empty
            while position + self.unlabeled_batch <= len(rows) and steps < self.steps_per_epoch:
                yield Batch(*next(labeled), rows[order[position : position + self.unlabeled_batch]])
                position, steps = position + self.unlabeled_batch, steps + 1
            pending = rows[order[position:]] if steps < self.steps_per_epoch else empty
        while steps < self.steps_per_epoch:
            yield Batch(*next(labeled), pending)
            steps, pending = steps + 1, empty

    def _buffers(self, labeled: Iterator) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's buffers of the epoch: rows (in file order) and a random order of them.

        The labeled shuffle is drawn right after the first buffer's, so a store of one chunk draws
        exactly what an in-memory pass did.
        """
        bounds = self.unlabeled.chunk_bounds()
        if len(bounds) == 1:
            order = np.zeros(1, dtype=np.int64)
        else:
            order = np.random.default_rng([self.seed, self.epochs_done]).permutation(len(bounds))
        mine = order[self.rank :: self.world_size]
        for first in range(0, len(mine), self.buffer_chunks):
            group = sorted(mine[first : first + self.buffer_chunks])
            rows = torch.cat([self.unlabeled.read(*bounds[chunk]) for chunk in group]).to(self.device)
            shuffled = torch.randperm(len(rows), generator=self.generator).to(self.device)
            if first == 0:
                next(labeled)  # draws the labeled pass's first shuffle
            yield rows, shuffled

    def _labeled_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless labeled batches; the first ``next`` only draws the first shuffle (see :meth:`_buffers`)."""
        n = len(self.x_labeled)
        order, cursor = None, 0
        yield_first_shuffle = self.unlabeled.n_rows > 0
        while True:
            if order is None:
                order, cursor = torch.randperm(n, generator=self.generator), 0
                if yield_first_shuffle:
                    yield_first_shuffle = False
                    yield None  # type: ignore[misc]
            if cursor + self.labeled_batch > n:
                order, cursor = torch.randperm(n, generator=self.generator), 0
            rows = order[cursor : cursor + self.labeled_batch].to(self.x_labeled.device)
            cursor += self.labeled_batch
            x = self.x_labeled[rows]
            if self.labeled_noise is not None:
                x = self.labeled_noise(x, self.generator)
            yield x.to(self.device), self.y_labeled[rows].to(self.device)

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "generator": self.generator.get_state(), "view_generator": self.view_generator.get_state(),
            "unlabeled_generator": self.unlabeled_generator.get_state(), "epochs_done": torch.tensor([self.epochs_done]),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
        for name in ("view_generator", "unlabeled_generator"):
            if name in state:
                getattr(self, name).set_state(state[name])
        self.epochs_done = int(state["epochs_done"][0]) if "epochs_done" in state else 0


class InMemorySource(ShuffledSource):
    """A :class:`ShuffledSource` over tensors in memory (one process, one chunk).

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
        labeled_noise: Noise | None = None,
    ) -> None:
        super().__init__(ArrayStore(x_unlabeled), x_labeled, y_labeled, batch_size, labeled_batch_size, seed, labeled_noise)
