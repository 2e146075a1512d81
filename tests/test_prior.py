"""The latent Gaussian mixture against scipy, its sampler, and its argument checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import multivariate_normal

from flowgmm_cli.prior import GaussianMixturePrior, _spread_means

WEIGHT_LOGITS = [0.5, -1.0, 2.0]
LOG_TEMPERATURE = 0.4
VARIANCE = 0.7


def _calibrated_prior() -> GaussianMixturePrior:
    """Three classes in 4-D with non-uniform weights and a non-trivial calibration scale."""
    prior = GaussianMixturePrior(3, 4, means_scale=2.0, variance=VARIANCE, learn_weights=True, seed=3)
    with torch.no_grad():
        prior.weight_logits.copy_(torch.tensor(WEIGHT_LOGITS))
        prior.log_temperature.fill_(LOG_TEMPERATURE)
    return prior


def _scipy_class_log_prob(prior: GaussianMixturePrior, z: np.ndarray, log_temperature: float) -> np.ndarray:
    means = prior.means.detach().double().numpy()
    log_weights = np.log(softmax(np.asarray(WEIGHT_LOGITS, dtype=np.float64)))
    cov = VARIANCE * math.exp(log_temperature) * np.eye(prior.dim)
    return np.stack(
        [log_weights[k] + multivariate_normal(mean=means[k], cov=cov).logpdf(z) for k in range(prior.n_classes)],
        axis=1,
    )


def _points(n: int, dim: int, scale: float = 2.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=(n, dim))


def test_class_log_prob_and_log_prob_match_scipy(float64):
    prior = _calibrated_prior()
    assert prior.means.dtype == torch.float64
    z = _points(50, 4)
    expected = _scipy_class_log_prob(prior, z, 0.0)  # the density keeps the trained variance
    got = prior.class_log_prob(torch.from_numpy(z))
    assert got.shape == (50, 3)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(prior.log_prob(torch.from_numpy(z)).detach().numpy(), logsumexp(expected, axis=1), rtol=1e-10, atol=1e-10)
    # The mixture density is the weighted sum of the component densities.
    means = prior.means.detach().numpy()
    cov = VARIANCE * np.eye(4)
    density = sum(
        softmax(WEIGHT_LOGITS)[k] * multivariate_normal(mean=means[k], cov=cov).pdf(z) for k in range(3)
    )
    np.testing.assert_allclose(np.exp(prior.log_prob(torch.from_numpy(z)).detach().numpy()), density, rtol=1e-10)


def test_the_temperature_does_not_enter_the_density(float64):
    """Calibration tempers class probabilities (:mod:`flowgmm_cli.calibration`), not ``p(z)``."""
    prior = _calibrated_prior()
    z = torch.from_numpy(_points(20, 4, seed=1))
    density = prior.class_log_prob(z)
    with torch.no_grad():
        prior.log_temperature.fill_(0.0)
    assert torch.equal(prior.class_log_prob(z), density)


def test_far_points_and_points_on_a_mean_stay_finite(float64):
    prior = _calibrated_prior()
    means = prior.means.detach()
    z = torch.cat([means, means + 1e3, torch.full((1, 4), -1e4)])
    got = prior.class_log_prob(z)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.detach().numpy(), _scipy_class_log_prob(prior, z.numpy(), 0.0), rtol=1e-7)


def test_float32_matches_scipy_to_single_precision():
    prior = _calibrated_prior()
    z = _points(30, 4, seed=2)
    got = prior.class_log_prob(torch.from_numpy(z).float())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.detach().numpy(), _scipy_class_log_prob(prior, z, 0.0), rtol=1e-4, atol=1e-3)


def test_uniform_weights_and_fixed_means_by_default():
    prior = GaussianMixturePrior(4, 3)
    assert not prior.means.requires_grad and not prior.weight_logits.requires_grad
    torch.testing.assert_close(prior.log_weights.exp(), torch.full((4,), 0.25))
    learned = GaussianMixturePrior(4, 3, learn_means=True, learn_weights=True)
    assert learned.means.requires_grad and learned.weight_logits.requires_grad
    labels = torch.tensor([0, 1, 1, 3])
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    (-learned.class_log_prob(z).gather(1, labels.unsqueeze(1)).sum()).backward()
    assert learned.means.grad.abs().sum() > 0
    assert learned.weight_logits.grad.abs().sum() > 0


def test_means_follow_seed_and_scale():
    a = GaussianMixturePrior(5, 3, means_scale=1.0, seed=4)
    b = GaussianMixturePrior(5, 3, means_scale=2.5, seed=4)
    c = GaussianMixturePrior(5, 3, means_scale=1.0, seed=5)
    torch.testing.assert_close(b.means, 2.5 * a.means)
    assert not torch.allclose(a.means, c.means)
    assert torch.equal(GaussianMixturePrior(5, 3, means_scale=0.0, seed=4).means, torch.zeros(5, 3))
    assert prior_variance(GaussianMixturePrior(2, 2, variance=3.0)) == pytest.approx(3.0)


def prior_variance(prior: GaussianMixturePrior) -> float:
    return float(prior.log_variance.exp())


def test_means_are_the_best_separated_of_the_seeded_draws():
    """The docstring promises: of ``draws`` seeded draws, the one whose closest pair is farthest apart."""
    n_classes, dim, seed, draws = 8, 2, 0, 64
    candidates = torch.randn(draws, n_classes, dim, generator=torch.Generator().manual_seed(seed))

    def closest_pair(means: torch.Tensor) -> float:
        return float(torch.pdist(means).min())

    best = max(closest_pair(candidate) for candidate in candidates)
    chosen = _spread_means(n_classes, dim, seed, draws)
    assert closest_pair(chosen) == pytest.approx(best), (
        f"closest pair of the chosen means is {closest_pair(chosen):.3f}, but a draw with {best:.3f} exists "
        f"(the first draw has {closest_pair(candidates[0]):.3f})"
    )
    assert closest_pair(chosen) > closest_pair(candidates[0]), "the first draw is not the best here, so the choice matters"
    torch.testing.assert_close(GaussianMixturePrior(n_classes, dim, seed=seed).means, chosen)


@pytest.mark.parametrize(
    "n_classes, dim, variance, separation, seed",
    [(2, 2, 1.0, 7.0, 0), (8, 2, 1.72, 7.0, 1), (10, 64, 1.72, 7.0, 2), (3, 5, 0.3, 2.5, 3)],
)
def test_separation_puts_the_closest_means_that_many_std_apart(n_classes, dim, variance, separation, seed, float64):
    prior = GaussianMixturePrior(n_classes, dim, means_scale=123.0, variance=variance, seed=seed, separation=separation)
    distances = torch.pdist(prior.means.detach())
    assert float(distances.min()) == pytest.approx(separation * math.sqrt(variance), rel=1e-12)
    # The direction of the draw is kept: the means are the seeded draw scaled, means_scale ignored.
    drawn = _spread_means(n_classes, dim, seed)
    ratio = prior.means.detach() / drawn
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0])), rtol=1e-10, atol=0)
    # The separation holds in units of the component's standard deviation.
    nearest = float(distances.min()) / math.sqrt(prior_variance(prior))
    assert nearest == pytest.approx(separation, rel=1e-12)


def test_separation_with_one_class_falls_back_to_means_scale():
    prior = GaussianMixturePrior(1, 3, means_scale=2.0, seed=5, separation=7.0)
    torch.testing.assert_close(prior.means, 2.0 * _spread_means(1, 3, 5))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_classes": 3, "dim": 4},
        {"n_classes": 4, "dim": 2, "means_scale": 2.0, "variance": 0.5, "learn_means": True, "learn_weights": True, "seed": 7},
        {"n_classes": 5, "dim": 3, "variance": 1.72, "seed": 2, "separation": 7.0},
    ],
)
def test_spec_rebuilds_the_same_prior(kwargs, float64):
    prior = GaussianMixturePrior(**kwargs)
    with torch.no_grad():
        prior.weight_logits.add_(torch.linspace(-1, 1, prior.n_classes))
        prior.log_temperature.fill_(0.2)
    spec = prior.spec()
    assert spec == json.loads(json.dumps(spec)), "the spec is plain JSON"
    assert spec["type"] == "gaussian-mixture"
    rebuilt = GaussianMixturePrior(**{key: value for key, value in spec.items() if key != "type"})
    assert rebuilt.spec() == spec
    # The spec alone gives the same means and flags; the state dict adds what training changed.
    assert torch.equal(rebuilt.means, prior.means)
    assert rebuilt.means.requires_grad == prior.means.requires_grad
    assert rebuilt.weight_logits.requires_grad == prior.weight_logits.requires_grad
    rebuilt.load_state_dict(prior.state_dict(), strict=True)
    z = torch.from_numpy(_points(9, prior.dim, seed=4))
    assert torch.equal(rebuilt.class_log_prob(z), prior.class_log_prob(z))


def test_samples_have_the_component_mean_and_variance(float64):
    prior = _calibrated_prior()
    n = 60_000
    variance = VARIANCE  # the trained variance: calibration changes class probabilities only
    for k in range(3):
        labels = torch.full((n,), k, dtype=torch.long)
        z, returned = prior.sample(n, labels=labels, generator=torch.Generator().manual_seed(k))
        assert z.shape == (n, 4) and z.dtype == torch.float64
        assert torch.equal(returned, labels)
        tolerance = 5 * math.sqrt(variance / n)
        assert (z.mean(0) - prior.means[k]).abs().max() < tolerance
        np.testing.assert_allclose(z.var(0).numpy(), variance, rtol=0.03)
        # No correlation between coordinates: the components are isotropic.
        off_diagonal = torch.cov(z.T) - torch.diag(z.var(0))
        assert off_diagonal.abs().max() < 0.03 * variance


def test_samples_draw_components_from_the_mixture_weights(float64):
    prior = _calibrated_prior()
    n = 60_000
    z, labels = prior.sample(n, generator=torch.Generator().manual_seed(9))
    assert z.shape == (n, 4) and labels.shape == (n,)
    frequencies = np.bincount(labels.numpy(), minlength=3) / n
    np.testing.assert_allclose(frequencies, softmax(WEIGHT_LOGITS), atol=0.01)
    # Each sample lies around the mean of the component it says it came from (5 standard errors).
    std = math.sqrt(VARIANCE * math.exp(LOG_TEMPERATURE))
    for k in range(3):
        rows = z[labels == k]
        assert (rows.mean(0) - prior.means[k]).abs().max() < 5 * std / math.sqrt(len(rows))


def test_sampling_is_repeatable_with_a_generator():
    prior = _calibrated_prior()
    a = prior.sample(100, generator=torch.Generator().manual_seed(1))
    b = prior.sample(100, generator=torch.Generator().manual_seed(1))
    c = prior.sample(100, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_classes": 0, "dim": 2},
        {"n_classes": 2, "dim": 0},
        {"n_classes": -1, "dim": 2},
        {"n_classes": 2, "dim": 2, "variance": 0.0},
        {"n_classes": 2, "dim": 2, "variance": -1.0},
        {"n_classes": 2, "dim": 2, "means_scale": -0.5},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        GaussianMixturePrior(**kwargs)
