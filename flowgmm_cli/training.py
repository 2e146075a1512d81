"""Semi-supervised maximum likelihood (equation 4 of the paper) with checkpoints and exact resume."""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .atomic import atomic_path
from .errors import InputError, TrainingDiverged
from .model import FlowGMM

__all__ = ["TrainingOptions", "EpochReport", "TrainingCallback", "fit_flowgmm"]


@dataclass(frozen=True)
class TrainingOptions:
    """Optimisation settings; :mod:`flowgmm_cli.defaults` fills them from the data's size."""

    epochs: int
    batch_size: int
    labeled_batch_size: int
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    unlabeled_weight: float = 1.0
    labeled_noise: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochReport:
    """What one epoch measured; losses are negative log-likelihoods in nats per dimension."""

    epoch: int
    epochs: int
    loss: float
    labeled_nll: float
    unlabeled_nll: float
    val_accuracy: float | None = None
    val_nll: float | None = None


class TrainingCallback(Protocol):
    def on_step(self, step: int, total_steps: int) -> None: ...

    def on_epoch_end(self, report: EpochReport) -> None: ...


@dataclass
class _State:
    """Everything a resumed run needs to continue exactly where the interrupted one stopped."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: list[float] | None = None
    best_weights: dict[str, Tensor] | None = None


def fit_flowgmm(
    model: FlowGMM,
    x_labeled: Tensor,
    y_labeled: Tensor,
    x_unlabeled: Tensor,
    options: TrainingOptions,
    validation: tuple[Tensor, Tensor] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    fingerprint: str = "",
    callback: TrainingCallback | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place on standardised inputs and return the per-epoch history.

    Each step takes a labeled batch (cycled) and an unlabeled batch; an epoch is one pass over the
    unlabeled rows (over the labeled rows when there are none). The loss is
    ``mean labeled NLL + unlabeled_weight × mean unlabeled NLL``, divided by the dimension.
    With ``validation`` the weights of the epoch with the best validation accuracy (then NLL) are
    kept; otherwise those of the last epoch. With ``checkpoint`` the state is saved after every
    epoch, and ``resume=True`` continues from it to the same result as an uninterrupted run.
    """
    if validation is not None and len(validation[0]) == 0:
        raise ValueError("the validation set is empty; pass validation=None to keep the last epoch")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    n_unlabeled, n_labeled = len(x_unlabeled), len(x_labeled)
    epoch_rows = n_unlabeled if n_unlabeled else n_labeled
    unlabeled_batch = min(options.batch_size, n_unlabeled) if n_unlabeled else 0
    labeled_batch = min(options.labeled_batch_size, n_labeled)
    steps_per_epoch = math.ceil(epoch_rows / (unlabeled_batch or labeled_batch))
    total_steps = steps_per_epoch * options.epochs
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    state = _State()
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = _load_checkpoint(checkpoint, model, optimizer, generator, fingerprint)
    dim = model.architecture.dim

    for epoch in range(state.epoch + 1, options.epochs + 1):
        model.train()
        unlabeled_order = torch.randperm(n_unlabeled, generator=generator)
        labeled_order, labeled_cursor = torch.randperm(n_labeled, generator=generator), 0
        sums = torch.zeros(3, dtype=torch.float64)
        for step_in_epoch in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + step_in_epoch
            if labeled_cursor + labeled_batch > len(labeled_order):
                labeled_order, labeled_cursor = torch.randperm(n_labeled, generator=generator), 0
            labeled_rows = labeled_order[labeled_cursor : labeled_cursor + labeled_batch].to(device)
            labeled_cursor += labeled_batch
            unlabeled_rows = unlabeled_order[step_in_epoch * unlabeled_batch : (step_in_epoch + 1) * unlabeled_batch]
            x_l = x_labeled[labeled_rows]
            if options.labeled_noise > 0:
                x_l = x_l + options.labeled_noise * torch.randn(x_l.shape, generator=generator).to(device)
            batch = torch.cat([x_l, x_unlabeled[unlabeled_rows.to(device)]]) if len(unlabeled_rows) else x_l
            joint = model.joint_log_prob_standardized(batch)
            labeled_nll = -joint[: len(x_l)].gather(1, y_labeled[labeled_rows].unsqueeze(1)).mean()
            unlabeled_nll = -torch.logsumexp(joint[len(x_l) :], dim=1).mean() if len(unlabeled_rows) else joint.new_zeros(())
            loss = (labeled_nll + options.unlabeled_weight * unlabeled_nll) / dim
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"Training diverged in epoch {epoch}: the loss became {loss.item()}; no model was written. "
                    "Try a lower --lr, a smaller --grad-clip or --labeled-noise."
                )
            for group in optimizer.param_groups:
                group["lr"] = _cosine(options.lr, step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, options.grad_clip)
            optimizer.step()
            sums += torch.tensor([loss.item(), labeled_nll.item() / dim, unlabeled_nll.item() / dim], dtype=torch.float64)
            if callback is not None:
                callback.on_step(step + 1, total_steps)
        means = (sums / steps_per_epoch).tolist()
        report = EpochReport(epoch, options.epochs, *means)
        if validation is not None:
            report.val_accuracy, report.val_nll = _validate(model, *validation)
            score = [report.val_accuracy, -report.val_nll]
            if state.best_score is None or score > state.best_score:
                state.best_score, state.best_epoch = score, epoch
                state.best_weights = copy.deepcopy(model.state_dict())
        state.epoch = epoch
        state.history.append(asdict(report))
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, generator, state, fingerprint)
        if callback is not None:
            callback.on_epoch_end(report)
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    model.eval()
    return state.history


def _cosine(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from ``base_lr`` to zero over the run."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


@torch.no_grad()
def _validate(model: FlowGMM, u: Tensor, y: Tensor) -> tuple[float, float]:
    """Accuracy and mean NLL of p(y|x) on standardised validation rows."""
    model.eval()
    log_proba = torch.log_softmax(model.joint_log_prob_standardized(u), dim=1)
    accuracy = (log_proba.argmax(1) == y).double().mean().item()
    nll = -log_proba.gather(1, y.unsqueeze(1)).mean().item()
    return accuracy, nll


def _save_checkpoint(
    path: str | os.PathLike,
    model: FlowGMM,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: _State,
    fingerprint: str,
) -> None:
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    if state.best_weights is not None:
        tensors.update({f"best.{k}": v for k, v in state.best_weights.items()})
    optimizer_state = optimizer.state_dict()
    for index, slots in optimizer_state["state"].items():
        tensors.update({f"optim.{index}.{k}": v for k, v in slots.items()})
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "fingerprint": fingerprint,
        "epoch": state.epoch,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_score": state.best_score,
        "param_groups": optimizer_state["param_groups"],
    }
    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata={"flowgmm_checkpoint": json.dumps(meta)},
        )


def _load_checkpoint(
    path: str | os.PathLike,
    model: FlowGMM,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    fingerprint: str,
) -> _State:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["flowgmm_checkpoint"])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError):
        raise InputError(f"Checkpoint '{path}' is not a flowgmm checkpoint; delete it or train without --resume.") from None
    if meta["fingerprint"] != fingerprint:
        raise InputError(
            f"Checkpoint '{path}' was made with other data or options; delete it or train without --resume."
        )
    device = next(model.parameters()).device

    def section(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(section("model."))
    slots: dict[int, dict[str, Tensor]] = {}
    for key, value in section("optim.").items():
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value if name != "step" else value.cpu()
    for group in meta["param_groups"]:
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    best = section("best.")
    return _State(meta["epoch"], meta["history"], meta["best_epoch"], meta["best_score"], best or None)
