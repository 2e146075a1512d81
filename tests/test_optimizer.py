"""The CPU optimiser over one flat copy of the parameters: torch's AdamW with clipping, bit for bit."""

from __future__ import annotations

import pytest
import torch

from flowgmm_cli.optimizer import FlatAdamW, FusedAdamW, build_optimizer

# Tensor shapes whose sizes are not multiples of a vector register (and one scalar), so any
# difference between the vectorised and the scalar remainder of an elementwise kernel would show.
SHAPES = [(7, 3), (7,), (13, 5, 2), (1,), (129,), (4, 33)]


def _parameters(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def _gradients(step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(shape, generator=generator) * (0.1 + step % 5) for shape in SHAPES]


class _TorchAdamW:
    """The reference: torch's foreach AdamW after ``clip_grad_norm_(foreach=True)``, as training ran before."""

    def __init__(self, parameters, lr, weight_decay, grad_clip):
        self.parameters, self.grad_clip = parameters, grad_clip
        self.optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, foreach=True)

    @property
    def param_groups(self):  # read each time: loading a state replaces the groups
        return self.optimizer.param_groups

    def step(self):
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip, foreach=True)
        self.optimizer.step()


def _run(optimizer, parameters, steps: range) -> None:
    for step in steps:
        optimizer.param_groups[0]["lr"] = 0.01 * (1 - step / 40)
        for parameter, grad in zip(parameters, _gradients(step)):
            parameter.grad = grad
        optimizer.step()


@pytest.mark.parametrize("grad_clip", [0.0, 1.0, 1e9])
def test_the_flat_update_is_torch_s_adamw_after_clipping_bit_for_bit(grad_clip):
    ours, reference = _parameters(), _parameters()
    _run(FlatAdamW(ours, lr=0.01, weight_decay=0.05, grad_clip=grad_clip), ours, range(30))
    _run(_TorchAdamW(reference, lr=0.01, weight_decay=0.05, grad_clip=grad_clip), reference, range(30))
    for mine, theirs, start in zip(ours, reference, _parameters()):
        assert torch.equal(mine, theirs)
        assert not torch.equal(mine, start)


def test_clipping_binds_where_the_gradient_norm_exceeds_it():
    """With a bound far below the gradients' norm the steps differ from unclipped ones (so the
    comparison above with ``grad_clip=1.0`` tests the clipping, not only Adam)."""
    clipped, unclipped = _parameters(), _parameters()
    _run(FlatAdamW(clipped, lr=0.01, weight_decay=0.0, grad_clip=1e-9), clipped, range(3))
    _run(FlatAdamW(unclipped, lr=0.01, weight_decay=0.0, grad_clip=0.0), unclipped, range(3))
    assert not any(torch.equal(a, b) for a, b in zip(clipped, unclipped))


@pytest.mark.parametrize("first, second", [(FlatAdamW, _TorchAdamW), (_TorchAdamW, FlatAdamW)])
def test_a_state_saved_by_one_optimiser_resumes_in_the_other_bit_for_bit(first, second):
    """The state is torch's per-parameter layout both ways, so checkpoints written before this
    optimiser existed resume with it."""
    through, straight = _parameters(), _parameters()
    _run(FlatAdamW(straight, 0.01, 0.05, 1.0), straight, range(20))
    before = first(through, 0.01, 0.05, 1.0)
    _run(before, through, range(10))
    after = second(through, 0.01, 0.05, 1.0)
    saved = before.state_dict() if first is FlatAdamW else before.optimizer.state_dict()
    (after if second is FlatAdamW else after.optimizer).load_state_dict(saved)
    _run(after, through, range(10, 20))
    assert all(torch.equal(a, b) for a, b in zip(through, straight))


def test_values_set_between_steps_are_kept():
    """ActNorm's first batch and a checkpoint's weights change parameters after the optimiser is made."""
    parameters = _parameters()
    optimizer = FlatAdamW(parameters, lr=0.01, weight_decay=0.0, grad_clip=0.0)
    with torch.no_grad():
        parameters[0].fill_(100.0)
    _run(optimizer, parameters, range(1))
    assert (parameters[0] - 100.0).abs().max() < 0.1


def test_a_parameter_without_a_gradient_is_an_error_not_a_silent_decay():
    parameters = _parameters()
    optimizer = FlatAdamW(parameters, lr=0.01, weight_decay=0.1, grad_clip=0.0)
    optimizer.zero_grad()
    parameters[0].grad = torch.ones(SHAPES[0])
    with pytest.raises(RuntimeError, match="parameter 1 has no gradient"):
        optimizer.step()


def test_the_cpu_gets_the_flat_optimiser():
    assert isinstance(build_optimizer(_parameters(), torch.device("cpu"), 0.01, 0.0, 1.0), FlatAdamW)


def test_the_gpu_s_optimiser_clips_before_torch_s_fused_step():
    """``FusedAdamW`` (built for CUDA) run on the CPU, where torch has the fused kernel too: with a
    bound that never binds it is torch's fused AdamW bit for bit; with one that binds it is not."""
    loose, reference, tight = _parameters(), _parameters(), _parameters()
    _run(FusedAdamW(loose, lr=0.01, weight_decay=0.05, grad_clip=1e9), loose, range(5))
    _run(torch.optim.AdamW(reference, lr=0.01, weight_decay=0.05, fused=True), reference, range(5))
    _run(FusedAdamW(tight, lr=0.01, weight_decay=0.05, grad_clip=1e-9), tight, range(5))
    assert all(torch.equal(a, b) for a, b in zip(loose, reference))
    assert not any(torch.equal(a, b) for a, b in zip(tight, reference))
