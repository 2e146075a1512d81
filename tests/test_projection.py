"""The principal-subspace model: an exact density of the features, a flow on the leading directions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flowgmm_testutils import perturb_
from scipy.linalg import null_space
from scipy.stats import multivariate_normal

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.model import Architecture, FlowGMM, principal_directions


def correlated_rows(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) * torch.logspace(0, -2, dim, dtype=torch.float64)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mixing.T


def test_principal_directions_match_the_svd(float64):
    u = correlated_rows(400, 6)
    u = u - u.mean(0)
    directions, residual = principal_directions(u, 2)
    _, singular, vt = np.linalg.svd(u.numpy(), full_matrices=False)
    expected = vt[:2].T
    np.testing.assert_allclose(np.abs(directions.numpy()), np.abs(expected), atol=1e-8)
    np.testing.assert_allclose(directions.T @ directions, np.eye(2), atol=1e-12)
    assert residual == pytest.approx(float((singular[2:] ** 2).sum() / len(u) / 4))


def test_projected_density_is_the_flow_times_a_gaussian_on_the_complement(float64):
    dim, k = 5, 2
    model = FlowGMM(Architecture(dim=dim, n_classes=3, coupling_layers=2, hidden=8, projection_dim=k, variance=1.5,
                                 means_separation=3.0))  # fmt: skip
    perturb_(model.flow)
    x = correlated_rows(50, dim, seed=1)
    mean, scale = x.mean(0), x.std(0)
    model.set_standardization(mean, scale)
    u = (x - mean) / scale
    directions, residual_variance = principal_directions(u, k)
    model.set_projection(directions, residual_variance)

    joint = model.joint_log_prob(x).detach().numpy()
    # the same density by hand: rotate u into (principal coordinates, complement coordinates)
    a = (u @ directions)
    complement = null_space(directions.numpy().T)
    rest = u.numpy() @ complement
    z, log_det = model.flow(a)
    flow_part = (model.prior.class_log_prob(z) + log_det.unsqueeze(-1)).detach().numpy()
    gaussian = multivariate_normal(np.zeros(dim - k), residual_variance * np.eye(dim - k)).logpdf(rest)
    expected = flow_part + gaussian[:, None] - np.log(scale.numpy()).sum()
    np.testing.assert_allclose(joint, expected, rtol=1e-10, atol=1e-8)


def test_encode_decode_round_trip_lands_on_the_principal_subspace(float64):
    dim, k = 6, 3
    model = FlowGMM(Architecture(dim=dim, n_classes=2, coupling_layers=3, hidden=8, projection_dim=k, means_separation=3.0))
    perturb_(model.flow)
    x = correlated_rows(20, dim, seed=2)
    model.set_standardization(x.mean(0), x.std(0))
    directions, residual = principal_directions((x - x.mean(0)) / x.std(0), k)
    model.set_projection(directions, residual)
    z = model.encode(x)
    assert z.shape == (20, k)
    u = (x - x.mean(0)) / x.std(0)
    on_subspace = (u @ directions @ directions.T) * x.std(0) + x.mean(0)
    torch.testing.assert_close(model.decode(z), on_subspace)


def test_estimator_projects_wide_features_by_default_and_saves_it(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (2, 80))
    y = np.repeat([0, 1], 150)
    X = (centres[y] + rng.normal(size=(300, 80))).astype(np.float32)
    partial = np.full(300, -1)
    partial[[0, 1, 150, 151]] = y[[0, 1, 150, 151]]
    clf = FlowGMMClassifier(epochs=150).fit(X, partial)
    assert clf.architecture_.projection_dim == 32 and clf.latent_dim_ == 32
    assert clf.encode(X[:5]).shape == (5, 32) and clf.decode(clf.encode(X[:5])).shape == (5, 80)
    assert clf.score(X, y) > 0.9
    clf.save(tmp_path / "m.flowgmm")
    loaded = FlowGMMClassifier.load(tmp_path / "m.flowgmm")
    np.testing.assert_allclose(loaded.score_samples(X), clf.score_samples(X), rtol=1e-6)
    off = FlowGMMClassifier(epochs=1, hidden=16, coupling_layers=2, projection_dim=0).fit(X, partial)
    assert off.architecture_.projection_dim is None and off.latent_dim_ == 80
    assert math.isfinite(float(off.score_samples(X[:3]).sum()))


def test_shared_scale_keeps_the_features_relative_sizes():
    from flowgmm_cli.model import standardization_stats

    x = torch.tensor([[0.0, 0.0, 5.0], [2.0, 0.2, 5.0], [4.0, 0.4, 5.0]])
    mean, per_feature = standardization_stats(x)
    _, shared = standardization_stats(x, shared_scale=True)
    torch.testing.assert_close(mean, torch.tensor([2.0, 0.2, 5.0]))
    torch.testing.assert_close(per_feature, torch.tensor([math.sqrt(8 / 3), math.sqrt(0.08 / 3), 1.0]))
    expected = math.sqrt((8 / 3 + 0.08 / 3 + 0) / 3)
    torch.testing.assert_close(shared, torch.full((3,), expected))


def test_scaling_default_and_option():
    rng = np.random.default_rng(1)
    wide = rng.normal(size=(60, 10)).astype(np.float32) * np.arange(1, 11, dtype=np.float32)
    y = np.full(60, -1)
    y[:2], y[2:4] = 0, 1
    scales = lambda clf: clf.model_.feature_scale.numpy()  # noqa: E731
    shared = FlowGMMClassifier(epochs=1, hidden=8, coupling_layers=1).fit(wide, y)
    assert np.allclose(scales(shared), scales(shared)[0])
    per_feature = FlowGMMClassifier(epochs=1, hidden=8, coupling_layers=1, scaling="feature").fit(wide, y)
    assert scales(per_feature)[-1] > 5 * scales(per_feature)[0]
    narrow = FlowGMMClassifier(epochs=1, hidden=8, coupling_layers=1).fit(wide[:, :3], y)
    assert scales(narrow)[2] > 2 * scales(narrow)[0]
    with pytest.raises(ValueError, match="scaling must be"):
        FlowGMMClassifier(epochs=1, scaling="minmax").fit(wide, y)
