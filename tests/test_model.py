"""FlowGMM densities in feature space, encode/decode, specs, and the model file (safe loading and version 1 included)."""

from __future__ import annotations

import json
import math
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.linalg import null_space
from scipy.stats import multivariate_normal
from torch.autograd.functional import jacobian

from flowgmm_cli.errors import InputError
from flowgmm_cli.layers import RealNVP
from flowgmm_cli.model import FlowGMM
from flowgmm_cli.modelfile import FORMAT_VERSION, load_model, read_header, save_model
from flowgmm_cli.prior import GaussianMixturePrior
from flowgmm_cli.transforms import PrincipalProjection, Standardize, TransformChain
from flowgmm_testutils import perturb_

SCALES = torch.tensor([3.0, 0.5, 10.0, 1.0])
OFFSETS = torch.tensor([5.0, -2.0, 0.0, 1.0])


def _features(n: int, seed: int = 0, dim: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator, dtype=torch.float64).to(torch.get_default_dtype())
    mixed = x + 0.5 * x.roll(1, dims=1)  # correlated features, so a projection has a leading direction
    return (mixed * SCALES + OFFSETS)[:, :dim]


def _model(dim: int = 3, k: int = 0, actnorm: bool = True, learn_weights: bool = False, **flow_kwargs) -> FlowGMM:
    """A model with fitted standardisation (and projection to ``k`` directions), ActNorm initialised,
    perturbed weights, non-uniform mixture weights and a calibration scale."""
    torch.manual_seed(0)
    x = _features(200, dim=dim)
    standardize = Standardize.fit(x)
    parts = [standardize] + ([PrincipalProjection.fit(standardize(x)[0], k)] if k else [])
    transform = TransformChain(parts)
    latent = k or dim
    flow = RealNVP(latent, coupling_layers=3, hidden=8, actnorm=actnorm, **flow_kwargs)
    prior = GaussianMixturePrior(3, latent, variance=1.3, learn_weights=learn_weights, separation=4.0)
    model = FlowGMM(transform, flow, prior)
    model.train()
    with torch.no_grad():
        model.flow(model.transform(x)[0])  # ActNorm's data-dependent initialisation
    perturb_(model.flow, scale=0.2, seed=1)
    with torch.no_grad():
        model.prior.weight_logits.copy_(torch.tensor([0.2, -0.4, 1.0]))
        model.prior.log_temperature.fill_(0.3)
    return model.eval()


