"""Invertible layers: exact log-determinants, inverses, gradients, statelessness and RealNVP's spec."""

from __future__ import annotations

import json

import pytest
import torch
from torch.autograd.functional import jacobian

from flowgmm_cli.layers import ActNorm, AffineCoupling, Flow, NarrowInputLinear, Permutation, RealNVP, Reverse, _CouplingFunction, _NarrowInputLinearFunction
from flowgmm_cli.options import Permutation as PermutationOption
from flowgmm_testutils import perturb_


def _data(n: int, dim: int, seed: int = 1) -> torch.Tensor:
    """Rows that are neither centred nor unit-scaled, so ActNorm's initialisation does something."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64).to(torch.get_default_dtype())
    return x * torch.linspace(0.5, 2.0, dim) + torch.linspace(-1.0, 1.0, dim)


def _is_permutation_layer(layer: torch.nn.Module) -> bool:
    return isinstance(layer, (Permutation, Reverse))


def _has_actnorm(layer: torch.nn.Module) -> bool:
    return any(isinstance(m, ActNorm) for m in layer.modules())


# name -> (constructor of a blank layer, number of features)
CASES = {
    "coupling-even": (lambda: AffineCoupling(4, hidden=8), 4),
    "coupling-odd": (lambda: AffineCoupling(5, hidden=8), 5),
    "coupling-odd-split3": (lambda: AffineCoupling(5, hidden=8, split=3), 5),
    "coupling-dropout-eval": (lambda: AffineCoupling(5, hidden=8, dropout=0.5), 5),
    "coupling-0-hidden-layers": (lambda: AffineCoupling(5, hidden=8, hidden_layers=0), 5),
    "coupling-3-hidden-layers": (lambda: AffineCoupling(3, hidden=6, hidden_layers=3), 3),
    "actnorm": (lambda: ActNorm(5), 5),
    "permutation-reverse": (lambda: Reverse(), 5),
    "permutation-reversed-order": (lambda: Permutation(torch.arange(4, -1, -1)), 5),
    "permutation-random": (lambda: Permutation.random(6, torch.Generator().manual_seed(3)), 6),
    "flow-reverse-actnorm": (lambda: RealNVP(5, coupling_layers=3, hidden=8, actnorm=True, permutation="reverse"), 5),
    "flow-random-actnorm": (
        lambda: RealNVP(6, coupling_layers=3, hidden=8, actnorm=True, permutation="random", dropout=0.2, seed=1),
        6,
    ),
    "flow-0-hidden-layers": (lambda: RealNVP(4, coupling_layers=2, hidden=8, hidden_layers=0), 4),
    "flow-one-feature": (lambda: RealNVP(1, coupling_layers=3, hidden=8), 1),
}
PARAMETRIC = [name for name in CASES if not name.startswith("permutation")]
VOLUME_PRESERVING_WHEN_FRESH = [name for name in PARAMETRIC if name not in ("actnorm", "flow-one-feature")]


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
    if name in VOLUME_PRESERVING_WHEN_FRESH:
        # The perturbed layer is not a volume-preserving map, so the check above is not vacuous.
        assert log_det.abs().max() > 1e-3
        # ... and the log-determinant differs between rows (it is not a constant).
        assert log_det.max() - log_det.min() > 1e-3


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
    names = [parameter_name for parameter_name, _ in layer.named_parameters()]
    assert names, "a parametric layer without parameters"
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
    assert list(layer.parameters()) == [] and layer.volume_preserving
    x = _data(4, dim).float()
    y, log_det = layer(x)
    assert torch.equal(log_det, torch.zeros(4))
    assert not torch.equal(y, x)
    assert torch.equal(y.sort(dim=-1).values, x.sort(dim=-1).values)


@pytest.mark.parametrize("dim, kwargs", [(4, {}), (5, {}), (5, {"split": 1, "dropout": 0.3}), (5, {"hidden_layers": 0})])
def test_fresh_coupling_is_the_identity(dim, kwargs):
    layer = AffineCoupling(dim, hidden=8, **kwargs)
    x = _data(6, dim, seed=5).float()
    for mode in (layer.train, layer.eval):
        mode()
        y, log_det = layer(x)
        assert torch.equal(y, x)
        assert torch.equal(log_det, torch.zeros(len(x)))
        assert torch.equal(layer.inverse(x), x)


@pytest.mark.parametrize(
    "hidden_layers, shapes",
    [
        (0, [(6, 2)]),  # 0 means 0: one linear map from the conditioning half to s and t
        (1, [(8, 2), (6, 8)]),
        (2, [(8, 2), (8, 8), (6, 8)]),
    ],
)
def test_hidden_layers_sets_the_depth_of_the_st_network(hidden_layers, shapes):
    layer = AffineCoupling(5, hidden=8, hidden_layers=hidden_layers)
    linears = [m for m in layer.net if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == shapes
    assert sum(isinstance(m, torch.nn.ReLU) for m in layer.net) == hidden_layers
    if hidden_layers:
        assert isinstance(linears[0], NarrowInputLinear)
    assert AffineCoupling(5, hidden=8).net[0].weight.shape == (8, 2), "one hidden layer by default"


def test_dropout_acts_in_training_mode_only():
    layer = perturb_(AffineCoupling(4, hidden=32, hidden_layers=2, dropout=0.5), seed=1)
    assert [m.p for m in layer.net if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert not any(isinstance(m, torch.nn.Dropout) for m in AffineCoupling(4, hidden=32, hidden_layers=2).net)
    x = _data(8, 4)
    layer.train()
    torch.manual_seed(0)
    assert not torch.equal(layer(x)[0], layer(x)[0])
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])


def test_coupling_log_scale_is_bounded_by_one_per_feature(float64):
    layer = perturb_(AffineCoupling(4, hidden=8), scale=20.0, seed=2)
    x = _data(50, 4, seed=3) * 10
    _, log_det = layer(x)
    assert log_det.abs().max() <= 2.0  # tanh bounds each of the 2 transformed features' log-scale to [-1, 1]
    assert log_det.abs().max() > 1.5  # large weights push it towards the bound


def test_fresh_flow_without_actnorm_only_permutes():
    x = _data(6, 5, seed=6).float()
    for permutation in ("reverse", "random"):
        flow = RealNVP(5, coupling_layers=4, hidden=8, permutation=permutation)
        y, log_det = flow(x)
        assert torch.equal(log_det, torch.zeros(6))
        assert torch.equal(y.sort(dim=-1).values, x.sort(dim=-1).values)
    # An odd number of reversals (4 couplings, 3 reversals) reverses; an even number gives the input order.
    assert torch.equal(RealNVP(5, coupling_layers=4, hidden=8)(x)[0], x.flip(-1))
    assert torch.equal(RealNVP(5, coupling_layers=3, hidden=8)(x)[0], x)


@pytest.mark.parametrize("name", [name for name in CASES if name.startswith("flow")])
def test_a_flow_s_log_det_is_its_layers_summed_in_order_bit_for_bit(name):
    """Skipping the permutations' zeros changes no bit of the sum (nor of its gradient)."""
    flow, dim = _prepared(name)
    assert not any(layer.volume_preserving for layer in flow.layers if not _is_permutation_layer(layer))
    x = _data(7, dim).float().requires_grad_()
    y, log_det = flow(x)
    h, expected = x, torch.zeros(7)
    for layer in flow.layers:
        h, layer_log_det = layer(h)
        expected = expected + layer_log_det
    assert torch.equal(y, h) and torch.equal(log_det, expected)
    inputs = [x, *flow.parameters()]
    for got, want in zip(torch.autograd.grad(log_det.sum(), inputs, allow_unused=True), torch.autograd.grad(expected.sum(), inputs, allow_unused=True)):
        assert (got is None and want is None) or torch.equal(got, want)


