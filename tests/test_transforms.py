"""Input transforms: standardisation, the Yeo-Johnson map, the square root and the principal projection, each an exact density term of the features."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flowgmm_cli.stores import ArrayStore
from scipy.linalg import null_space
from scipy.stats import multivariate_normal
from torch.autograd.functional import jacobian

from flowgmm_cli import FlowGMMClassifier
from flowgmm_cli.defaults import noise_sample_rows
from flowgmm_cli.factory import fit_input_transform, prepare
from flowgmm_cli.layers import RealNVP
from flowgmm_cli.model import FlowGMM
from flowgmm_cli.moments import Moments
from flowgmm_cli.options import Scaling, TrainOptions
from flowgmm_cli.prior import GaussianMixturePrior
from flowgmm_cli.transforms import PrincipalProjection, SquareRoot, Standardize, TransformChain, YeoJohnson, build_transform
from flowgmm_testutils import perturb_


def correlated_rows(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Rows with very different variances along rotated directions, offset from the origin."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) * torch.logspace(0, -2, dim, dtype=torch.float64)
    offset = torch.linspace(-3.0, 5.0, dim, dtype=torch.float64)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mixing.T * 4 + offset


def _fitted_chain(x: torch.Tensor, k: int) -> TransformChain:
    standardize = Standardize.fit(x)
    return TransformChain([standardize, PrincipalProjection.fit(standardize(x)[0], k)])


# ----------------------------------------------------------------------------------- Standardize


def test_standardize_fit_per_feature_and_shared():
    x = torch.tensor([[0.0, 0.0, 5.0], [2.0, 0.2, 5.0], [4.0, 0.4, 5.0]])
    per_feature = Standardize.fit(x)
    shared = Standardize.fit(x, shared_scale=True)
    torch.testing.assert_close(per_feature.mean, torch.tensor([2.0, 0.2, 5.0]))
    torch.testing.assert_close(shared.mean, torch.tensor([2.0, 0.2, 5.0]))
    # Population standard deviation; a constant feature gets scale 1.
    torch.testing.assert_close(per_feature.scale, torch.tensor([math.sqrt(8 / 3), math.sqrt(0.08 / 3), 1.0]))
    # One scale for all: the root mean variance of the features (the constant one included).
    expected = math.sqrt((8 / 3 + 0.08 / 3 + 0) / 3)
    torch.testing.assert_close(shared.scale, torch.full((3,), expected))


def test_standardize_log_term_is_the_log_det_of_its_jacobian(float64):
    x = correlated_rows(6, 4)
    transform = Standardize.fit(correlated_rows(100, 4, seed=1))
    assert not torch.allclose(transform.scale, torch.ones(4))
    u, log_term = transform(x)
    assert u.shape == (6, 4) and log_term.shape == (6,)
    for row in range(len(x)):
        matrix = jacobian(lambda r: transform(r.unsqueeze(0))[0].squeeze(0), x[row])
        torch.testing.assert_close(log_term[row], torch.linalg.slogdet(matrix)[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(log_term, (-torch.log(transform.scale).sum()).expand(6), rtol=0, atol=1e-15)
    torch.testing.assert_close(transform.inverse(u), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(transform(transform.inverse(u))[0], u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "build",
    [
        lambda x: Standardize.fit(x),
        lambda x: PrincipalProjection.fit(x - x.mean(0), 2),
        lambda x: _fitted_chain(x, 2),
        lambda x: YeoJohnson.fit(x),
        lambda x: SquareRoot(x.shape[1], 2.0),
    ],
)
def test_transforms_have_no_trainable_parameters_and_keep_their_statistics_as_buffers(build, float64):
    """The fitted statistics are fixed (no optimiser or weight decay touches them) and saved with the model."""
    transform = build(correlated_rows(50, 5))
    assert list(transform.parameters()) == []
    assert transform.state_dict(), "the statistics are in the state dict"


# ----------------------------------------------------------------------------------- YeoJohnson

#: Exponents that cover both logarithm branches (0 and 2), both sides of 1, and the search bounds.
LAMBDAS = [-2.0, -0.5, 0.0, 1e-8, 0.4, 1.0, 1.7, 2.0, 2 - 1e-8, 3.0, 4.0]


def _yeo_johnson(lambdas: list[float]) -> YeoJohnson:
    transform = YeoJohnson(len(lambdas)).double()
    transform.lambdas.copy_(torch.tensor(lambdas, dtype=torch.float64))
    return transform


def test_yeo_johnson_log_term_is_the_log_det_of_its_jacobian(float64):
    transform = _yeo_johnson(LAMBDAS)
    x = torch.randn(7, len(LAMBDAS), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    x[0] = 0.0  # the seam between the two branches
    u, log_term = transform(x)
    for row in range(len(x)):
        matrix = jacobian(lambda r: transform(r.unsqueeze(0))[0].squeeze(0), x[row])
        torch.testing.assert_close(log_term[row], torch.linalg.slogdet(matrix)[1], rtol=0, atol=1e-10)


def test_yeo_johnson_matches_scipy_and_inverts(float64):
    from scipy.stats import yeojohnson

    transform = _yeo_johnson(LAMBDAS)
    x = torch.linspace(-6, 9, 301, dtype=torch.float64).unsqueeze(1).expand(-1, len(LAMBDAS))
    u, _ = transform(x)
    for j, lam in enumerate(LAMBDAS):
        if 0 < abs(lam) < 1e-6 or 0 < abs(2 - lam) < 1e-6:
            continue  # within 1e-6 of a seam a branch is its logarithm (exact at 0 and 2, checked here)
        np.testing.assert_allclose(u[:, j].numpy(), yeojohnson(x[:, j].numpy(), lmbda=lam), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(transform.inverse(u), x, rtol=1e-9, atol=1e-9)
    assert (u[1:] > u[:-1]).all(), "monotone increasing"


def test_yeo_johnson_inverse_beyond_a_bounded_range_is_finite(float64):
    """For λ < 0, ψ is bounded above by −1/λ (and for λ > 2 below): latent samples past the bound
    decode to large but finite features."""
    transform = _yeo_johnson([-1.0, 3.0])
    out = transform.inverse(torch.tensor([[5.0, -5.0]], dtype=torch.float64))
    assert torch.isfinite(out).all() and out[0, 0] > 1e6 and out[0, 1] < -1e6


def test_yeo_johnson_fit_recovers_the_exponent_that_normalises_the_data(float64):
    generator = torch.Generator().manual_seed(3)
    truth = [0.0, 0.5, 1.0, 1.5]
    normal = torch.randn(20000, 4, generator=generator, dtype=torch.float64) * 0.6
    x = _yeo_johnson(truth).inverse(normal)
    fitted = YeoJohnson.fit(x).lambdas
    torch.testing.assert_close(fitted.double(), torch.tensor(truth, dtype=torch.float64), rtol=0, atol=0.05)
    constant = YeoJohnson.fit(torch.ones(10, 1)).lambdas
    assert constant.tolist() == [1.0]


def test_yeo_johnson_density_integrates_to_one(float64):
    """``N(ψ(x); m, s²) · ψ′(x)`` over a fine 1-D grid is 1 for a skewed fit."""
    x = torch.exp(torch.randn(5000, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)) - 0.5
    transform = YeoJohnson.fit(x).double()
    u, _ = transform(x)
    mean, std = float(u.mean()), float(u.std())
    grid = torch.linspace(-60, 400, 400001, dtype=torch.float64).unsqueeze(1)
    v, log_term = transform(grid)
    log_density = -0.5 * ((v[:, 0] - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi)) + log_term
    assert float(log_density.exp().sum() * (grid[1, 0] - grid[0, 0])) == pytest.approx(1.0, abs=2e-3)


def test_power_transform_fits_between_two_standardisations_for_tables():
    x = torch.exp(torch.randn(3000, 3, generator=torch.Generator().manual_seed(5)))
    table = fit_input_transform(ArrayStore(x), TrainOptions(power_transform=True, scaling="feature", projection_dim=0))
    assert [type(part) for part in table.layers] == [Standardize, YeoJohnson, Standardize]
    u, _ = table(x)
    torch.testing.assert_close(u.double().mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-4)
    torch.testing.assert_close(u.double().std(0, unbiased=False), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-4)
    skew_before = ((x - x.mean(0)) / x.std(0)).double().pow(3).mean(0)
    assert (skew_before > 3).all() and (u.double().pow(3).mean(0).abs() < 0.1 * skew_before).all(), "most of the skew is gone"
    assert prepare(ArrayStore(x, units="per-column"), 10, 2990, TrainOptions())[1].power_transform is True
    assert prepare(ArrayStore(x, units="shared"), 10, 2990, TrainOptions())[1].power_transform is False


# ----------------------------------------------------------------------------------- SquareRoot


def test_square_root_log_term_is_the_log_det_of_its_jacobian(float64):
    transform = SquareRoot(5, scale=3.0).double()
    x = torch.tensor([[0.0, 0.2, 7.0, 300.0, -4.0], [1e-9, 0.0, -1e-9, 0.05, 12.0]], dtype=torch.float64)
    u, log_term = transform(x)
    for row in range(len(x)):
        matrix = jacobian(lambda r: transform(r.unsqueeze(0))[0].squeeze(0), x[row])
        torch.testing.assert_close(log_term[row], torch.linalg.slogdet(matrix)[1], rtol=0, atol=1e-12)
    # At zero the slope is 1 / (2 s √c), finite: the point mass of a feature at zero keeps a density.
    assert float(matrix[1, 1]) == pytest.approx(1 / (2 * 3.0 * math.sqrt(SquareRoot.OFFSET)))


def test_square_root_is_an_odd_monotone_map_that_inverts(float64):
    transform = SquareRoot(1, scale=0.5).double()
    x = torch.linspace(-20, 50, 7001, dtype=torch.float64).unsqueeze(1)
    u, _ = transform(x)
    assert (u[1:] > u[:-1]).all(), "monotone increasing"
    torch.testing.assert_close(transform(-x)[0], -u, rtol=0, atol=0)
    torch.testing.assert_close(transform.inverse(u), x, rtol=1e-12, atol=1e-12)
    # Far from zero it is the root: u ≈ √(x / s).
    assert float(transform(torch.tensor([[1e6]], dtype=torch.float64))[0]) == pytest.approx(math.sqrt(2e6), rel=1e-3)


def test_square_root_scale_is_the_rows_shared_standard_deviation(float64):
    x = torch.tensor([[0.0, 0.0, 5.0], [2.0, 0.2, 5.0], [4.0, 0.4, 5.0]], dtype=torch.float64)
    moments = Moments(3, full=False)
    moments.update(x)
    assert float(SquareRoot.from_moments(moments).scale) == pytest.approx(float(Standardize.fit(x, shared_scale=True).scale[0]))
    constant = Moments(2, full=False)
    constant.update(torch.ones(4, 2))
    assert float(SquareRoot.from_moments(constant).scale) == 1.0


def test_square_root_is_the_default_for_long_tailed_non_negative_features_in_one_unit():
    """Activation-like rows (zero or log-normal): the root where they share one unit; not for
    pixel-like rows (bounded), rows with a negative value, or a table's columns."""
    generator = torch.Generator().manual_seed(6)
    active = torch.rand(2000, 12, generator=generator) < 0.4
    counts = torch.where(active, torch.exp(1.5 * torch.randn(2000, 12, generator=generator)), torch.zeros(()))
    pixels = torch.randint(0, 17, (2000, 12), generator=generator).float()
    chosen = [
        prepare(ArrayStore(x, units=units), 10, 1990, TrainOptions(projection_dim=0))
        for x, units in ((counts, "shared"), (counts, None), (counts - 0.5, "shared"), (counts, "per-column"), (pixels, "shared"))
    ]
    assert [options.square_root for _, options in chosen] == [True, True, False, False, False]
    assert [type(part) for part in chosen[0][0].layers] == [SquareRoot, Standardize]
    u, _ = chosen[0][0](counts)
    torch.testing.assert_close(u.double().mean(0), torch.zeros(12, dtype=torch.float64), rtol=0, atol=1e-5)
    # A choice beats the rule either way; with a projection the covariance is that of the roots.
    assert prepare(ArrayStore(counts, units="shared"), 10, 1990, TrainOptions(square_root=False, projection_dim=0))[1].square_root is False
    transform, options = prepare(ArrayStore(counts - 0.5, units="shared"), 10, 1990, TrainOptions(square_root=True, projection_dim=4))
    assert options.square_root and [type(part) for part in transform.layers] == [SquareRoot, Standardize, PrincipalProjection]
    roots = transform.layers[1](transform.layers[0](counts - 0.5)[0])[0].double()
    expected = PrincipalProjection.fit(roots - roots.mean(0), 4).directions
    torch.testing.assert_close(transform.layers[2].directions.abs(), expected.abs(), rtol=0, atol=1e-4)