def test_log_prob_is_a_change_of_variables_in_feature_space(float64):
    model = _model()
    x = _features(6, seed=1)
    assert not torch.allclose(model.transform.layers[0].scale, torch.ones(3))
    joint = model(x)
    assert joint.shape == (6, 3)
    assert torch.equal(model.joint_log_prob(x), joint)
    full_map = lambda row: model.encode(row.unsqueeze(0)).squeeze(0)  # noqa: E731
    for i in range(len(x)):
        z = full_map(x[i])
        _, log_abs_det = torch.linalg.slogdet(jacobian(full_map, x[i]))
        expected_joint = model.prior.class_log_prob(z.unsqueeze(0)).squeeze(0) + log_abs_det
        torch.testing.assert_close(joint[i], expected_joint, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(model.log_prob(x[i : i + 1])[0], torch.logsumexp(expected_joint, 0), rtol=1e-10, atol=1e-10)
    # The standardisation's share of the log-determinant is -Σ log(scale), counted once.
    scale = model.transform.layers[0].scale
    u = (x - model.transform.layers[0].mean) / scale
    z, flow_log_det = model.flow(u)
    by_hand = model.prior.class_log_prob(z) + flow_log_det.unsqueeze(-1) - torch.log(scale).sum()
    torch.testing.assert_close(joint, by_hand, rtol=1e-12, atol=1e-12)


def test_density_integrates_to_one_in_feature_space(float64):
    """On a 2-D model, ∫ p(x) dx over a wide grid is 1: the standardisation's Jacobian is counted once."""
    torch.manual_seed(0)
    standardize = Standardize.fit(_features(300, dim=2))  # scales about 3 and 0.5, offsets 5 and -2
    model = FlowGMM(TransformChain([standardize]), RealNVP(2, coupling_layers=2, hidden=8), GaussianMixturePrior(2, 2))
    perturb_(model.flow, scale=0.05, seed=2)
    model.eval()
    mean, scale = standardize.mean, standardize.scale
    a = torch.linspace(float(mean[0] - 12 * scale[0]), float(mean[0] + 12 * scale[0]), 501)
    b = torch.linspace(float(mean[1] - 12 * scale[1]), float(mean[1] + 12 * scale[1]), 501)
    grid = torch.cartesian_prod(a, b)
    with torch.no_grad():
        density = model.log_prob(grid).exp().reshape(501, 501)
    cell = (a[1] - a[0]) * (b[1] - b[0])
    assert float(density.sum() * cell) == pytest.approx(1.0, abs=5e-3)


def test_predict_log_proba_is_a_normalised_posterior():
    model = _model()
    x = _features(40, seed=2)
    log_proba = model.predict_log_proba(x)
    assert log_proba.shape == (40, 3)
    torch.testing.assert_close(log_proba.exp().sum(-1), torch.ones(40))
    joint = model(x)
    # Bayes' rule tempered at the prior's temperature (0.3 in log here): log-joints divided by T.
    torch.testing.assert_close(log_proba, torch.log_softmax(joint / math.exp(0.3), -1))
    assert len(set(log_proba.argmax(-1).tolist())) > 1, "the posterior is not the same for every row"


@pytest.mark.parametrize("k", [0, 2])
def test_decode_inverts_encode(k, float64):
    model = _model(dim=4 if k else 3, k=k)
    x = _features(25, seed=3, dim=model.in_dim)
    z = model.encode(x)
    assert z.shape == (25, model.latent_dim)
    assert not torch.allclose(z, model.transform(x)[0], atol=1e-3)
    # Without a projection decode recovers x; with one, the point of the principal subspace.
    torch.testing.assert_close(model.decode(z), model.transform.inverse(model.transform(x)[0]), rtol=1e-10, atol=1e-10)
    if not k:
        torch.testing.assert_close(model.decode(z), x, rtol=1e-10, atol=1e-10)
    z2 = torch.randn(10, model.latent_dim, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model.encode(model.decode(z2)), z2, rtol=1e-10, atol=1e-10)


def test_sample_returns_feature_space_points_and_classes(float64):
    model = _model()
    x, y = model.sample(4000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 3) and y.shape == (4000,)
    assert set(y.tolist()) == {0, 1, 2}
    # The largest weight (logit 1.0) is the most frequent class.
    assert np.bincount(y.numpy()).argmax() == 2
    labels = torch.tensor([2, 2, 0, 1, 1])
    x_given, y_given = model.sample(5, labels=labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y_given, labels)
    z_expected, _ = model.prior.sample(5, labels, torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.encode(x_given), z_expected, rtol=1e-10, atol=1e-10)


def test_parts_must_agree_on_the_dimension():
    transform = TransformChain([Standardize(3)])
    with pytest.raises(ValueError, match="dimension"):
        FlowGMM(transform, RealNVP(2, coupling_layers=1, hidden=4), GaussianMixturePrior(2, 2))
    model = FlowGMM(transform, RealNVP(3, coupling_layers=1, hidden=4), GaussianMixturePrior(4, 3))
    assert (model.in_dim, model.latent_dim, model.n_classes) == (3, 3, 4)


COMPOSITIONS = {
    "standardize": {},
    "projection": {"dim": 4, "k": 2},
    "random-permutation-no-hidden-layer": {"permutation": "random", "hidden_layers": 0, "seed": 5, "learn_weights": True},
    "no-actnorm-dropout": {"actnorm": False, "dropout": 0.3, "hidden_layers": 2},
}


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_from_spec_rebuilds_the_same_model(name, float64):
    model = _model(**COMPOSITIONS[name])
    spec = model.spec()
    assert spec == json.loads(json.dumps(spec)), "the spec is plain JSON"
    assert set(spec) == {"transform", "flow", "prior"}
    torch.manual_seed(42)  # another initialisation, replaced by the loaded tensors
    rebuilt = FlowGMM.from_spec(spec)
    assert rebuilt.spec() == spec
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    x = _features(20, seed=6, dim=model.in_dim)
    assert torch.equal(rebuilt(x), model(x))
    assert torch.equal(rebuilt.encode(x), model.encode(x))
    z = torch.randn(7, model.latent_dim, generator=torch.Generator().manual_seed(2))
    assert torch.equal(rebuilt.decode(z), model.decode(z))
    for key, parameter in model.named_parameters():
        assert dict(rebuilt.named_parameters())[key].requires_grad == parameter.requires_grad, key


def test_from_spec_rejects_unknown_parts():
    spec = _model().spec()
    with pytest.raises(ValueError, match="unknown flow"):
        FlowGMM.from_spec(dict(spec, flow=dict(spec["flow"], type="glow")))
    with pytest.raises(ValueError, match="prior"):
        FlowGMM.from_spec(dict(spec, prior=dict(spec["prior"], type="student-t")))


# ------------------------------------------------------------------------------------ model file


def _saved(tmp_path: Path, **kwargs) -> tuple[FlowGMM, Path, dict]:
    model = _model(learn_weights=True, **kwargs)
    path = tmp_path / "model.safetensors"
    extra = {"classes": ["a", "b", "c"], "extractor": None, "nested": {"x": [1, 2.5]}}
    save_model([model], path, extra)
    return model, path, extra


@pytest.mark.parametrize("kwargs", [{}, {"dim": 4, "k": 2}])
def test_save_load_round_trip_gives_identical_outputs_and_header(tmp_path, kwargs):
    model, path, extra = _saved(tmp_path, **kwargs)
    [loaded], header = load_model(path)
    assert not loaded.training
    assert loaded.spec() == model.spec()
    x = _features(30, seed=5, dim=model.in_dim)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded.encode(x), model.encode(x))
        z = torch.randn(7, model.latent_dim)
        assert torch.equal(loaded.decode(z), model.decode(z))
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert header == read_header(path)
    assert header["format"] == "flowgmm" and header["format_version"] == FORMAT_VERSION == 3
    assert header["members"] == [model.spec()]
    assert header["temperature"] == pytest.approx(math.exp(0.3))
    for key, value in extra.items():
        assert header[key] == value
    assert float(loaded.prior.log_temperature) == pytest.approx(0.3)
    # The write was atomic: the folder holds the model file and nothing else.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_the_model_wins_over_stale_header_entries(tmp_path):
    model = _model()
    path = tmp_path / "m.safetensors"
    save_model([model], path, {"format_version": 99, "members": [{"stale": True}], "temperature": 5.0, "classes": [1, 2, 3]})
    header = read_header(path)
    assert header["format_version"] == 3 and header["members"] == [model.spec()]
    assert header["temperature"] == pytest.approx(math.exp(0.3)) and header["classes"] == [1, 2, 3]


