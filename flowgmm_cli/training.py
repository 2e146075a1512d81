"""The training loop: batches from a data source, an objective of named terms, AdamW with a cosine
schedule, best-epoch selection, and checkpoints from which a resumed run continues bit for bit."""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .atomic import atomic_path
from .data import Batch, DataSource
from .distributed import all_gather_objects, all_reduce_sum, world
from .errors import InputError, TrainingDiverged
from .layers import ActNorm
from .model import FlowGMM
from .objective import Objective
from .optimizer import FlatAdamW, FusedAdamW, build_optimizer

__all__ = ["Schedule", "EpochReport", "TrainingCallback", "announce_phase", "ForwardingCallback", "NamedPhases", "train"]


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings of one run."""

    epochs: int
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    """Gradient-norm bound; 0 turns clipping off."""
    seed: int = 0
    max_steps: int | None = None
    """Stop after this many steps, within an epoch if need be (the cosine reaches 0 there); ``None``:
    every step of every epoch. For data so large that an epoch is more than a run."""
    autocast: torch.dtype | None = None
    """Mixed precision: the forward pass runs under ``torch.autocast`` with this dtype (the model
    keeps what must stay exact in float32: log-determinants, the mixture); ``None``: float32 throughout."""


@dataclass
class EpochReport:
    """What one epoch measured: the loss and each objective term, in nats per dimension, and the
    validation scores when there are validation rows."""

    epoch: int
    epochs: int
    loss: float
    terms: dict[str, float]
    val_accuracy: float | None = None
    val_nll: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """One flat entry of the model's training history."""
        row = {"epoch": self.epoch, "loss": self.loss, **self.terms}
        if self.val_accuracy is not None:
            row.update(val_accuracy=self.val_accuracy, val_nll=self.val_nll)
        return row


class TrainingCallback(Protocol):
    """What a fit reports as it goes; ``on_phase`` is optional (a fit calls it when present)."""

    def on_step(self, step: int, total_steps: int) -> None: ...

    def on_epoch_end(self, report: EpochReport) -> None: ...

    def on_phase(self, label: str) -> None:
        """Another fit of the same ``fit`` starts (``label`` says which, e.g. a calibration fit)."""
        ...


def announce_phase(callback: TrainingCallback | None, label: str) -> None:
    """Tell ``callback`` that another fit of the same ``fit`` starts, if it listens for that
    (``on_phase`` is optional: older callbacks lack it)."""
    announce = getattr(callback, "on_phase", None)
    if announce is not None:
        announce(label)


class ForwardingCallback:
    """A callback that passes every call on to ``callback`` (if any); subclasses change one."""

    def __init__(self, callback: TrainingCallback | None) -> None:
        self._callback = callback

    def on_step(self, step: int, total_steps: int) -> None:
        if self._callback is not None:
            self._callback.on_step(step, total_steps)

    def on_epoch_end(self, report: EpochReport) -> None:
        if self._callback is not None:
            self._callback.on_epoch_end(report)

    def on_phase(self, label: str) -> None:
        announce_phase(self._callback, label)


class NamedPhases(ForwardingCallback):
    """A callback whose phases are prefixed with ``label`` (which member of an ensemble, which
    candidate of a choice); a phase of ``""`` announces the label alone."""

    def __init__(self, callback: TrainingCallback | None, label: str) -> None:
        super().__init__(callback)
        self._label = label

    def on_phase(self, label: str) -> None:
        super().on_phase(f"{self._label}, {label}" if label else self._label)