def test_a_flow_of_permutations_only_has_a_zero_log_det_per_row():
    y, log_det = Flow([Reverse(), Permutation(torch.tensor([2, 0, 1]))])(_data(5, 3).float())
    assert log_det.shape == (5,) and torch.equal(log_det, torch.zeros(5))


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
    assert Reverse()(x4)[0].tolist() == [[3.0, 2.0, 1.0, 0.0]]
    assert Permutation(torch.tensor([2, 0, 3, 1]))(x4)[0].tolist() == [[2.0, 0.0, 3.0, 1.0]]
    assert Permutation(torch.tensor([2, 0, 3, 1])).inverse(torch.tensor([[2.0, 0.0, 3.0, 1.0]])).tolist() == [[0.0, 1.0, 2.0, 3.0]]
    a = Permutation.random(8, torch.Generator().manual_seed(5))
    b = Permutation.random(8, torch.Generator().manual_seed(5))
    assert torch.equal(a.order, b.order)
    assert sorted(a.order.tolist()) == list(range(8))
    assert a.order.tolist() != list(range(8))
    x = torch.arange(8.0).unsqueeze(0)
    assert torch.equal(a(x)[0], x[:, a.order])


def test_realnvp_structure_and_arguments():
    flow = RealNVP(4, coupling_layers=3, hidden=8, actnorm=True)
    assert isinstance(flow, Flow)
    kinds = [type(layer).__name__ for layer in flow.layers]
    assert kinds == ["ActNorm", "AffineCoupling", "Reverse"] * 2 + ["ActNorm", "AffineCoupling"]
    random = RealNVP(4, coupling_layers=3, hidden=8, permutation="random")
    assert [type(layer).__name__ for layer in random.layers] == ["AffineCoupling", "Permutation"] * 2 + ["AffineCoupling"]
    one = RealNVP(1, coupling_layers=3, hidden=8)
    assert [type(layer) for layer in one.layers] == [ActNorm]
    probe = torch.arange(8.0).unsqueeze(0)
    orders = lambda f: [l(probe)[0].tolist() for l in f.layers if _is_permutation_layer(l)]  # noqa: E731,E741
    r1 = RealNVP(8, coupling_layers=4, hidden=8, permutation="random", seed=1)
    r1_again = RealNVP(8, coupling_layers=4, hidden=8, permutation="random", seed=1)
    r2 = RealNVP(8, coupling_layers=4, hidden=8, permutation="random", seed=2)
    assert orders(r1) == orders(r1_again) != orders(r2)
    assert len(set(map(str, orders(r1)))) == 3, "each coupling gets its own permutation"
    with pytest.raises(ValueError, match="permutation"):
        RealNVP(4, coupling_layers=2, hidden=8, permutation="shuffle")