def test_saving_over_an_existing_file_replaces_it(tmp_path):
    _, path, _ = _saved(tmp_path)
    other = FlowGMM(TransformChain([Standardize(2)]), RealNVP(2, coupling_layers=1, hidden=4), GaussianMixturePrior(2, 2))
    save_model([other], path, {"classes": [0, 1]})
    [loaded], header = load_model(path)
    assert header["members"][0]["flow"]["dim"] == 2 and header["classes"] == [0, 1]
    assert loaded.in_dim == 2


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "absent.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        read_header(tmp_path / "absent.safetensors")
    with pytest.raises(InputError):
        load_model(tmp_path)  # a folder is not a model file


@pytest.mark.parametrize("content", [b"", b"hello, this is not a model\n", b"\x00" * 64, b"\xff" * 8 + b"{}"])
def test_non_safetensors_file_raises_input_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a flowgmm model file"):
        load_model(path)
    with pytest.raises(InputError, match="not a flowgmm model file"):
        read_header(path)


def test_truncated_model_file_raises_input_error(tmp_path):
    _, path, _ = _saved(tmp_path)
    data = path.read_bytes()
    for size in (7, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut{size}.safetensors"
        cut.write_bytes(data[:size])
        with pytest.raises(InputError):
            load_model(cut)


def test_safetensors_without_flowgmm_header_raises_input_error(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(InputError, match="no flowgmm header"):
        load_model(plain)
    other_metadata = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other_metadata), metadata={"format": "pt"})
    with pytest.raises(InputError, match="no flowgmm header"):
        read_header(other_metadata)
    broken_json = tmp_path / "broken.safetensors"
    save_file({"weight": torch.zeros(2)}, str(broken_json), metadata={"flowgmm": "{not json"})
    with pytest.raises(InputError, match="no flowgmm header"):
        load_model(broken_json)


