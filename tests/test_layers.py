"""Invertible layers: exact log-determinants, inverses, gradients and statelessness."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from flowgmm_cli import layers as layers_module
from flowgmm_cli.layers import ActNorm, AffineCoupling, Flow, Permutation, build_realnvp
from flowgmm_testutils import perturb_


def _data(n: int, dim: int, seed: int = 1) -> torch.Tensor:
    """Rows that are neither centred nor unit-scaled, so ActNorm's initialisation does something."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64).to(torch.get_default_dtype())
    return x * torch.linspace(0.5, 2.0, dim) + torch.linspace(-1.0, 1.0, dim)


def _reverse_layer(dim: int) -> torch.nn.Module:
    """The feature reversal build_realnvp puts between couplings (a ``Reverse`` layer or ``Permutation.reverse``)."""
    if hasattr(layers_module, "Reverse"):
        return layers_module.Reverse()
    return Permutation.reverse(dim)


def _is_permutation_layer(layer: torch.nn.Module) -> bool:
    return isinstance(layer, Permutation) or type(layer).__name__ == "Reverse"


def _has_actnorm(layer: torch.nn.Module) -> bool:
    return any(isinstance(m, ActNorm) for m in layer.modules())


# name -> (constructor of a blank layer, number of features)
CASES = {
    "coupling-even": (lambda: AffineCoupling(4, hidden=8), 4),
    "coupling-odd": (lambda: AffineCoupling(5, hidden=8), 5),
    "coupling-odd-split3": (lambda: AffineCoupling(5, hidden=8, split=3), 5),
    "coupling-dropout-eval": (lambda: AffineCoupling(5, hidden=8, dropout=0.5), 5),
    "coupling-3-hidden-layers": (lambda: AffineCoupling(3, hidden=6, hidden_layers=3), 3),
    "actnorm": (lambda: ActNorm(5), 5),
    "permutation-reverse": (lambda: _reverse_layer(5), 5),
    "permutation-reversed-order": (lambda: Permutation(torch.arange(4, -1, -1)), 5),
    "permutation-random": (lambda: Permutation.random(6, torch.Generator().manual_seed(3)), 6),
    "flow-reverse-actnorm": (
        lambda: build_realnvp(5, coupling_layers=3, hidden=8, actnorm=True, permutation="reverse"),
        5,
    ),
    "flow-random-actnorm": (
        lambda: build_realnvp(
            6, coupling_layers=3, hidden=8, actnorm=True, permutation="random", dropout=0.2, seed=1
        ),
        6,
    ),
}
PARAMETRIC = [name for name in CASES if not name.startswith("permutation")]


def _prepared(name: str) -> tuple[torch.nn.Module, int]:
    """A layer past ActNorm's data-dependent initialisation, with perturbed parameters, in eval mode."""
    build, dim = CASES[name]
    torch.manual_seed(0)
    layer = build()
    if _has_actnorm(layer):
        layer.train()
        with torch.no_grad():
            layer(_data(64, dim, seed=7))
    perturb_(layer, scale=0.3, seed=11)
    return layer.eval(), dim


@pytest.mark.parametrize("name", list(CASES))
def test_log_det_equals_slogdet_of_jacobian(name, float64):
    layer, dim = _prepared(name)
    x = _data(5, dim)
    y, log_det = layer(x)
    assert y.shape == x.shape and y.dtype == torch.float64
    assert log_det.shape == (5,)
    for row in range(len(x)):
        single = lambda r: layer(r.unsqueeze(0))[0].squeeze(0)  # noqa: E731
        matrix = jacobian(single, x[row])
        assert matrix.shape == (dim, dim)
        sign, log_abs_det = torch.linalg.slogdet(matrix)
        assert sign != 0
        torch.testing.assert_close(log_det[row], log_abs_det, rtol=0, atol=1e-10)
        # A row's output does not depend on the other rows of the batch.
        torch.testing.assert_close(y[row], single(x[row]), rtol=0, atol=1e-12)
    if name in PARAMETRIC and name != "actnorm":
        # The perturbed layer is not a volume-preserving map, so the check above is not vacuous.
        assert log_det.abs().max() > 1e-3


