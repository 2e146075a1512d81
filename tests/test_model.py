"""FlowGMM densities in feature space, encode/decode, and the model file (safe loading included)."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.autograd.functional import jacobian

from flowgmm_cli.errors import InputError
from flowgmm_cli.model import Architecture, FlowGMM, standardization_stats
from flowgmm_cli.modelfile import load_model, read_header, save_model
from flowgmm_testutils import perturb_

SCALES = torch.tensor([3.0, 0.5, 10.0])
OFFSETS = torch.tensor([5.0, -2.0, 0.0])


def _features(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64).to(torch.get_default_dtype())
    return x * SCALES + OFFSETS


def _model(dim: int = 3, actnorm: bool = True, **kwargs) -> FlowGMM:
    """A model with non-trivial standardisation, ActNorm initialised and perturbed weights."""
    torch.manual_seed(0)
    architecture = Architecture(dim=dim, n_classes=3, coupling_layers=3, hidden=8, actnorm=actnorm, **kwargs)
    model = FlowGMM(architecture)
    x = _features(200)[:, :dim]
    model.set_standardization(*standardization_stats(x))
    model.train()
    with torch.no_grad():
        model.flow(model.standardize(x))  # ActNorm's data-dependent initialisation
    perturb_(model.flow, scale=0.2, seed=1)
    with torch.no_grad():
        model.prior.log_temperature.fill_(0.3)
    return model.eval()


def test_log_prob_is_a_change_of_variables_in_feature_space(float64):
    model = _model()
    x = _features(6, seed=1)
    assert model.feature_scale.tolist() != [1.0, 1.0, 1.0]
    joint = model.joint_log_prob(x)
    assert joint.shape == (6, 3)
    full_map = lambda row: model.flow(((row - model.feature_mean) / model.feature_scale).unsqueeze(0))[0].squeeze(0)  # noqa: E731
    for i in range(len(x)):
        z = full_map(x[i])
        _, log_abs_det = torch.linalg.slogdet(jacobian(full_map, x[i]))
        expected_joint = model.prior.class_log_prob(z.unsqueeze(0)).squeeze(0) + log_abs_det
        torch.testing.assert_close(joint[i], expected_joint, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(model.log_prob(x[i : i + 1])[0], torch.logsumexp(expected_joint, 0), rtol=1e-10, atol=1e-10)
    # The standardisation's share of the log-determinant is -Σ log(scale).
    u = model.standardize(x)
    z, flow_log_det = model.flow(u)
    by_hand = model.prior.class_log_prob(z) + flow_log_det.unsqueeze(-1) - torch.log(model.feature_scale).sum()
    torch.testing.assert_close(joint, by_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.standardization_log_det(), -torch.log(model.feature_scale).sum())


def test_density_integrates_to_one_in_feature_space(float64):
    """On a 2-D model, ∫ p(x) dx over a wide grid is 1: the standardisation's Jacobian is counted once."""
    torch.manual_seed(0)
    model = FlowGMM(Architecture(dim=2, n_classes=2, coupling_layers=2, hidden=8))
    model.set_standardization(*standardization_stats(_features(300)[:, :2]))  # scales 3 and 0.5, offsets 5 and -2
    perturb_(model.flow, scale=0.05, seed=2)
    model.eval()
    mean, scale = model.feature_mean, model.feature_scale
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
    joint = model.joint_log_prob(x)
    torch.testing.assert_close(log_proba, joint - torch.logsumexp(joint, -1, keepdim=True))
    assert torch.equal(log_proba.argmax(-1), joint.argmax(-1))


def test_decode_inverts_encode(float64):
    model = _model()
    x = _features(25, seed=3)
    z = model.encode(x)
    assert not torch.allclose(z, model.standardize(x), atol=1e-3)
    torch.testing.assert_close(model.decode(z), x, rtol=1e-10, atol=1e-10)
    z2 = torch.randn(10, 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model.encode(model.decode(z2)), z2, rtol=1e-10, atol=1e-10)


def test_sample_returns_feature_space_points_and_classes():
    model = _model()
    x, y = model.sample(2000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2000, 3) and y.shape == (2000,)
    assert set(y.tolist()) <= {0, 1, 2}
    # Samples come out on the feature scale (the model was standardised on features of scale 3/0.5/10).
    assert torch.isfinite(x).all()
    x_given, y_given = model.sample(5, labels=torch.tensor([2, 2, 0, 1, 1]), generator=torch.Generator().manual_seed(1))
    assert y_given.tolist() == [2, 2, 0, 1, 1]
    torch.testing.assert_close(model.encode(x_given), model.prior.sample(5, torch.tensor([2, 2, 0, 1, 1]), torch.Generator().manual_seed(1))[0], rtol=1e-4, atol=1e-4)