@pytest.mark.parametrize("header", [[1, 2], "model", 3, None])
def test_header_that_is_not_an_object_raises_input_error(tmp_path, header):
    path = tmp_path / "odd.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path), metadata={"flowgmm": json.dumps(header)})
    with pytest.raises(InputError, match="damaged flowgmm header"):
        load_model(path)
    with pytest.raises(InputError, match="damaged flowgmm header"):
        read_header(path)


def _refused_entry(tmp_path: Path, key: str, value: object) -> None:
    """A header whose ``key`` entry is ``value`` is refused by both readers, naming the entry."""
    path = tmp_path / "odd.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path), metadata={"flowgmm": json.dumps({"format_version": 3, key: value})})
    for read in (read_header, load_model):
        with pytest.raises(InputError, match=f"damaged flowgmm header \\(its '{key}' entry\\)"):
            read(path)


@pytest.mark.parametrize("calibration", ["oops", [1], {"n": "many"}, {"accuracy": True}, {"source": "calibration fits", "standard_error": None}])
def test_a_calibration_entry_info_cannot_read_is_a_damaged_header(tmp_path, calibration):
    """The entry ``info`` formats (counts and rates) must be numbers, or the file is refused in one sentence."""
    _refused_entry(tmp_path, "calibration", calibration)


@pytest.mark.parametrize(
    "choice",
    [
        "oops", [32], {"sizes": 32}, {"sizes": [32, 64], "held_out_nll": [0.9], "standard_error": [0.1, 0.0]},
        {"sizes": ["32"], "held_out_nll": [0.9], "standard_error": [0.0]}, {"sizes": [32], "held_out_nll": [True], "standard_error": [0.0]},
    ],
)  # fmt: skip
def test_a_projection_choice_info_cannot_read_is_a_damaged_header(tmp_path, choice):
    _refused_entry(tmp_path, "projection_choice", choice)


def _with_header(tmp_path: Path, name: str, tensors: dict, header: dict) -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path), metadata={"flowgmm": json.dumps(header)})
    return path


def test_damaged_or_newer_model_file_raises_input_error(tmp_path):
    model, path, _ = _saved(tmp_path)
    header = read_header(path)
    tensors = {f"members.0.{k}": v.contiguous() for k, v in model.state_dict().items()}
    [spec] = header["members"]
    cases = {
        "missing-tensor": ({k: v for k, v in tensors.items() if k != "members.0.transform.layers.0.scale"}, header),
        "extra-tensor": (dict(tensors, stray=torch.zeros(1)), header),
        "second-member-without-tensors": (tensors, dict(header, members=[spec, spec])),
        "wrong-width": (tensors, dict(header, members=[dict(spec, flow=dict(spec["flow"], hidden=16))])),
        "unknown-field": (tensors, dict(header, members=[dict(spec, flow=dict(spec["flow"], colour="blue"))])),
        "unknown-flow": (tensors, dict(header, members=[dict(spec, flow=dict(spec["flow"], type="glow"))])),
        "unknown-transform": (tensors, dict(header, members=[dict(spec, transform={"type": "whiten"})])),
        "no-members": (tensors, {k: v for k, v in header.items() if k != "members"}),
        "empty-members": (tensors, dict(header, members=[])),
        "members-not-a-list": (tensors, dict(header, members=spec)),
    }
    for name, (case_tensors, case_header) in cases.items():
        with pytest.raises(InputError, match="damaged or from an incompatible version"):
            load_model(_with_header(tmp_path, name, case_tensors, case_header))

    newer = _with_header(tmp_path, "newer", tensors, dict(header, format_version=FORMAT_VERSION + 1))
    with pytest.raises(InputError, match="format version 4; upgrade flowgmm"):
        load_model(newer)
    with pytest.raises(InputError, match="format version 4; upgrade flowgmm"):
        read_header(newer)