@pytest.mark.parametrize("name", list(CASES))
def test_inverse_round_trip_on_a_layer_never_run_forward(name, float64):
    layer, dim = _prepared(name)
    build, _ = CASES[name]
    torch.manual_seed(123)  # a different initialisation, overwritten by the loaded state
    blank = build()
    blank.load_state_dict(layer.state_dict())
    blank.eval()
    y = _data(9, dim, seed=2)
    x = blank.inverse(y)  # first call on this object: no forward pass has cached anything
    torch.testing.assert_close(x, layer.inverse(y), rtol=0, atol=0)
    y_again, _ = blank(x)
    torch.testing.assert_close(y_again, y, rtol=1e-10, atol=1e-10)

    x0 = _data(9, dim, seed=3)
    y0, _ = layer(x0)
    torch.testing.assert_close(blank.inverse(y0), x0, rtol=1e-10, atol=1e-10)
    if name in PARAMETRIC:
        assert not torch.allclose(y0, x0, atol=1e-3), "the perturbed layer should not be the identity"


@pytest.mark.parametrize("name", PARAMETRIC)
def test_every_parameter_receives_a_gradient_and_a_step_lowers_the_loss(name, float64):
    layer, dim = _prepared(name)
    x = _data(32, dim, seed=4)

    def nll() -> torch.Tensor:
        z, log_det = layer(x)
        return (0.5 * z.pow(2).sum(-1) - log_det).mean()

    layer.train()  # dropout (where present) active: its path must pass gradients too
    nll().backward()
    for parameter_name, parameter in layer.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, f"{parameter_name} got an all-zero gradient"

    layer.eval()
    layer.zero_grad()
    before = nll()
    before.backward()
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-3)
    old = {k: v.detach().clone() for k, v in layer.named_parameters()}
    optimizer.step()
    after = nll()
    assert after < before
    for parameter_name, parameter in layer.named_parameters():
        assert not torch.equal(parameter, old[parameter_name]), f"{parameter_name} did not move"


@pytest.mark.parametrize("name", [name for name in CASES if name.startswith("permutation")])
def test_permutations_have_no_parameters_and_zero_log_det(name):
    layer, dim = _prepared(name)
    assert list(layer.parameters()) == []
    x = _data(4, dim).float()
    y, log_det = layer(x)
    assert torch.equal(log_det, torch.zeros(4))
    assert torch.equal(y.sort(dim=-1).values, x.sort(dim=-1).values)


@pytest.mark.parametrize("dim, kwargs", [(4, {}), (5, {}), (5, {"split": 1, "dropout": 0.3})])
def test_fresh_coupling_is_the_identity(dim, kwargs):
    layer = AffineCoupling(dim, hidden=8, **kwargs)
    x = _data(6, dim, seed=5).float()
    for mode in (layer.train, layer.eval):
        mode()
        y, log_det = layer(x)
        assert torch.equal(y, x)
        assert torch.equal(log_det, torch.zeros(len(x)))
        assert torch.equal(layer.inverse(x), x)


def test_fresh_flow_without_actnorm_only_permutes():
    x = _data(6, 5, seed=6).float()
    for permutation in ("reverse", "random"):
        flow = build_realnvp(5, coupling_layers=4, hidden=8, permutation=permutation)
        y, log_det = flow(x)
        assert torch.equal(log_det, torch.zeros(6))
        assert torch.equal(y.sort(dim=-1).values, x.sort(dim=-1).values)
    # An odd number of reversals (3 couplings, 2 reversals) gives back the input order.
    flow = build_realnvp(5, coupling_layers=3, hidden=8)
    assert torch.equal(flow(x)[0], x)


def _tensor_state(module: torch.nn.Module) -> dict[str, tuple]:
    """Every tensor a module (or a submodule) holds: parameters, buffers and plain attributes."""
    state = {}
    for prefix, sub in module.named_modules():
        for key, value in vars(sub).items():
            if isinstance(value, torch.Tensor):
                state[f"{prefix}.{key}"] = tuple(value.shape)
        for key, value in list(sub._parameters.items()) + list(sub._buffers.items()):
            state[f"{prefix}.{key}"] = None if value is None else tuple(value.shape)
    return state


@pytest.mark.parametrize("name", list(CASES))
def test_no_log_determinant_is_kept_as_module_state(name):
    layer, dim = _prepared(name)
    keys, tensors = set(layer.state_dict()), _tensor_state(layer)
    for mode in (layer.train, layer.eval):
        mode()
        for n in (7, 3):
            y, log_det = layer(_data(n, dim).float())
            assert log_det.shape == (n,)
            layer.inverse(y)
    assert set(layer.state_dict()) == keys
    assert _tensor_state(layer) == tensors


def test_actnorm_initialises_from_the_first_training_batch_only():
    layer = ActNorm(3)
    x = _data(200, 3, seed=8).float()
    y, log_det = layer(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(log_det, torch.full((200,), float(layer.log_scale.detach().sum())))
    assert bool(layer.initialized)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(x * 5 + 3)  # a second batch does not re-initialise
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())