def test_square_root_default_asks_every_row_not_only_the_sample():
    """The sample screens; one negative value in a row it did not draw still rules the root out."""
    generator = torch.Generator().manual_seed(7)
    counts = (torch.rand(5000, 6, generator=generator) < 0.4) * torch.exp(1.5 * torch.randn(5000, 6, generator=generator))
    sampled = set(noise_sample_rows(len(counts), TrainOptions().random_state).tolist())
    outside = next(row for row in range(len(counts)) if row not in sampled)
    assert prepare(ArrayStore(counts, units="shared"), 10, 4990, TrainOptions(projection_dim=0))[1].square_root
    counts[outside, 0] = -1.0
    assert prepare(ArrayStore(counts, units="shared"), 10, 4990, TrainOptions(projection_dim=0))[1].square_root is False

# --------------------------------------------------------------------------- PrincipalProjection


def test_principal_directions_match_the_svd(float64):
    u = correlated_rows(400, 6)
    u = u - u.mean(0)
    projection = PrincipalProjection.fit(u, 2)
    directions = projection.directions
    _, singular, vt = np.linalg.svd(u.numpy(), full_matrices=False)
    np.testing.assert_allclose(np.abs(directions.numpy()), np.abs(vt[:2].T), atol=1e-8)
    np.testing.assert_allclose(directions.T @ directions, np.eye(2), atol=1e-12)
    assert projection.residual_variance == pytest.approx(float((singular[2:] ** 2).sum() / len(u) / 4), rel=1e-10)
    # Signs are fixed: each direction's largest entry is positive, whatever the sign of the data.
    assert (directions.gather(0, directions.abs().argmax(0, keepdim=True)) > 0).all()
    torch.testing.assert_close(PrincipalProjection.fit(-u, 2).directions, directions, rtol=0, atol=1e-12)
    assert projection.in_dim == 6 and projection.out_dim == 2


