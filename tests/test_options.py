"""TrainOptions: None means "choose from the data", 0 means 0; bounds, enumerations and the header round trip."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from flowgmm_cli.stores import ArrayStore

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.errors import InputError, OptionError
from flowgmm_cli.factory import build_model, build_objective, build_schedule, build_source, prepare
from flowgmm_cli.layers import AffineCoupling
from flowgmm_cli.options import Panel, Permutation, Scaling, TrainOptions, option_fields
from flowgmm_cli.training import train
from flowgmm_cli.transforms import Standardize

# name -> (inclusive lower bound or None, exclusive lower bound or None, inclusive upper bound or None)
BOUNDS = {
    "coupling_layers": (1, None, None),
    "hidden": (1, None, None),
    "hidden_layers": (0, None, None),
    "dropout": (0.0, None, 0.9),
    "means_scale": (0.0, None, None),
    "variance": (None, 0.0, None),
    "projection_dim": (0, None, None),
    "unlabeled_weight": (0.0, None, None),
    "labeled_noise": (0.0, None, None),
    "classification_weight": (0.0, None, None),
    "calibration_folds": (0, None, None),
    "members": (1, None, None),
    "consistency_weight": (0.0, None, None),
    "perturbation": (0.0, None, None),
    "epochs": (1, None, None),
    "batch_size": (1, None, None),
    "labeled_batch_size": (1, None, None),
    "lr": (None, 0.0, None),
    "weight_decay": (0.0, None, None),
    "grad_clip": (0.0, None, None),
    "val_fraction": (0.0, None, 0.9),
    "scales": (0, None, None),
    "translate": (0, None, None),
}
#: Fields whose default is chosen from the data.
AUTO = {
    "coupling_layers", "hidden", "hidden_layers", "means_scale", "variance", "scaling", "projection_dim",
    "unlabeled_weight", "labeled_noise", "perturbation", "epochs", "batch_size", "labeled_batch_size", "power_transform", "square_root",
    "calibration_folds", "classification_weight", "learn_weights", "flow", "scales", "translate", "consistency_weight", "members",
}  # fmt: skip


def test_the_bounds_table_covers_every_bounded_field():
    declared = {spec.name for spec in option_fields() if any(spec.metadata[key] is not None for key in ("min", "max", "above"))}
    assert declared == set(BOUNDS)
    for spec in option_fields():
        if spec.name in BOUNDS:
            low, above, high = BOUNDS[spec.name]
            assert (spec.metadata["min"], spec.metadata["above"], spec.metadata["max"]) == (low, above, high), spec.name


def test_none_marks_exactly_the_fields_chosen_from_the_data():
    defaults = TrainOptions()
    assert {spec.name for spec in option_fields() if getattr(defaults, spec.name) is None} == AUTO
    for spec in option_fields():
        assert (spec.metadata["auto"] is not None) == (spec.name in AUTO), spec.name
        assert spec.metadata["help"] and isinstance(spec.metadata["panel"], Panel), spec.name
    assert defaults.permutation is Permutation.reverse and defaults.random_state == 0 and defaults.device == "auto"
    assert (defaults.lr, defaults.weight_decay, defaults.grad_clip, defaults.dropout, defaults.val_fraction) == (1e-3, 1e-4, 10.0, 0.0, 0.0)


def _below(name: str) -> list[float]:
    low, above, _ = BOUNDS[name]
    if low is not None:
        return [low - 1 if isinstance(low, int) else low - 0.01]
    return [above, above - 1.0]


@pytest.mark.parametrize("name", list(BOUNDS))
def test_values_outside_the_bounds_raise_an_option_error_naming_the_parameter(name):
    low, above, high = BOUNDS[name]
    if low is not None:
        assert getattr(TrainOptions(**{name: low}), name) == low  # the bound itself is allowed
    else:
        assert getattr(TrainOptions(**{name: above + 1e-9}), name) == above + 1e-9
    rejected = _below(name) + ([high + 0.01] if high is not None else [])
    for value in rejected:
        with pytest.raises(OptionError) as caught:
            TrainOptions(**{name: value})
        error = caught.value
        assert isinstance(error, InputError)
        assert error.option == name
        assert str(error).startswith(f"{name} must be ") and str(error).endswith(f", got {value}.")
        flag = "--" + name.replace("_", "-")
        assert error.render(flag).startswith(f"{flag} must be ")
    if high is not None:
        assert getattr(TrainOptions(**{name: high}), name) == high


@pytest.mark.parametrize("name", ["dropout", "lr", "variance", "labeled_noise"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected(name, value):
    with pytest.raises(OptionError, match=f"^{name} must be a finite number") as caught:
        TrainOptions(**{name: value})
    assert caught.value.option == name


@pytest.mark.parametrize("name, value", [("hidden", np.int64(-3)), ("dropout", np.float32(5.0)), ("epochs", np.int32(0))])
def test_numpy_scalars_are_checked_too(name, value):
    with pytest.raises(OptionError):
        TrainOptions(**{name: value})


@pytest.mark.parametrize("name", ["dropout", "lr", "grad_clip", "permutation", "weight_decay"])
def test_none_is_rejected_where_no_rule_chooses_a_value(name):
    with pytest.raises(OptionError):
        TrainOptions(**{name: None})


@pytest.mark.parametrize(
    "name, given, member",
    [
        ("scaling", "shared", Scaling.shared),
        ("scaling", "feature", Scaling.feature),
        ("scaling", Scaling.shared, Scaling.shared),
        ("permutation", "random", Permutation.random),
        ("permutation", Permutation.reverse, Permutation.reverse),
    ],
)
def test_enumerations_accept_names_and_members(name, given, member):
    value = getattr(TrainOptions(**{name: given}), name)
    assert value is member


@pytest.mark.parametrize(
    "name, value, choices",
    [
        ("scaling", "minmax", "'feature', 'shared'"),
        ("scaling", Permutation.random, "'feature', 'shared'"),
        ("scaling", "Shared", "'feature', 'shared'"),
        ("permutation", "shuffle", "'reverse', 'random'"),
        ("permutation", 1, "'reverse', 'random'"),
    ],
)
def test_enumerations_reject_other_values_listing_the_choices(name, value, choices):
    with pytest.raises(OptionError) as caught:
        TrainOptions(**{name: value})
    assert caught.value.option == name
    assert str(caught.value).startswith(f"{name} must be one of {choices}, got ")


def test_options_are_frozen():
    options = TrainOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.hidden = 3  # type: ignore[misc]


FULL = dict(
    coupling_layers=3, hidden=16, hidden_layers=0, dropout=0.1, actnorm=True, permutation="random", means_scale=0.0,
    variance=2.0, learn_means=True, learn_weights=True, scaling="shared", projection_dim=0, unlabeled_weight=0.0,
    labeled_noise=0.0, epochs=5, batch_size=32, labeled_batch_size=8, lr=0.01, weight_decay=0.0, grad_clip=0.0,
    val_fraction=0.2, random_state=7, device="cpu",
)  # fmt: skip


@pytest.mark.parametrize("options", [TrainOptions(), TrainOptions(**FULL)], ids=["defaults", "every-field-set"])
def test_to_dict_and_from_dict_round_trip_through_json(options):
    values = options.to_dict()
    assert set(values) == {spec.name for spec in option_fields()}
    for name in ("permutation", "scaling"):
        value = getattr(options, name)
        assert values[name] == (None if value is None else value.value) and type(values[name]) in (str, type(None)), name
    assert values == json.loads(json.dumps(values))
    again = TrainOptions.from_dict(json.loads(json.dumps(values)))
    assert again == options
    assert again.permutation is options.permutation


def test_from_dict_ignores_unknown_keys():
    values = dict(TrainOptions(**FULL).to_dict(), colour="blue", hidden_layers_v3=[1, 2])
    assert TrainOptions.from_dict(values) == TrainOptions(**FULL)
    assert TrainOptions.from_dict({"epochs": 3, "from_the_future": True}) == TrainOptions(epochs=3)


def test_from_dict_still_checks_the_values():
    with pytest.raises(OptionError) as caught:
        TrainOptions.from_dict({"dropout": 2.0})
    assert caught.value.option == "dropout"


def test_the_estimator_takes_exactly_the_option_fields():
    params = FlowGMMClassifier().get_params()
    assert list(params) == sorted(spec.name for spec in option_fields())
    defaults = TrainOptions()
    assert all(params[name] == getattr(defaults, name) for name in params)
    with pytest.raises(TypeError, match="unexpected keyword argument 'hiden'"):
        FlowGMMClassifier(hiden=3)


# ------------------------------------------------------------------------- 0 means 0, end to end


def _rows(n: int = 60, dim: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=generator) * torch.linspace(1.0, 3.0, dim) + 2.0


def test_hidden_layers_zero_builds_couplings_with_one_linear_map():
    x = _rows()
    transform, options = prepare(ArrayStore(x), 10, 50, TrainOptions(hidden_layers=0, coupling_layers=2, hidden=8))
    assert options.hidden_layers == 0
    model = build_model(transform, 2, options)
    couplings = [layer for layer in model.flow.layers if isinstance(layer, AffineCoupling)]
    assert len(couplings) == 2
    for coupling in couplings:
        assert [type(m) for m in coupling.net] == [torch.nn.Linear]
        assert coupling.net[0].weight.shape == (2 * (3 - 1), 1)
    transform, options = prepare(ArrayStore(x), 10, 50, TrainOptions(coupling_layers=2, hidden=8))
    auto = build_model(transform, 2, options)
    assert [type(m).__name__ for m in auto.flow.layers[0].net] == ["NarrowInputLinear", "ReLU", "Linear"]


def test_projection_dim_zero_turns_projection_off():
    x = _rows(n=120, dim=80)
    transform, options = prepare(ArrayStore(x), 10, 110, TrainOptions(projection_dim=0))
    assert options.projection_dim == 0
    assert [type(t) for t in transform.layers] == [Standardize]
    assert build_model(transform, 2, dataclasses.replace(options, hidden=8, coupling_layers=1)).latent_dim == 80
    transform_auto, auto = prepare(ArrayStore(x), 10, 110, TrainOptions())
    assert auto.projection_dim == 32 and transform_auto.out_dim == 32


def test_zero_weights_and_noise_and_means_scale_are_used_as_zero():
    x = _rows()
    zeros = TrainOptions(unlabeled_weight=0.0, labeled_noise=0.0, means_scale=0.0, consistency_weight=0.0, hidden=8, coupling_layers=1)
    transform, options = prepare(ArrayStore(x), 10, 50, zeros)
    assert (options.unlabeled_weight, options.labeled_noise, options.means_scale, options.consistency_weight) == (0.0, 0.0, 0.0, 0.0)
    model = build_model(transform, 3, options)
    assert torch.equal(model.prior.means, torch.zeros(3, 3))
    assert model.prior.spec()["separation"] is None
    assert [weight for _, weight in build_objective(model, options).terms] == [1.0, 0.0]
    source = build_source(ArrayStore(x[10:]), x[:10], torch.tensor([0, 1, 2] * 3 + [0]), model, options)
    assert source.labeled_noise is None and source.view_noise is None and source.unlabeled_noise is None


def test_feature_vectors_get_the_consistency_term_and_images_do_not():
    vectors = prepare(ArrayStore(_rows()), 10, 50, TrainOptions())[1]
    assert vectors.consistency_weight == 3.0 and 0 < vectors.perturbation <= vectors.labeled_noise
    images = ArrayStore(torch.randint(0, 256, (40, 16)).float(), image_shape=(1, 4, 4))
    assert prepare(images, 10, 30, TrainOptions())[1].consistency_weight == 0.0


class _ClipSpy:
    """Records the bound of each clipping (``clip_grads_with_norm_``, which the CPU optimiser calls)."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.clip = torch.nn.utils.clip_grads_with_norm_

    def __call__(self, parameters, max_norm, *args, **kwargs):
        self.calls.append(max_norm)
        return self.clip(parameters, max_norm, *args, **kwargs)


@pytest.mark.parametrize("grad_clip, expected_calls", [(0.0, []), (2.5, [2.5] * 4)])
def test_grad_clip_zero_turns_clipping_off(monkeypatch, grad_clip, expected_calls):
    x = _rows(n=40)
    y = torch.tensor([0, 1] * 5)
    options = TrainOptions(grad_clip=grad_clip, epochs=2, batch_size=15, labeled_batch_size=5, hidden=8, coupling_layers=1)
    transform, options = prepare(ArrayStore(x), 10, 30, options)
    model = build_model(transform, 2, options)
    schedule = build_schedule(options)
    assert schedule.grad_clip == grad_clip
    spy = _ClipSpy()
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", spy)
    train(model, build_source(ArrayStore(x[10:]), x[:10], y, model, options), build_objective(model, options), schedule)
    assert spy.calls == expected_calls  # 2 epochs × 2 steps