def test_actnorm_does_not_initialise_in_eval_mode_or_on_one_row():
    layer = ActNorm(3)
    layer.eval()
    x = _data(10, 3).float()
    assert torch.equal(layer(x)[0], x)
    assert not bool(layer.initialized)
    layer.train()
    layer(x[:1])
    assert not bool(layer.initialized)
    assert torch.equal(layer.log_scale, torch.zeros(3))


def test_actnorm_loaded_from_a_state_dict_is_not_reinitialised():
    source = ActNorm(3)
    source(_data(50, 3).float())
    target = ActNorm(3)
    target.load_state_dict(source.state_dict())
    target.train()
    x = _data(50, 3, seed=9).float() * 4
    torch.testing.assert_close(target(x)[0], source(x)[0], rtol=0, atol=0)
    assert torch.equal(target.bias, source.bias) and torch.equal(target.log_scale, source.log_scale)


def test_permutation_orders():
    x4 = torch.arange(4.0).unsqueeze(0)
    assert _reverse_layer(4)(x4)[0].tolist() == [[3.0, 2.0, 1.0, 0.0]]
    assert Permutation(torch.tensor([2, 0, 3, 1]))(x4)[0].tolist() == [[2.0, 0.0, 3.0, 1.0]]
    assert Permutation(torch.tensor([2, 0, 3, 1])).inverse(torch.tensor([[2.0, 0.0, 3.0, 1.0]])).tolist() == [[0.0, 1.0, 2.0, 3.0]]
    a = Permutation.random(8, torch.Generator().manual_seed(5))
    b = Permutation.random(8, torch.Generator().manual_seed(5))
    assert torch.equal(a.order, b.order)
    assert sorted(a.order.tolist()) == list(range(8))
    assert a.order.tolist() != list(range(8))
    x = torch.arange(8.0).unsqueeze(0)
    assert torch.equal(a(x)[0], x[:, a.order])


def test_build_realnvp_structure_and_arguments():
    flow = build_realnvp(4, coupling_layers=3, hidden=8, actnorm=True)
    assert isinstance(flow, Flow)
    kinds = ["Permutation" if _is_permutation_layer(layer) else type(layer).__name__ for layer in flow.layers]
    assert kinds == ["ActNorm", "AffineCoupling", "Permutation"] * 2 + ["ActNorm", "AffineCoupling"]
    one = build_realnvp(1, coupling_layers=3, hidden=8)
    assert [type(layer) for layer in one.layers] == [ActNorm]
    x = torch.randn(5, 1)
    torch.testing.assert_close(one.inverse(one(x)[0]), x)
    probe = torch.arange(8.0).unsqueeze(0)
    orders = lambda f: [l(probe)[0].tolist() for l in f.layers if _is_permutation_layer(l)]  # noqa: E731,E741
    r1 = build_realnvp(8, coupling_layers=4, hidden=8, permutation="random", seed=1)
    r1_again = build_realnvp(8, coupling_layers=4, hidden=8, permutation="random", seed=1)
    r2 = build_realnvp(8, coupling_layers=4, hidden=8, permutation="random", seed=2)
    assert orders(r1) == orders(r1_again) != orders(r2)
    with pytest.raises(ValueError):
        build_realnvp(4, coupling_layers=2, hidden=8, permutation="shuffle")


@pytest.mark.parametrize("kwargs", [{"dim": 1}, {"dim": 4, "split": 0}, {"dim": 4, "split": 4}, {"dim": 4, "split": -1}])
def test_affine_coupling_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        AffineCoupling(hidden=8, **kwargs)


def test_narrow_input_linear_matches_nn_linear_and_passes_gradcheck(float64):
    """The reordered backward of the s/t networks' first layer computes the same gradients."""
    from flowgmm_cli.layers import NarrowInputLinear, _NarrowInputLinearFunction

    torch.manual_seed(0)
    layer = NarrowInputLinear(5, 7)
    reference = torch.nn.Linear(5, 7)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 11, 5, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    layer(x).sin().sum().backward()
    reference(x_ref).sin().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad)
    assert torch.allclose(layer.weight.grad, reference.weight.grad)
    assert torch.allclose(layer.bias.grad, reference.bias.grad)
    rows = torch.randn(13, 5, requires_grad=True)
    weight, bias = torch.randn(7, 5, requires_grad=True), torch.randn(7, requires_grad=True)
    assert torch.autograd.gradcheck(_NarrowInputLinearFunction.apply, (rows, weight, bias))