def test_residual_variance_has_a_floor_when_the_rest_is_empty(float64):
    u = torch.cat([correlated_rows(30, 2), torch.zeros(30, 2)], dim=1)
    projection = PrincipalProjection.fit(u - u.mean(0), 2)
    assert projection.residual_variance == pytest.approx(1e-6)
    assert torch.isfinite(projection(u - u.mean(0))[1]).all()


def test_projection_log_term_is_the_gaussian_density_of_the_complement(float64):
    dim, k = 5, 2
    u = correlated_rows(200, dim, seed=3)
    u = u - u.mean(0)
    projection = PrincipalProjection.fit(u, k)
    x = correlated_rows(20, dim, seed=4) - u.mean(0)
    a, log_term = projection(x)
    torch.testing.assert_close(a, x @ projection.directions, rtol=0, atol=0)
    complement = null_space(projection.directions.numpy().T)  # an explicit orthonormal basis of the rest
    assert complement.shape == (dim, dim - k)
    rotation = np.concatenate([projection.directions.numpy(), complement], axis=1)
    np.testing.assert_allclose(np.linalg.slogdet(rotation)[1], 0.0, atol=1e-12)  # the split is a rotation
    expected = multivariate_normal(np.zeros(dim - k), projection.residual_variance * np.eye(dim - k)).logpdf(x.numpy() @ complement)
    np.testing.assert_allclose(log_term.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_projection_inverse_lands_on_the_principal_subspace(float64):
    u = correlated_rows(100, 6, seed=5)
    u = u - u.mean(0)
    projection = PrincipalProjection.fit(u, 3)
    a, _ = projection(u)
    on_subspace = projection.inverse(a)
    torch.testing.assert_close(on_subspace, u @ projection.directions @ projection.directions.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(projection(on_subspace)[0], a, rtol=1e-12, atol=1e-12)  # a round trip from a
    assert not torch.allclose(on_subspace, u, atol=1e-3)  # the residual is really dropped
    # The residual is orthogonal to the subspace.
    torch.testing.assert_close((u - on_subspace) @ projection.directions, torch.zeros(100, 3), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [0, 4, 5, -1])
def test_projection_needs_between_one_and_dim_minus_one_directions(k):
    with pytest.raises(ValueError, match="between 1 and dim - 1"):
        PrincipalProjection(4, k)


# -------------------------------------------------------------------------- chain and the model


def _projected_model(dim: int, k: int, seed: int = 1) -> tuple[FlowGMM, torch.Tensor]:
    x = correlated_rows(200, dim, seed=seed)
    torch.manual_seed(0)
    flow = perturb_(RealNVP(k, coupling_layers=2, hidden=8), seed=2)
    prior = GaussianMixturePrior(3, k, variance=1.5, separation=3.0)
    return FlowGMM(_fitted_chain(x, k), flow, prior).eval(), x


def test_projected_density_is_the_flow_times_a_gaussian_on_the_complement(float64):
    dim, k = 5, 2
    model, train = _projected_model(dim, k)
    standardize, projection = model.transform.layers
    x = correlated_rows(50, dim, seed=6)
    joint = model(x).detach().numpy()
    # The same density by hand, from the fitted statistics: rotate u into (principal, complement) coordinates.
    mean, scale = train.mean(0), train.std(0, unbiased=False)
    torch.testing.assert_close(standardize.mean, mean)
    torch.testing.assert_close(standardize.scale, scale)
    u = (x - mean) / scale
    directions = projection.directions
    complement = null_space(directions.numpy().T)
    z, log_det = model.flow(u @ directions)
    flow_part = (model.prior.class_log_prob(z) + log_det.unsqueeze(-1)).detach().numpy()
    gaussian = multivariate_normal(np.zeros(dim - k), projection.residual_variance * np.eye(dim - k)).logpdf(u.numpy() @ complement)
    expected = flow_part + gaussian[:, None] - np.log(scale.numpy()).sum()
    np.testing.assert_allclose(joint, expected, rtol=1e-10, atol=1e-8)
    # The residual term is the same for every class: class probabilities come from the flow alone.
    torch.testing.assert_close(model.predict_log_proba(x), torch.log_softmax(torch.from_numpy(flow_part), -1), rtol=1e-10, atol=1e-10)


def test_projected_density_integrates_to_one(float64):
    """In 2-D with one principal direction, ∫ p(x) dx over a wide grid is 1: the residual Gaussian
    is normalised and the chain's log terms are counted once."""
    model, train = _projected_model(2, 1, seed=7)
    model.eval()
    assert model.transform.layers[1].residual_variance < 0.5  # an elongated cloud: the two directions differ
    mean, std = train.mean(0), train.std(0)
    half = 12 * float(std.max())
    a = torch.linspace(float(mean[0]) - half, float(mean[0]) + half, 801)
    b = torch.linspace(float(mean[1]) - half, float(mean[1]) + half, 801)
    with torch.no_grad():
        density = model.log_prob(torch.cartesian_prod(a, b)).exp()
    assert float(density.sum() * (a[1] - a[0]) * (b[1] - b[0])) == pytest.approx(1.0, abs=5e-3)


def test_chain_adds_log_terms_and_inverts_in_reverse_order(float64):
    x = correlated_rows(30, 5, seed=8)
    chain = _fitted_chain(correlated_rows(200, 5), 3)
    standardize, projection = chain.layers
    u, term_1 = standardize(x)
    a, term_2 = projection(u)
    out, log_term = chain(x)
    assert torch.equal(out, a)
    torch.testing.assert_close(log_term, term_1 + term_2, rtol=0, atol=1e-12)
    assert (chain.in_dim, chain.out_dim) == (5, 3)
    torch.testing.assert_close(chain.inverse(a), standardize.inverse(projection.inverse(a)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least one"):
        TransformChain([])


@pytest.mark.parametrize(
    "build",
    [
        lambda x: Standardize.fit(x),
        lambda x: PrincipalProjection.fit(x - x.mean(0), 2),
        lambda x: _fitted_chain(x, 3),
        lambda x: TransformChain([Standardize.fit(x, shared_scale=True)]),
        lambda x: TransformChain([Standardize.fit(x), YeoJohnson.fit(Standardize.fit(x)(x)[0])]),
        lambda x: TransformChain([SquareRoot(5, 2.5), Standardize.fit(x)]),
    ],
)
def test_spec_rebuilds_the_same_transform(build, float64):
    x = correlated_rows(80, 5, seed=9)
    transform = build(x)
    spec = transform.spec()
    assert spec == json.loads(json.dumps(spec)), "the spec is plain JSON"
    rebuilt = build_transform(spec)
    assert type(rebuilt) is type(transform) and rebuilt.spec() == spec
    rebuilt.load_state_dict(transform.state_dict(), strict=True)
    out, log_term = transform(x)
    out2, log_term2 = rebuilt(x)
    assert torch.equal(out, out2) and torch.equal(log_term, log_term2)
    assert torch.equal(rebuilt.inverse(out), transform.inverse(out))


def test_build_transform_rejects_an_unknown_type():
    with pytest.raises(ValueError, match="unknown input transform"):
        build_transform({"type": "whiten", "dim": 3})


# ------------------------------------------------------------------ from options (the factory)


def _wide_rows(n: int = 60, dim: int = 10, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.normal(size=(n, dim)) * np.arange(1, dim + 1)).astype(np.float32))


@pytest.mark.parametrize(
    "dim, options, scaling, k",
    [
        (3, TrainOptions(), Scaling.feature, 0),
        (10, TrainOptions(), Scaling.shared, 0),
        (10, TrainOptions(scaling="feature"), Scaling.feature, 0),
        (80, TrainOptions(), Scaling.shared, 32),
        (80, TrainOptions(projection_dim=0), Scaling.shared, 0),
        (80, TrainOptions(projection_dim=5, scaling=Scaling.feature), Scaling.feature, 5),
    ],
)
def test_prepare_builds_the_transform_the_options_describe(dim, options, scaling, k):
    x = _wide_rows(100, dim)
    transform, resolved = prepare(ArrayStore(x), 10, 90, options)
    assert resolved.scaling is scaling and resolved.projection_dim == k
    kinds = [type(t) for t in transform.layers]
    assert kinds == ([Standardize, PrincipalProjection] if k else [Standardize])
    assert transform.out_dim == (k or dim)
    scale = transform.layers[0].scale
    if scaling is Scaling.shared:
        assert torch.equal(scale, scale[:1].expand(dim))
    else:
        torch.testing.assert_close(scale, x.double().std(0, unbiased=False).float())
    assert torch.equal(fit_input_transform(ArrayStore(x), resolved).layers[0].scale, scale)


def test_estimator_projects_wide_features_by_default_and_saves_it(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (2, 80))
    y = np.repeat([0, 1], 150)
    X = (centres[y] + rng.normal(size=(300, 80))).astype(np.float32)
    partial = np.full(300, -1)
    partial[[0, 1, 150, 151]] = y[[0, 1, 150, 151]]
    clf = FlowGMMClassifier(epochs=30).fit(X, partial)
    assert clf.options_.projection_dim == 32 and clf.model_.latent_dim == 32
    assert clf.encode(X[:5]).shape == (5, 32) and clf.decode(clf.encode(X[:5])).shape == (5, 80)
    assert clf.score(X, y) > 0.9
    clf.save(tmp_path / "m.flowgmm")
    loaded = FlowGMMClassifier.load(tmp_path / "m.flowgmm", device=clf.options_.device)  # the same arithmetic
    np.testing.assert_array_equal(loaded.score_samples(X), clf.score_samples(X))
    off = FlowGMMClassifier(epochs=1, hidden=16, coupling_layers=2, projection_dim=0).fit(X, partial)
    assert off.options_.projection_dim == 0 and off.model_.latent_dim == 80
    assert [type(t) for t in off.model_.transform.layers] == [Standardize]
    assert np.isfinite(off.score_samples(X[:3])).all()


def test_estimator_takes_square_roots_of_long_tailed_rows_and_saves_them(tmp_path):
    """Activation-like rows (zero or log-normal, one unit): the model's first transform is the
    root; saved and loaded it scores the same, and decoding inverts it."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 150)
    X = ((rng.random((300, 12)) < 0.5) * rng.lognormal(1.5 * y[:, None], 1.0, (300, 12))).astype(np.float32)
    partial = np.full(300, -1)
    partial[[0, 1, 150, 151]] = y[[0, 1, 150, 151]]
    clf = FlowGMMClassifier(epochs=2, hidden=16, coupling_layers=2, members=1, calibration_folds=0).fit(X, partial, units="shared")
    assert clf.options_.square_root and isinstance(clf.model_.transform.layers[0], SquareRoot)
    clf.save(tmp_path / "m.flowgmm")
    loaded = FlowGMMClassifier.load(tmp_path / "m.flowgmm", device=clf.options_.device)
    np.testing.assert_array_equal(loaded.score_samples(X), clf.score_samples(X))
    np.testing.assert_allclose(loaded.decode(loaded.encode(X)), X, rtol=1e-4, atol=1e-4)