def test_a_seed_ensemble_round_trips_member_by_member(tmp_path):
    members = [_model(), _model()]
    with torch.no_grad():
        for parameter in members[1].flow.parameters():
            parameter.add_(0.05)  # the second member's weights differ from the first's
    path = tmp_path / "ensemble.safetensors"
    save_model(members, path, {"classes": ["a", "b", "c"]})
    loaded, header = load_model(path)
    assert header["members"] == [member.spec() for member in members] and len(loaded) == 2
    x = _features(20, seed=3, dim=members[0].in_dim)
    with torch.no_grad():
        assert not torch.equal(members[0](x), members[1](x))
        for original, reloaded in zip(members, loaded, strict=True):
            assert torch.equal(reloaded(x), original(x))


def test_a_member_without_its_tensors_is_named_in_one_short_sentence(tmp_path):
    members = [_model(), _model()]
    path = tmp_path / "ensemble.safetensors"
    save_model(members, path, {"classes": ["a", "b", "c"]})
    header = read_header(path)
    tensors = {f"members.0.{k}": v.contiguous() for k, v in members[0].state_dict().items()}
    with pytest.raises(InputError, match=r"member 2 of 2 lacks \d+ of its tensors") as raised:
        load_model(_with_header(tmp_path, "cut", tensors, header))
    assert len(str(raised.value)) < 300, "one sentence, not the list of every missing tensor"


def test_a_version_2_file_of_one_model_is_read(tmp_path):
    model = _model()
    header = {"format": "flowgmm", "format_version": 2, "model": model.spec(), "temperature": 1.0, "classes": ["a", "b", "c"]}
    path = _with_header(tmp_path, "v2", {k: v.contiguous() for k, v in model.state_dict().items()}, header)
    [loaded], read = load_model(path)
    assert read["format_version"] == FORMAT_VERSION and read["members"] == [model.spec()] and "model" not in read
    assert read == read_header(path)
    x = _features(10, seed=4, dim=model.in_dim)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(
    "header",
    [
        {"format": "flowgmm", "format_version": "2", "model": {}},  # version as a string: TypeError in the '>' check
        {"format": "flowgmm", "format_version": 1, "architecture": [1, 2]},  # v1 architecture not an object
    ],
)
def test_damaged_header_fields_raise_input_error(tmp_path, header):
    path = _with_header(tmp_path, "odd", {"weight": torch.zeros(1)}, header)
    with pytest.raises(InputError):
        load_model(path)


def test_read_header_of_a_damaged_version_1_file_raises_input_error(tmp_path):
    path = _with_header(tmp_path, "v1", {"weight": torch.zeros(1)}, {"format": "flowgmm", "format_version": 1, "architecture": {"dim": 2}})
    with pytest.raises(InputError):
        load_model(path)  # load_model already says so
    with pytest.raises(InputError):
        read_header(path)