SPECS = [
    {"dim": 5, "coupling_layers": 3, "hidden": 8},
    {"dim": 6, "coupling_layers": 3, "hidden": 8, "hidden_layers": 0, "actnorm": True, "permutation": "random", "seed": 4},
    {"dim": 4, "coupling_layers": 2, "hidden": 6, "hidden_layers": 2, "dropout": 0.25},
    {"dim": 1, "coupling_layers": 2, "hidden": 6},
]


@pytest.mark.parametrize("kwargs", SPECS)
def test_realnvp_spec_rebuilds_the_same_flow(kwargs, float64):
    torch.manual_seed(0)
    flow = RealNVP(**kwargs)
    if _has_actnorm(flow):
        flow(_data(64, kwargs["dim"], seed=7))
    perturb_(flow, seed=3).eval()
    spec = flow.spec()
    assert spec == json.loads(json.dumps(spec)), "the spec is plain JSON"
    assert spec["type"] == "realnvp"
    assert spec["hidden_layers"] == kwargs.get("hidden_layers", 1)
    torch.manual_seed(99)  # another initialisation, replaced by the loaded state
    rebuilt = RealNVP(**{key: value for key, value in spec.items() if key != "type"})
    rebuilt.load_state_dict(flow.state_dict(), strict=True)
    rebuilt.eval()
    assert rebuilt.spec() == spec
    x = _data(11, kwargs["dim"], seed=8)
    y, log_det = flow(x)
    y2, log_det2 = rebuilt(x)
    assert torch.equal(y, y2) and torch.equal(log_det, log_det2)
    assert torch.equal(rebuilt.inverse(y), flow.inverse(y))


def test_realnvp_spec_takes_the_permutation_option_as_its_name():
    flow = RealNVP(4, coupling_layers=2, hidden=8, permutation=PermutationOption.random)
    spec = flow.spec()
    assert type(spec["permutation"]) is str and spec["permutation"] == "random"
    assert isinstance(flow.layers[1], Permutation)