@dataclass
class _State:
    """Everything a resumed run needs to continue exactly where the interrupted one stopped."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: list[float] | None = None
    best_weights: dict[str, Tensor] | None = None


def train(
    model: FlowGMM,
    source: DataSource,
    objective: Objective,
    schedule: Schedule,
    validation: tuple[Tensor, Tensor] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    fingerprint: str = "",
    callback: TrainingCallback | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place on ``source``'s batches and return the per-epoch history.

    Under ``torchrun`` (a process group of several processes) the model is wrapped in
    ``DistributedDataParallel``: each process trains on its source's share, gradients are averaged,
    data-dependent initialisation (ActNorm) comes from rank 0, the reported losses are averaged
    over processes, and only rank 0 writes the checkpoint (with every process's source position).
    With ``validation`` (feature rows and class codes) the weights of the epoch with the best
    validation accuracy (then NLL) are kept; otherwise those of the last epoch. With
    ``checkpoint`` the state (weights, optimiser, random generators, the source's position) is
    saved after every epoch, and ``resume=True`` continues from it to the same result as an
    uninterrupted run.
    """
    if validation is not None and len(validation[0]) == 0:
        raise ValueError("the validation set is empty; pass validation=None to keep the last epoch")
    torch.manual_seed(schedule.seed)
    here = world()
    total_steps = source.steps_per_epoch * schedule.epochs
    if schedule.max_steps is not None:
        total_steps = min(total_steps, schedule.max_steps)
    epochs = math.ceil(total_steps / source.steps_per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    device = trainable[0].device if trainable else torch.device("cpu")
    optimizer = build_optimizer(trainable, device, schedule.lr, schedule.weight_decay, schedule.grad_clip)
    state = _State()
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = _load_checkpoint(checkpoint, model, optimizer, source, fingerprint)
    forward: torch.nn.Module = model
    check_unchanged = getattr(getattr(source, "unlabeled", None), "check_unchanged", None)

    check_each_step = _checks_each_step(device)
    with _deterministic_cudnn(device.type == "cuda"):
        for epoch in range(state.epoch + 1, epochs + 1):
            model.train()
            sums = torch.zeros(1 + len(objective.terms), dtype=torch.float64, device=device)
            steps_done = 0
            for step_in_epoch, batch in enumerate(source.epoch()):
                step = (epoch - 1) * source.steps_per_epoch + step_in_epoch
                if step >= total_steps:
                    break
                if here.distributed and forward is model:
                    forward = _data_parallel(model, batch)
                with torch.autocast(device.type, dtype=schedule.autocast, enabled=schedule.autocast is not None):
                    loss, values = objective(forward, batch, step / total_steps)
                if check_each_step and not torch.isfinite(loss):
                    raise _diverged(epoch, loss.item())
                for group in optimizer.param_groups:
                    group["lr"] = _cosine(schedule.lr, step, total_steps)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                sums += torch.cat([loss.detach().reshape(1), values]).double()
                steps_done += 1
                if callback is not None and here.is_main:
                    callback.on_step(step + 1, total_steps)
            if check_unchanged is not None:
                check_unchanged()
            means = (all_reduce_sum(sums) / (steps_done * here.size)).tolist()
            if not all(math.isfinite(value) for value in means):  # every process sees the same sums
                raise _diverged(epoch, means[0])
            report = EpochReport(epoch, epochs, means[0], dict(zip(objective.names, means[1:])))
            if validation is not None:
                report.val_accuracy, report.val_nll = _validate(model, *validation)
                score = [report.val_accuracy, -report.val_nll]
                if state.best_score is None or score > state.best_score:
                    state.best_score, state.best_epoch = score, epoch
                    state.best_weights = copy.deepcopy(model.state_dict())
            state.epoch = epoch
            state.history.append(report.to_dict())
            if checkpoint is not None:
                _save_checkpoint(checkpoint, model, optimizer, source, state, fingerprint)
            if callback is not None and here.is_main:
                callback.on_epoch_end(report)
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    model.eval()
    return state.history


def _checks_each_step(device: torch.device) -> bool:
    """Whether every step's loss is checked: on the CPU a non-finite loss then stops the run at once;
    on a GPU the check would make the CPU wait for each step, so only the epoch's sums are checked."""
    return device.type != "cuda"


def _diverged(epoch: int, loss: float) -> TrainingDiverged:
    return TrainingDiverged(
        f"Training diverged in epoch {epoch}: the loss became {loss}; no model was written. "
        "Try a lower learning rate, gradient clipping or more labeled noise."
    )


@contextlib.contextmanager
def _deterministic_cudnn(active: bool) -> Iterator[None]:
    """cuDNN's fastest convolution gradients add in a varying order; while ``active``, fixed
    algorithms make a seed (and a resumed run) give the same model on a GPU as well."""
    if not active:
        yield
        return
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _data_parallel(model: FlowGMM, first: Batch) -> torch.nn.Module:
    """``model`` wrapped for gradient averaging, after its data-dependent initialisation.

    ActNorm layers initialise from their first batch: that pass runs here on each process, and
    wrapping then copies rank 0's parameters and buffers to every process. No buffer changes
    after that (statistics, permutations, the mixture's variance), so they are not broadcast again
    before every step (1.5 ms of a 35 ms step with two processes on two cores).
    """
    from torch.nn.parallel import DistributedDataParallel

    if any(isinstance(layer, ActNorm) for layer in model.modules()):
        with torch.no_grad():
            model(torch.cat([first.x_labeled, first.x_unlabeled]))
    device_ids = [model.prior.means.device.index] if model.prior.means.device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:  # torch >= 2.13
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    # Older torch: broadcast_buffers=False also skips the buffers' sync at wrapping; do that one here.
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def _cosine(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from ``base_lr`` to zero over the run."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


@torch.no_grad()
def _validate(model: FlowGMM, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Accuracy and mean NLL of p(y|x) on validation rows."""
    model.eval()
    log_proba = model.predict_log_proba(x)
    accuracy = (log_proba.argmax(1) == y).double().mean().item()
    nll = -log_proba.gather(1, y.unsqueeze(1)).mean().item()
    return accuracy, nll


def _save_checkpoint(
    path: str | os.PathLike, model: FlowGMM, optimizer: FlatAdamW | FusedAdamW, source: DataSource, state: _State, fingerprint: str
) -> None:
    """Rank 0 writes the checkpoint, with every process's source position (``source.RANK.*``)."""
    positions = all_gather_objects({k: v.cpu() for k, v in source.state_dict().items()})
    if not world().is_main:
        return
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    if state.best_weights is not None:
        tensors.update({f"best.{k}": v for k, v in state.best_weights.items()})
    optimizer_state = optimizer.state_dict()
    for index, slots in optimizer_state["state"].items():
        tensors.update({f"optim.{index}.{k}": v for k, v in slots.items()})
    for rank, position in enumerate(positions):
        tensors.update({f"source.{rank}.{k}": v for k, v in position.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "fingerprint": fingerprint,
        "epoch": state.epoch,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_score": state.best_score,
        "param_groups": optimizer_state["param_groups"],
        "world_size": len(positions),
    }
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"flowgmm_checkpoint": json.dumps(meta)})


def _load_checkpoint(
    path: str | os.PathLike, model: FlowGMM, optimizer: FlatAdamW | FusedAdamW, source: DataSource, fingerprint: str
) -> _State:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["flowgmm_checkpoint"])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError):
        raise InputError(f"Checkpoint '{path}' is not a flowgmm checkpoint; delete it or train without resuming.") from None
    if meta["fingerprint"] != fingerprint:
        raise InputError(f"Checkpoint '{path}' was made with other data or options; delete it or train without resuming.")
    here = world()
    if meta.get("world_size", 1) != here.size:
        raise InputError(
            f"Checkpoint '{path}' was written by {meta.get('world_size', 1)} processes but this run has {here.size}; "
            f"resume with {meta.get('world_size', 1)} processes or delete it."
        )
    device = next(model.parameters()).device

    def section(prefix: str, to_device: bool = True) -> dict[str, Tensor]:
        return {k[len(prefix) :]: (v.to(device) if to_device else v) for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(section("model."))
    slots: dict[int, dict[str, Tensor]] = {}
    for key, value in section("optim.").items():
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value if name != "step" else value.cpu()
    for group in meta["param_groups"]:
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    source.load_state_dict(section(f"source.{here.rank}.", to_device=False))
    torch.set_rng_state(tensors["rng.torch"])
    best = section("best.")
    return _State(meta["epoch"], meta["history"], meta["best_epoch"], meta["best_score"], best or None)
