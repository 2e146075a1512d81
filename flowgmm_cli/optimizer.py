"""AdamW with gradient-norm clipping for :func:`~flowgmm_cli.training.train`: on the CPU, over one
flat copy of the parameters.

torch's ``foreach`` AdamW has multi-tensor kernels only on GPUs; on the CPU it runs each of its
dozen operations once per parameter tensor, and a vector flow has 32 small ones (digits: 99,840
numbers), so the optimiser cost more than a tenth of a training step. :class:`FlatAdamW` gathers
the parameters and their gradients into one tensor each, clips and steps that with torch's own
AdamW, and copies the new values back. Every operation of the update is elementwise, and the
clipping norm is computed from the same per-parameter norms, so the numbers are those of
``torch.optim.AdamW(..., foreach=True)`` with ``clip_grad_norm_(..., foreach=True)`` bit for bit
(``tests/test_optimizer.py``). torch's fused CPU kernel would be faster still but rounds
otherwise, which moves every model and the demo's one-draw accuracies (BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

__all__ = ["FlatAdamW", "FusedAdamW", "build_optimizer"]


class FlatAdamW:
    """AdamW over ``parameters`` kept as one flat tensor, with the gradient clipped to ``grad_clip``
    (its global 2-norm; 0 turns clipping off) before each step.

    The flat copy is read from the parameters at every step, so changes made to them between
    steps (ActNorm's data-dependent start, a checkpoint's weights) are kept. Every parameter must
    have a gradient when :meth:`step` runs: torch's AdamW skips one without, which a flat update
    cannot. :meth:`state_dict` has torch's per-parameter layout, so a checkpoint written with
    either optimiser resumes with the other.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> optimizer = FlatAdamW(layer.parameters(), lr=0.1, weight_decay=0.0, grad_clip=1.0)
        >>> optimizer.zero_grad()
        >>> layer(torch.ones(4, 3)).sum().backward()
        >>> before = layer.bias.detach().clone()
        >>> optimizer.step()
        >>> bool((layer.bias != before).all())
        True
    """

    def __init__(self, parameters: Iterable[nn.Parameter], lr: float, weight_decay: float, grad_clip: float) -> None:
        self.parameters = list(parameters)
        self.grad_clip = grad_clip
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.parameters])
        self._sizes = [p.numel() for p in self.parameters]
        self._values = self._split(self.flat)  # views that stay valid: the flat copy is refilled in place
        self.optimizer = torch.optim.AdamW([self.flat], lr=lr, weight_decay=weight_decay, foreach=True)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The one parameter group (``lr`` is set here for the schedule)."""
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Clip the gradients, update the flat copy and write it back to the parameters."""
        grads = [p.grad for p in self.parameters]
        missing = [index for index, grad in enumerate(grads) if grad is None]
        if missing:
            raise RuntimeError(f"parameter {missing[0]} has no gradient; FlatAdamW updates every parameter at each step")
        torch.cat([p.reshape(-1) for p in self.parameters], out=self.flat)
        self.flat.grad = torch.cat([grad.reshape(-1) for grad in grads])  # type: ignore[union-attr]
        if self.grad_clip > 0:
            total_norm = torch.nn.utils.get_total_norm(grads, foreach=True)  # type: ignore[arg-type]
            torch.nn.utils.clip_grads_with_norm_([self.flat], self.grad_clip, total_norm, foreach=True)
        self.optimizer.step()
        torch._foreach_copy_([p.detach() for p in self.parameters], self._values)

    def _split(self, flat: Tensor) -> list[Tensor]:
        """``flat`` cut into views shaped as the parameters."""
        return [part.view_as(p) for part, p in zip(flat.split(self._sizes), self.parameters)]

    def state_dict(self) -> dict[str, Any]:
        """torch's AdamW state for the parameters one by one (``exp_avg``, ``exp_avg_sq``, ``step``)."""
        inner = self.optimizer.state_dict()
        group = {**inner["param_groups"][0], "params": list(range(len(self.parameters)))}
        slots = inner["state"].get(0)
        if slots is None:
            return {"state": {}, "param_groups": [group]}
        moments = {name: self._split(slots[name]) for name in ("exp_avg", "exp_avg_sq")}
        state = {
            index: {"step": slots["step"].clone(), **{name: parts[index].clone() for name, parts in moments.items()}}
            for index in range(len(self.parameters))
        }
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state in torch's per-parameter layout (from :meth:`state_dict` or a plain AdamW)."""
        (group,) = state_dict["param_groups"]
        if len(group["params"]) != len(self.parameters):
            raise ValueError(f"the state has {len(group['params'])} parameters, the optimiser {len(self.parameters)}")
        state: dict[int, dict[str, Tensor]] = {}
        slots = [state_dict["state"][index] for index in group["params"] if index in state_dict["state"]]
        if slots:
            state[0] = {"step": slots[0]["step"], **{name: torch.cat([s[name].reshape(-1) for s in slots]) for name in ("exp_avg", "exp_avg_sq")}}
        self.optimizer.load_state_dict({"state": state, "param_groups": [{**group, "params": [0]}]})


def build_optimizer(parameters: list[nn.Parameter], device: torch.device, lr: float, weight_decay: float, grad_clip: float) -> "FlatAdamW | FusedAdamW":
    """:class:`FlatAdamW` on the CPU; on a GPU :class:`FusedAdamW`, whose kernel already updates
    every parameter in one launch."""
    if device.type == "cuda":
        return FusedAdamW(parameters, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip)
    return FlatAdamW(parameters, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip)


class FusedAdamW(torch.optim.AdamW):
    """torch's fused AdamW (for GPUs) that clips the gradients' global 2-norm to ``grad_clip`` (0: off)
    before each step, as :class:`FlatAdamW` does."""

    def __init__(self, parameters: Iterable[nn.Parameter], lr: float, weight_decay: float, grad_clip: float) -> None:
        self.clipped = list(parameters)
        self.grad_clip = grad_clip
        super().__init__(self.clipped, lr=lr, weight_decay=weight_decay, fused=True)

    def step(self, closure: Any = None) -> Any:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.grad_clip, foreach=True)
        return super().step(closure)