class _CreatesMarker:
    """Unpickling this object opens (and so creates) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_and_never_executed(tmp_path):
    # Unpickling this payload would create the marker file (see _CreatesMarker.__reduce__).
    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps(_CreatesMarker(marker))
    # the payload would call open(marker) when unpickled (read from its opcodes, never unpickled here)
    strings = [arg for _, arg, _ in pickletools.genops(payload) if isinstance(arg, str)]
    assert "open" in strings and str(marker) in strings
    for name in ("model.safetensors", "model.pkl", "model.pt"):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(InputError):
            load_model(path)
        with pytest.raises(InputError):
            read_header(path)
    assert not marker.exists()


def test_torch_save_file_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "model.pt"
    torch.save({"state": _CreatesMarker(marker)}, path)
    assert not marker.exists()
    with pytest.raises(InputError):
        load_model(path)
    with pytest.raises(InputError):
        read_header(path)
    assert not marker.exists()
    os.remove(path)


# ------------------------------------------------------------------------ format version 1


V1_CLASSES = ["cat", "dog", "eel"]


def _version_1_file(path: Path, projection_dim: int | None) -> dict:
    """A model file as flowgmm wrote it before the composition (format version 1), built by hand:
    one ``architecture`` entry, tensors ``feature_mean``, ``feature_scale``, ``flow.layers.…``,
    ``prior.…`` and, with a projection, ``projection`` and ``log_residual_variance``; floats in float32.

    (Checked once against a file that the version-1 code wrote: the same keys, shapes, dtypes and architecture entries.)
    """
    dim = 4
    latent = projection_dim or dim
    architecture = {
        "dim": dim, "n_classes": 3, "coupling_layers": 3, "hidden": 6, "hidden_layers": 2, "dropout": 0.0,
        "actnorm": True, "permutation": "random" if projection_dim else "reverse", "means_scale": 1.0, "variance": 1.5,
        "learn_means": False, "learn_weights": True, "seed": 3, "means_separation": 7.0 if projection_dim else None,
        "projection_dim": projection_dim,
    }  # fmt: skip
    torch.manual_seed(0)
    flow = RealNVP(latent, 3, 6, hidden_layers=2, actnorm=True, permutation=architecture["permutation"], seed=3)
    flow(torch.randn(64, latent) * 2 + 1)  # ActNorm's initialisation
    perturb_(flow, scale=0.3, seed=4)
    prior = GaussianMixturePrior(3, latent, 1.0, 1.5, False, True, 3, architecture["means_separation"])
    with torch.no_grad():
        prior.weight_logits.copy_(torch.tensor([0.5, -0.2, 0.1]))
        prior.log_temperature.fill_(-0.2)
    tensors = {
        "feature_mean": torch.tensor([1.0, -2.0, 0.5, 3.0]),
        "feature_scale": torch.tensor([2.0, 0.5, 1.5, 4.0]),
        **{f"flow.{key}": value for key, value in flow.state_dict().items()},
        **{f"prior.{key}": value for key, value in prior.state_dict().items()},
    }
    if projection_dim:
        # Orthonormal columns exact in float32 (as a file stores them): two of a Hadamard basis.
        tensors["projection"] = 0.5 * torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])[:, [1, 0]]
        tensors["log_residual_variance"] = torch.tensor(math.log(0.4))
    header = {
        "format": "flowgmm", "format_version": 1, "architecture": architecture, "temperature": math.exp(-0.2),
        "classes": V1_CLASSES, "extractor": {"name": "csv"}, "params": {"epochs": 7, "hidden": 6}, "training": {"epochs": 7, "batch_size": 64},
    }  # fmt: skip
    tensors = {k: (v.float() if v.is_floating_point() else v).detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"flowgmm": json.dumps(header)})
    return tensors


def _version_1_density(tensors: dict, x: torch.Tensor, loaded: FlowGMM) -> np.ndarray:
    """``log p(x, y=k)`` of a version-1 model by hand: standardise, project (Gaussian residual by scipy
    on an explicit complement basis), the flow and the mixture with the file's tensors."""
    mean, scale = tensors["feature_mean"].double(), tensors["feature_scale"].double()
    u = (x - mean) / scale
    log_term = -np.log(scale.numpy()).sum() * np.ones(len(x))
    if "projection" in tensors:
        directions = tensors["projection"].double()
        complement = null_space(directions.numpy().T)
        residual_variance = math.exp(float(tensors["log_residual_variance"]))
        log_term += multivariate_normal(np.zeros(complement.shape[1]), residual_variance * np.eye(complement.shape[1])).logpdf(u.numpy() @ complement)
        u = u @ directions
    flow = RealNVP(**{k: v for k, v in loaded.flow.spec().items() if k != "type"})
    flow.load_state_dict({k[len("flow.") :]: v for k, v in tensors.items() if k.startswith("flow.")})
    z, log_det = flow.eval()(u)
    means = tensors["prior.means"].double().numpy()
    log_weights = torch.log_softmax(tensors["prior.weight_logits"].double(), 0).numpy()
    variance = math.exp(float(tensors["prior.log_variance"].double()))  # the trained 1.5: a temperature changes class probabilities only
    components = np.stack(
        [log_weights[c] + multivariate_normal(means[c], variance * np.eye(len(means[c]))).logpdf(z.detach().numpy()) for c in range(3)], axis=1
    )
    return components + (log_det.detach().numpy() + log_term)[:, None]


