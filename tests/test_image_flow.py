"""The image flow's layers: log-determinants against the autograd Jacobian in float64, inverses,
squeeze and factor-out identities, the pixel logit's density, and the views of training images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flowgmm_testutils import perturb_

from flowgmm_cli.augment import ImageAugment
from flowgmm_cli.image_layers import (
    ActNorm2d,
    ChannelCoupling,
    CheckerboardCoupling,
    MultiscaleRealNVP,
    Squeeze,
    max_scales,
    squeeze,
    unsqueeze,
)
from flowgmm_cli.transforms import PixelLogit


def _jacobian_log_det(function, x: torch.Tensor) -> torch.Tensor:
    """``log|det J|`` of ``function`` at each image of ``x`` from the full autograd Jacobian."""
    values = []
    for image in x:
        flat = image.reshape(-1)
        jacobian = torch.autograd.functional.jacobian(lambda v: function(v.reshape(1, *image.shape)).reshape(-1), flat)
        values.append(torch.linalg.slogdet(jacobian)[1])
    return torch.stack(values)


IMAGE_LAYERS = {
    "checkerboard-even-1x4x4": lambda: (CheckerboardCoupling(1, 4, 4, hidden=6, blocks=1, parity=0), (1, 4, 4)),
    "checkerboard-odd-3x4x4": lambda: (CheckerboardCoupling(3, 4, 4, hidden=6, blocks=2, parity=1), (3, 4, 4)),
    "checkerboard-odd-size-1x3x5": lambda: (CheckerboardCoupling(1, 3, 5, hidden=4, blocks=1, parity=0), (1, 3, 5)),
    "channel-4x2x2": lambda: (ChannelCoupling(4, hidden=6, blocks=1, flip=False), (4, 2, 2)),
    "channel-flipped-3x2x2": lambda: (ChannelCoupling(3, hidden=6, blocks=1, flip=True), (3, 2, 2)),
    "squeeze-3x4x4": lambda: (Squeeze(), (3, 4, 4)),
    "actnorm-3x4x4": lambda: (ActNorm2d(3), (3, 4, 4)),
}


def _ready(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """Layer ``name`` in float64 with random parameters (an ActNorm marked initialised), and its input shape."""
    layer, shape = IMAGE_LAYERS[name]()
    layer = perturb_(layer.double())
    if isinstance(layer, ActNorm2d):
        layer.initialized.fill_(True)
    return layer, shape


@pytest.mark.parametrize("name", sorted(IMAGE_LAYERS))
def test_image_layer_log_det_matches_the_autograd_jacobian(name):
    layer, shape = _ready(name)
    x = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, log_det = layer(x)
    assert log_det.shape == (3,)
    torch.testing.assert_close(log_det, _jacobian_log_det(lambda v: layer(v)[0], x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(IMAGE_LAYERS))
def test_image_layer_inverse_round_trips_without_a_forward_pass(name):
    layer, shape = _ready(name)
    x = torch.randn(5, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fresh = IMAGE_LAYERS[name]()[0].double()
    fresh.load_state_dict(layer.state_dict())  # the same layer, never called forward
    torch.testing.assert_close(fresh.inverse(layer(x)[0]), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,scales", [((1, 4, 4), 1), ((3, 4, 4), 1), ((1, 8, 8), 2), ((2, 6, 6), 0)])
def test_the_multiscale_flow_log_det_matches_the_autograd_jacobian(shape, scales):
    flow = perturb_(MultiscaleRealNVP(shape, scales=scales, couplings=2, hidden=4, blocks=1).double(), scale=0.2)
    x = torch.randn(2, math.prod(shape), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z, log_det = flow(x)
    assert z.shape == x.shape
    torch.testing.assert_close(log_det, _jacobian_log_det(lambda v: flow(v.reshape(1, -1))[0], x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flow.inverse(z), x, rtol=1e-12, atol=1e-12)


def test_the_multiscale_flow_with_actnorm_initialises_from_its_first_batch_and_inverts():
    flow = MultiscaleRealNVP((3, 4, 4), scales=1, couplings=1, hidden=4, blocks=1, actnorm=True).double()
    x = 5 + 3 * torch.randn(16, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    first = flow.ordered_layers()[0]
    flow.train()
    flow(x)
    activations = first(x.reshape(16, 3, 4, 4))[0]
    torch.testing.assert_close(activations.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    z, log_det = flow(x)
    torch.testing.assert_close(flow.inverse(z), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_det[:2], _jacobian_log_det(lambda v: flow(v.reshape(1, -1))[0], x[:2]), rtol=1e-10, atol=1e-10)


def test_squeeze_and_unsqueeze_are_inverse_and_move_each_two_by_two_block_into_channels():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    squeezed = squeeze(x)
    assert squeezed.shape == (2, 12, 2, 3)
    torch.testing.assert_close(unsqueeze(squeezed), x, rtol=0, atol=0)
    # channel 4c + 2a + b holds pixel (2i + a, 2j + b) of input channel c
    for c, a, b in [(0, 0, 0), (1, 1, 0), (2, 1, 1)]:
        torch.testing.assert_close(squeezed[:, 4 * c + 2 * a + b], x[:, c, a::2, b::2], rtol=0, atol=0)


def test_factored_out_parts_come_first_in_the_latent_and_the_last_part_last():
    """With identity couplings (fresh, zero last layers) the latent is only a reordering: the first
    half of the squeezed channels, then the rest."""
    flow = MultiscaleRealNVP((1, 4, 4), scales=1, couplings=1, hidden=4, blocks=1)
    x = torch.arange(16.0).reshape(1, 16)
    z, log_det = flow(x)
    squeezed = squeeze(x.reshape(1, 1, 4, 4))
    torch.testing.assert_close(z, torch.cat([squeezed[:, :2].flatten(1), squeezed[:, 2:].flatten(1)], 1))
    assert float(log_det.detach()) == 0.0
    assert sorted(z[0].tolist()) == x[0].tolist()


def test_sizes_that_do_not_halve_are_refused_with_the_number_of_scales_they_allow():
    assert max_scales(28, 28) == 2 and max_scales(32, 32) == 3 and max_scales(7, 7) == 0 and max_scales(8, 6) == 1
    with pytest.raises(ValueError, match="cannot be halved 3 times; use at most 2 scales"):
        MultiscaleRealNVP((1, 28, 28), scales=3)


def test_a_flow_is_rebuilt_from_its_spec():
    flow = MultiscaleRealNVP((1, 8, 8), scales=2, couplings=2, hidden=4, blocks=1, actnorm=True)
    spec = flow.spec()
    kind = spec.pop("type")
    assert kind == "multiscale-realnvp"
    rebuilt = MultiscaleRealNVP(**spec)
    rebuilt.load_state_dict(flow.state_dict())
    assert rebuilt.spec() == flow.spec()


# ----------------------------------------------------------------------------------- pixel logit


def test_pixel_logit_log_term_is_the_log_derivative():
    transform = PixelLogit(3)
    x = torch.tensor([[0.0, 17.3, 254.9], [-0.5, 128.0, 255.49]], dtype=torch.float64)
    _, log_term = transform(x)
    expected = _jacobian_log_det(lambda v: transform(v.reshape(1, -1))[0], x.reshape(2, 3))
    torch.testing.assert_close(log_term, expected, rtol=1e-12, atol=1e-12)


def test_pixel_logit_density_integrates_to_one_over_the_dequantised_range():
    """With a standard normal on the logit, ``exp(log N(u) + log_term)`` is a density of pixel
    values on [−1/2, 255.5): its integral on a fine grid is 1."""
    transform = PixelLogit(1)
    grid = torch.linspace(-0.5, 255.5, 400_001, dtype=torch.float64)[:-1] + 256 / 400_000 / 2
    u, log_term = transform(grid.unsqueeze(1))
    density = torch.exp(-0.5 * u.squeeze(1) ** 2 - 0.5 * math.log(2 * math.pi) + log_term)
    # the logit of [α, 1 − α] is a bounded interval: the normal's mass outside it is not in the integral
    alpha = transform.alpha
    edge = math.log(alpha / (1 - alpha))
    inside = 1 - math.erfc(-edge / math.sqrt(2))
    assert float(density.sum() * 256 / 400_000) == pytest.approx(inside, rel=1e-6)


def test_pixel_logit_inverse_round_trips_and_keeps_pixels_in_range():
    transform = PixelLogit(4)
    x = torch.tensor([[0.0, 1.0, 200.0, 255.0]], dtype=torch.float64)
    torch.testing.assert_close(transform.inverse(transform(x)[0]), x, rtol=0, atol=1e-9)
    extreme = transform.inverse(torch.tensor([[-50.0, 50.0, 0.0, 0.0]], dtype=torch.float64))
    assert extreme[0, 0] == -0.5 and 255.49 < extreme[0, 1] < 255.5
    assert torch.isfinite(transform(extreme)[1]).all()


# --------------------------------------------------------------------------------- augmentation


def test_views_are_shifted_copies_with_zeros_moved_in_and_the_same_for_the_same_seed():
    images = torch.arange(1, 2 * 36 + 1, dtype=torch.float32).reshape(2, 36)
    augment = ImageAugment((1, 6, 6), translate=2, dequantize=False)
    first = augment(images, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, augment(images, torch.Generator().manual_seed(5)), rtol=0, atol=0)
    for original, moved in zip(images.reshape(2, 6, 6), first.reshape(2, 6, 6)):
        kept = moved[moved != 0]
        assert len(kept) >= 16  # at most 2 rows and 2 columns move out
        found = [(down, right) for down in range(-2, 3) for right in range(-2, 3)
                 if torch.equal(torch.roll(original, (down, right), (0, 1))[moved != 0], kept)]  # fmt: skip
        assert found, "each view is its image shifted by at most 2 pixels"


def test_dequantisation_noise_stays_inside_each_pixel_bin():
    images = torch.full((64, 16), 7.0)
    noisy = ImageAugment((1, 4, 4), translate=0)(images, torch.Generator().manual_seed(6))
    assert noisy.min() >= 6.5 and noisy.max() < 7.5 and noisy.std() > 0.2


def test_flips_mirror_about_half_of_the_images():
    images = torch.arange(16.0).reshape(1, 16).expand(200, 16).contiguous()
    flipped = ImageAugment((1, 4, 4), flip=True, dequantize=False)(images, torch.Generator().manual_seed(7))
    mirrored = images.reshape(200, 1, 4, 4).flip(-1).reshape(200, 16)
    is_mirror = (flipped == mirrored).all(1)
    assert ((flipped == images).all(1) | is_mirror).all()
    assert 70 < int(is_mirror.sum()) < 130


def test_augmentation_is_refused_with_a_negative_shift():
    with pytest.raises(ValueError, match="non-negative"):
        ImageAugment((1, 4, 4), translate=-1)


def test_turning_views_on_leaves_the_dequantisation_of_unlabeled_rows_unchanged():
    """The unlabeled rows are dequantised from a generator of their own: turning views on leaves them unchanged."""
    from flowgmm_cli.data import ShuffledSource
    from flowgmm_cli.stores import ArrayStore

    augment = ImageAugment((1, 4, 4), translate=1)
    x_u = torch.randint(0, 256, (40, 16)).float()
    x_l, y_l = torch.randint(0, 256, (6, 16)).float(), torch.tensor([0, 1] * 3)

    def unlabeled(views):
        source = ShuffledSource(ArrayStore(x_u), x_l, y_l, 8, 4, seed=1, labeled_noise=augment, view_noise=views, unlabeled_noise=augment)
        return [batch.x_unlabeled for batch in source.epoch()]

    for a, b in zip(unlabeled(None), unlabeled(augment)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert np.isfinite(torch.cat(unlabeled(augment)).numpy()).all()


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 6, 7, 8])
def test_activations_at_any_depth_invert_to_the_input_and_end_in_the_latent(depth):
    flow = perturb_(MultiscaleRealNVP((1, 8, 8), scales=2, couplings=1, hidden=4, blocks=1).double(), scale=0.2)
    assert len(flow.ordered_layers()) == 8  # per scale: checkerboard, squeeze, channel; then 2 checkerboards
    x = torch.randn(3, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    h, parts = flow.activations(x, depth)
    torch.testing.assert_close(flow.invert_activations(h, parts, depth), x, rtol=1e-12, atol=1e-12)
    if depth == 8:
        torch.testing.assert_close(torch.cat([p.flatten(1) for p in parts] + [h.flatten(1)], 1), flow(x)[0], rtol=0, atol=0)


def test_under_bfloat16_autocast_only_the_convolutions_lose_precision():
    """Mixed precision (``--precision bfloat16``): the s/t networks' outputs come back in float32,
    so the log-determinant and the mixture are float32 and close to the float32 pass."""
    from flowgmm_cli.model import FlowGMM
    from flowgmm_cli.prior import GaussianMixturePrior

    torch.manual_seed(0)
    flow = perturb_(MultiscaleRealNVP((1, 8, 8), scales=2, couplings=1, hidden=8, blocks=1), scale=0.05)  # a tame flow, as in training
    model = FlowGMM(PixelLogit(64), flow, GaussianMixturePrior(3, 64, seed=0))
    x = torch.rand(4, 64) * 255
    exact = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x)
        _, log_det = flow(torch.randn(4, 1, 8, 8))
    assert mixed.dtype == torch.float32 and log_det.dtype == torch.float32
    assert not torch.equal(mixed, exact)  # the convolutions did run in bfloat16
    torch.testing.assert_close(mixed, exact, rtol=1e-3, atol=0.0)  # bfloat16 keeps 8 bits; the log-joints keep 3 digits


def test_the_bfloat16_option_trains_an_image_model_and_is_refused_for_vectors():
    from flowgmm_cli import FlowGMMClassifier
    from flowgmm_cli.errors import OptionError

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 1, 8, 8)).astype(np.uint8)
    y = np.where(np.arange(64) % 4 == 0, (np.arange(64) // 4) % 2, -1)
    options = dict(hidden=4, hidden_layers=1, coupling_layers=1, epochs=2, batch_size=16, precision="bfloat16")
    model = FlowGMMClassifier(**options).fit(x, y)
    assert model.options_.precision.value == "bfloat16"
    assert np.isfinite([row["loss"] for row in model.history_]).all()
    with pytest.raises(OptionError, match="applies to the image flow"):
        FlowGMMClassifier(**options).fit(x.reshape(64, -1).astype(np.float32), y)


def test_the_estimator_encodes_images_in_their_own_shape_as_it_predicts_them():
    from flowgmm_cli import FlowGMMClassifier

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 1, 8, 8)).astype(np.uint8)
    y = np.where(np.arange(32) % 4 == 0, (np.arange(32) // 4) % 2, -1)
    model = FlowGMMClassifier(hidden=4, hidden_layers=1, coupling_layers=1, epochs=1, batch_size=16, calibration_folds=0).fit(x, y)
    codes = model.encode(x)
    np.testing.assert_array_equal(codes, model.encode(x.reshape(32, -1)))
    assert codes.shape == (32, model.latent_dim_)
    np.testing.assert_allclose(model.decode(codes), x.reshape(32, -1), atol=1.0)  # dequantised pixels come back to their bin