@pytest.mark.parametrize("kwargs", [{"dim": 1}, {"dim": 4, "split": 0}, {"dim": 4, "split": 4}, {"dim": 4, "split": -1}])
def test_affine_coupling_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        AffineCoupling(hidden=8, **kwargs)


def test_narrow_input_linear_matches_nn_linear_and_passes_gradcheck(float64):
    """The reordered backward of the s/t networks' first layer computes the same gradients."""
    torch.manual_seed(0)
    layer = NarrowInputLinear(5, 7)
    reference = torch.nn.Linear(5, 7)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 11, 5, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    layer(x).sin().sum().backward()
    reference(x_ref).sin().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-12, atol=1e-12)
    rows = torch.randn(13, 5, requires_grad=True)
    weight, bias = torch.randn(7, 5, requires_grad=True), torch.randn(7, requires_grad=True)
    assert torch.autograd.gradcheck(_NarrowInputLinearFunction.apply, (rows, weight, bias))


def _outputs_and_gradients(flow: torch.nn.Module, x: torch.Tensor, by_modules: bool, input_grad: bool) -> list[torch.Tensor]:
    """``z``, the log-determinant, and the gradients of a loss that uses both (of ``x`` when
    ``input_grad``, and of every parameter), with the couplings run by their modules or not."""
    for layer in flow.modules():
        if isinstance(layer, AffineCoupling):
            layer.forward = layer.forward_by_modules if by_modules else type(layer).forward.__get__(layer)
    flow.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(input_grad)
    z, log_det = flow(x)
    (0.37 * z.square().sum() - 1.3 * log_det.sum() + z[:, :2].sin().sum()).backward()
    return [z.detach(), log_det.detach(), *([x.grad] if input_grad else []), *(p.grad for p in flow.parameters())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("dim", "hidden", "hidden_layers", "input_grad"),
    [(64, 128, 1, True), (64, 128, 1, False), (13, 32, 0, True), (7, 16, 2, True), (2, 64, 1, True), (9, 24, 3, False)],
)
def test_a_coupling_s_one_node_computes_what_its_modules_do_bit_for_bit(dtype, dim, hidden, hidden_layers, input_grad):
    """The fused forward and hand-written backward (``_CouplingFunction``) against autograd through
    the modules: the same values and gradients, bit for bit, in training as in the default float32."""
    torch.manual_seed(dim + hidden_layers)
    flow = RealNVP(dim, coupling_layers=4, hidden=hidden, hidden_layers=hidden_layers).to(dtype)
    perturb_(flow, scale=0.05, seed=5)
    x = torch.randn(301, dim, dtype=dtype)
    fused = _outputs_and_gradients(flow, x, by_modules=False, input_grad=input_grad)
    by_modules = _outputs_and_gradients(flow, x, by_modules=True, input_grad=input_grad)
    assert len(fused) == len(by_modules) == 2 + input_grad + 4 * (hidden_layers + 1) * 2
    for ours, autograds in zip(fused, by_modules):
        assert torch.equal(ours, autograds)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in fused), "a zero or non-finite result would make the comparison vacuous"


def test_a_coupling_s_one_node_passes_gradcheck_in_all_its_inputs(float64):
    torch.manual_seed(0)
    layer = AffineCoupling(5, hidden=6, hidden_layers=2)
    perturb_(layer, scale=0.5, seed=2)
    weights = [p.detach().clone().requires_grad_() for linear in layer.net if isinstance(linear, torch.nn.Linear) for p in (linear.weight, linear.bias)]
    x = torch.randn(4, 5, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *w: _CouplingFunction.apply(x, 2, *w), (x, *weights))


def test_a_coupling_runs_by_its_modules_with_dropout_in_training_and_under_autocast(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(_CouplingFunction, "apply", lambda *args: calls.append("fused") or AffineCoupling.forward_by_modules(layer, args[0]))
    layer = AffineCoupling(4, hidden=8, dropout=0.5)
    x = torch.randn(3, 4)
    layer.train()
    layer(x)
    assert calls == []
    layer.eval()
    layer(x)
    assert calls == ["fused"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    assert calls == ["fused"]
    layer(x.unsqueeze(0))  # rows of another shape
    assert calls == ["fused"]