@pytest.mark.parametrize("projection_dim", [None, 2])
def test_version_1_file_is_read_and_gives_the_same_density(tmp_path, projection_dim, float64):
    path = tmp_path / "v1.safetensors"
    tensors = _version_1_file(path, projection_dim)
    [loaded], header = load_model(path)

    # The header in today's layout.
    assert header == read_header(path)
    assert header["format_version"] == FORMAT_VERSION
    assert "architecture" not in header and "params" not in header and "training" not in header
    assert header["options"] == {"epochs": 7, "hidden": 6} and header["resolved"] == {"epochs": 7, "batch_size": 64}
    assert header["classes"] == V1_CLASSES and header["extractor"] == {"name": "csv"}
    assert header["members"] == [loaded.spec()]
    flow_spec, prior_spec = header["members"][0]["flow"], header["members"][0]["prior"]
    assert flow_spec["hidden_layers"] == 2 and flow_spec["permutation"] == ("random" if projection_dim else "reverse")
    assert prior_spec["separation"] == (7.0 if projection_dim else None)
    assert [t["type"] for t in header["members"][0]["transform"]["transforms"]] == ["standardize"] + (["projection"] if projection_dim else [])
    assert (loaded.in_dim, loaded.latent_dim) == (4, projection_dim or 4)
    assert float(loaded.prior.log_temperature) == pytest.approx(-0.2)

    # The same log-density as the version-1 model, computed by hand from the file's tensors ...
    x = _features(40, seed=8, dim=4)
    joint = loaded(x).detach()
    np.testing.assert_allclose(joint.numpy(), _version_1_density(tensors, x, loaded), rtol=1e-10, atol=1e-9)

    # ... and as the equivalent model built today from the same numbers.
    standardize = Standardize(4)
    standardize.mean.copy_(tensors["feature_mean"])
    standardize.scale.copy_(tensors["feature_scale"])
    parts = [standardize]
    if projection_dim:
        projection = PrincipalProjection(4, projection_dim)
        projection.directions.copy_(tensors["projection"])
        projection.log_residual_variance.copy_(tensors["log_residual_variance"])
        parts.append(projection)
    flow = RealNVP(projection_dim or 4, 3, 6, hidden_layers=2, actnorm=True, permutation=flow_spec["permutation"], seed=3)
    flow.load_state_dict({k[len("flow.") :]: v for k, v in tensors.items() if k.startswith("flow.")})
    prior = GaussianMixturePrior(3, projection_dim or 4, 1.0, 1.5, learn_weights=True, seed=3, separation=prior_spec["separation"])
    prior.load_state_dict({k[len("prior.") :]: v for k, v in tensors.items() if k.startswith("prior.")})
    today = FlowGMM(TransformChain(parts), flow, prior).eval()
    assert torch.equal(loaded(x), today(x))

    # Saved again, it is a file of today's version with the same outputs.
    again = tmp_path / "v2.safetensors"
    save_model([loaded], again, header)
    [reloaded], header2 = load_model(again)
    assert {k: v for k, v in header2.items() if k != "temperature"} == {k: v for k, v in header.items() if k != "temperature"}
    assert header2["temperature"] == pytest.approx(header["temperature"], rel=1e-6)  # from the float32 tensor
    assert torch.equal(reloaded(x), loaded(x))


def test_a_model_file_never_starts_like_a_pickle(tmp_path):
    """The first byte is the low byte of the header's length; 0x80 (pickle's first opcode) must not occur.

    Headers of 300 consecutive lengths cover every low byte (after safetensors' 8-byte alignment),
    0x80 among them.
    """
    model = _model()
    starts = set()
    for extra in range(0, 300 * 8, 8):
        save_model([model], tmp_path / "m.flowgmm", {"note": "x" * extra})
        first = (tmp_path / "m.flowgmm").read_bytes()[:1]
        starts.add(first)
        assert first != b"\x80", extra
        assert read_header(tmp_path / "m.flowgmm")["note"] == "x" * extra
    assert len(starts) >= 31, "the lengths tried reach the low byte 0x80 without the padding"