def test_standardization_keeps_constant_features_at_scale_one():
    model = FlowGMM(Architecture(dim=3, n_classes=2, coupling_layers=1, hidden=4))
    x = torch.tensor([[1.0, 7.0, 2.0], [3.0, 7.0, 4.0], [5.0, 7.0, 9.0]])
    model.set_standardization(*standardization_stats(x))
    torch.testing.assert_close(model.feature_mean, x.mean(0))
    assert model.feature_scale[1] == 1.0
    torch.testing.assert_close(model.feature_scale[[0, 2]], x.std(0, unbiased=False)[[0, 2]])


# ------------------------------------------------------------------------------------ model file


def _saved(tmp_path: Path) -> tuple[FlowGMM, Path, dict]:
    model = _model(learn_weights=True)
    with torch.no_grad():
        model.prior.weight_logits.copy_(torch.tensor([0.2, -0.4, 1.0]))
    path = tmp_path / "model.safetensors"
    extra = {"classes": ["a", "b", "c"], "extractor": None, "nested": {"x": [1, 2.5]}}
    save_model(model, path, extra)
    return model, path, extra


def test_save_load_round_trip_gives_identical_outputs_and_header(tmp_path):
    model, path, extra = _saved(tmp_path)
    loaded, header = load_model(path)
    assert not loaded.training
    assert loaded.architecture == model.architecture
    x = _features(30, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded.joint_log_prob(x), model.joint_log_prob(x))
        assert torch.equal(loaded.encode(x), model.encode(x))
        z = torch.randn(7, 3)
        assert torch.equal(loaded.decode(z), model.decode(z))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert header == read_header(path)
    assert header["format"] == "flowgmm"
    assert header["architecture"] == model.architecture.to_dict()
    assert header["temperature"] == pytest.approx(math.exp(0.3))
    for key, value in extra.items():
        assert header[key] == value
    assert float(loaded.prior.log_temperature) == pytest.approx(0.3)
    # The write was atomic: the folder holds the model file and nothing else.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_saving_over_an_existing_file_replaces_it(tmp_path):
    _, path, _ = _saved(tmp_path)
    other = FlowGMM(Architecture(dim=2, n_classes=2, coupling_layers=1, hidden=4))
    save_model(other, path, {"classes": [0, 1]})
    loaded, header = load_model(path)
    assert header["architecture"]["dim"] == 2 and header["classes"] == [0, 1]


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "absent.safetensors")
    with pytest.raises(InputError):
        read_header(tmp_path / "absent.safetensors")
    with pytest.raises(InputError):
        load_model(tmp_path)  # a folder is not a model file


@pytest.mark.parametrize("content", [b"", b"hello, this is not a model\n", b"\x00" * 64, b"\xff" * 8 + b"{}"])
def test_non_safetensors_file_raises_input_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError):
        load_model(path)
    with pytest.raises(InputError):
        read_header(path)


def test_safetensors_without_flowgmm_header_raises_input_error(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(InputError, match="no flowgmm header"):
        load_model(plain)
    other_metadata = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other_metadata), metadata={"format": "pt"})
    with pytest.raises(InputError):
        read_header(other_metadata)
    broken_json = tmp_path / "broken.safetensors"
    save_file({"weight": torch.zeros(2)}, str(broken_json), metadata={"flowgmm": "{not json"})
    with pytest.raises(InputError):
        load_model(broken_json)


def test_damaged_or_newer_model_file_raises_input_error(tmp_path):
    model, path, _ = _saved(tmp_path)
    header = read_header(path)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}

    missing_tensor = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "feature_scale"}, str(missing_tensor), metadata={"flowgmm": json.dumps(header)})
    with pytest.raises(InputError):
        load_model(missing_tensor)

    wrong_architecture = tmp_path / "wrong.safetensors"
    bad = dict(header, architecture=dict(header["architecture"], hidden=16))
    save_file(tensors, str(wrong_architecture), metadata={"flowgmm": json.dumps(bad)})
    with pytest.raises(InputError):
        load_model(wrong_architecture)

    unknown_field = tmp_path / "unknown.safetensors"
    bad = dict(header, architecture=dict(header["architecture"], colour="blue"))
    save_file(tensors, str(unknown_field), metadata={"flowgmm": json.dumps(bad)})
    with pytest.raises(InputError):
        load_model(unknown_field)

    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={"flowgmm": json.dumps(dict(header, format_version=header["format_version"] + 1))})
    with pytest.raises(InputError, match="format version"):
        load_model(newer)


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
    assert not marker.exists()
    os.remove(path)
