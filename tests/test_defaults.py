"""The data-dependent defaults: every rule of defaults.py, and explicit values (zeros included) kept as given."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from flowgmm_cli.defaults import (
    CALIBRATION_LEAST_STEPS,
    CALIBRATION_MIN_STEPS,
    CALIBRATION_STEP_SHARE,
    DENSE_ROWS_PER_DIM,
    DEFAULT_HIDDEN_LAYERS,
    DEFAULT_VARIANCE,
    MIN_STEPS,
    calibration_epochs,
    default_batch_sizes,
    default_coupling_layers,
    default_epochs,
    default_hidden,
    default_labeled_noise,
    default_means_separation,
    default_projection_dim,
    default_scaling,
    default_unlabeled_weight,
    is_dense,
    resolve,
    resolve_input,
    steps_per_epoch,
)
from flowgmm_cli.options import Permutation, Scaling, TrainOptions

#: Four rows in 3-D whose nearest-neighbour distances are 2, 1, 1 and √50: median 1.5.
HAND_ROWS = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.0, 1.0], [5.0, 5.0, 5.0]])
HAND_NOISE = 1.2 * 1.5 / math.sqrt(3)


@pytest.mark.parametrize(
    "dim, hidden",
    [(1, 512), (8, 512), (9, 128), (32, 128), (64, 128), (65, 256), (128, 256), (129, 512), (384, 512), (5000, 512)],
)
def test_hidden_width_of_sparse_data_follows_the_dimension(dim, hidden):
    assert default_hidden(dim, n_rows=dim) == hidden
    assert type(default_hidden(dim, n_rows=dim)) is int


@pytest.mark.parametrize("dim, layers, weight", [(1, 10, 1.0), (8, 10, 1.0), (9, 8, 0.3), (784, 8, 0.3)])
def test_coupling_layers_and_unlabeled_weight_change_above_eight_features(dim, layers, weight):
    assert default_coupling_layers(dim, n_rows=dim) == layers
    assert default_unlabeled_weight(dim) == weight


@pytest.mark.parametrize(
    "dim, rows, dense",
    [(2, 10, True), (16, 16 * DENSE_ROWS_PER_DIM - 1, False), (16, 16 * DENSE_ROWS_PER_DIM, True), (64, 1_297, False), (64, 64 * DENSE_ROWS_PER_DIM, True)],
)
def test_data_with_many_rows_per_dimension_gets_the_wide_flow(dim, rows, dense):
    assert is_dense(dim, rows) is dense
    assert (default_hidden(dim, rows), default_coupling_layers(dim, rows)) == ((512, 10) if dense else (default_hidden(dim, 0), 8))


def test_the_flow_width_counts_labeled_and_unlabeled_rows_in_the_flows_dimension():
    seen = np.random.default_rng(0).normal(size=(50, 16))
    enough = 16 * DENSE_ROWS_PER_DIM - 100
    wide = resolve(TrainOptions(epochs=1), n_labeled=100, n_unlabeled=enough, seen=seen)
    narrow = resolve(TrainOptions(epochs=1), n_labeled=100, n_unlabeled=enough - 1, seen=seen)
    assert (wide.hidden, wide.coupling_layers) == (512, 10)
    assert (narrow.hidden, narrow.coupling_layers) == (128, 8)


def test_constants():
    assert DEFAULT_HIDDEN_LAYERS == 1 and DEFAULT_VARIANCE == 1.72
    assert default_means_separation(2) == default_means_separation(500) == 7.0


@pytest.mark.parametrize(
    "rows, batch, epochs",
    [
        (1, 256, 2000),  # 3,000 one-step epochs capped at 2,000
        (512, 256, 1500),
        (1000, 256, 750),  # 4 steps per epoch (the last one short)
        (7 * 256, 256, 429),  # round(3000 / 7)
        (300 * 256, 256, 10),
        (1000 * 256, 256, 10),  # 3 epochs would give 3,000 steps, but at least 10
        (3001, 1, 10),
    ],
)
def test_epochs_aim_at_three_thousand_steps_within_ten_and_two_thousand(rows, batch, epochs):
    assert default_epochs(steps_per_epoch(0, rows, batch, batch)) == epochs  # low-dimensional data: always 3,000 steps


@pytest.mark.parametrize("epoch_steps", [1, 4, 20, 47])
def test_calibration_fits_run_a_sixth_of_the_model_and_behind_a_projection_never_too_few_steps(epoch_steps):
    """A sixth of the model's steps; behind a principal projection, where a sixth would be under the
    least (a sixth of a full-length run), that least; never longer than the model."""
    for dim in (2, 9, 384):
        epochs = default_epochs(epoch_steps, dim)
        model_steps = epochs * epoch_steps
        sixth = round(epochs * CALIBRATION_STEP_SHARE)
        assert calibration_epochs(model_steps, epoch_steps, projected=False) == max(1, sixth)
        fit_epochs = calibration_epochs(model_steps, epoch_steps, projected=True)
        assert fit_epochs == min(epochs, max(sixth, round(CALIBRATION_MIN_STEPS / epoch_steps)))
        assert fit_epochs * epoch_steps >= min(CALIBRATION_MIN_STEPS - epoch_steps / 2, model_steps), "none shorter than the least unless the model is"
    assert calibration_epochs(24, 2, projected=True) == 12 and calibration_epochs(24, 2, projected=False) == 12
    assert calibration_epochs(6000, 1, projected=True) == 1000


def test_the_fits_of_a_run_cut_short_run_the_least_steps_or_as_long_as_the_model():
    """No default run is shorter than :data:`MIN_STEPS`, whose sixth is the least; a run shortened
    with ``epochs`` gets fits of that least (whole epochs within it), or of its own length."""
    assert CALIBRATION_LEAST_STEPS == round(MIN_STEPS * CALIBRATION_STEP_SHARE) == 250
    assert calibration_epochs(1500, 5, projected=False) == 50, "a default run: its sixth is the least"
    assert calibration_epochs(500, 5, projected=False) == 50, "250 steps, not a sixth's 85"
    assert calibration_epochs(500, 3, projected=False) == 83, "249 steps: whole epochs within the least"
    assert calibration_epochs(200, 5, projected=False) == 40, "the model's own length"
    assert calibration_epochs(200, 5, projected=True) == 40


def test_a_calibration_fit_s_share_counts_steps_where_its_epoch_is_not_the_model_s():
    """Every row labeled: the model's epoch is 21 labeled batches, a fit's a pass over the 2 batches
    of labels it hides; its 420 steps are a sixth of the model's 2,520 all the same."""
    assert calibration_epochs(2520, 2, projected=False) == 210
    assert calibration_epochs(2520, 6, projected=True) == 83, "500 steps, the least behind a projection"
    assert calibration_epochs(10, 6, projected=True) == 1, "never longer than the model"


@pytest.mark.parametrize(
    ("rows", "batch", "epochs"),
    [
        (1000, 256, 375),  # 4 steps per epoch: 120 epochs would be 480 steps, at least 1,500
        (5000, 256, 120),  # 20 steps per epoch: 2,400 steps
        (12000, 256, 64),  # 47 steps per epoch: 120 epochs would be 5,640 steps, at most 3,000
        (1, 256, 1500),
    ],
)
def test_above_eight_features_small_sets_stop_after_enough_passes(rows, batch, epochs):
    assert default_epochs(steps_per_epoch(0, rows, batch, batch), dim=9) == epochs


@pytest.mark.parametrize(
    "n_labeled, n_unlabeled, sizes",
    [(10, 290, (256, 10)), (100, 1000, (256, 64)), (64, 256, (256, 64)), (70, 100, (100, 64)), (5, 0, (256, 5))],
)
def test_batch_sizes(n_labeled, n_unlabeled, sizes):
    assert default_batch_sizes(n_labeled, n_unlabeled) == sizes


@pytest.mark.parametrize("dim, n_rows, k", [(2, 100, 0), (64, 1000, 0), (65, 1000, 32), (384, 5000, 32), (100, 10, 9), (100, 1, 1)])
def test_projection_rule(dim, n_rows, k):
    assert default_projection_dim(dim, n_rows) == k


@pytest.mark.parametrize("dim, n_rows, k", [(64, 1000, 0), (100, 1000, 0), (129, 1000, 128), (1280, 3000, 128), (1280, 50, 49)])
def test_square_rooted_features_keep_more_directions(dim, n_rows, k):
    """Pooled CNN activations (the features the root is for) keep 128 directions, fewer where the
    rows allow fewer, and all where 128 would keep every feature."""
    assert default_projection_dim(dim, n_rows, square_root=True) == k
    assert resolve_input(TrainOptions(square_root=True), dim, n_rows).projection_dim == k


@pytest.mark.parametrize("dim, scaling", [(1, "feature"), (8, "feature"), (9, "shared"), (384, "shared")])
def test_scaling_rule_without_units_counts_features(dim, scaling):
    assert default_scaling(dim) == scaling
    assert resolve_input(TrainOptions(), dim, 1000).scaling is Scaling(scaling)


@pytest.mark.parametrize("dim", [2, 8, 16, 384])
def test_scaling_follows_the_columns_units_whatever_their_number(dim):
    assert resolve_input(TrainOptions(), dim, 1000, units="per-column").scaling is Scaling.feature
    assert resolve_input(TrainOptions(), dim, 1000, units="shared").scaling is Scaling.shared
    assert resolve_input(TrainOptions(scaling="shared"), dim, 1000, units="per-column").scaling is Scaling.shared  # a choice beats the rule


def test_labeled_noise_on_a_hand_computed_example():
    assert default_labeled_noise(HAND_ROWS) == pytest.approx(HAND_NOISE, rel=1e-12)
    # Two-dimensional: distances 1, 1, 2, 2, median 1.5, divided by √2.
    plane = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.0, 2.0]])
    assert default_labeled_noise(plane) == pytest.approx(1.2 * 1.5 / math.sqrt(2), rel=1e-12)
    # Duplicated rows are each other's neighbours at distance 0.
    assert default_labeled_noise(np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])) == 0.0
    assert default_labeled_noise(HAND_ROWS[:1]) == 0.0


def test_labeled_noise_is_measured_on_a_seeded_sample():
    rows = np.random.default_rng(0).normal(size=(400, 2))
    full = default_labeled_noise(rows, sample=400)
    sampled = default_labeled_noise(rows, seed=1, sample=100)
    assert sampled == default_labeled_noise(rows, seed=1, sample=100)
    assert sampled != default_labeled_noise(rows, seed=2, sample=100)
    # A quarter of the rows is sparser: neighbours are about twice as far.
    assert 1.5 * full < sampled < 2.5 * full


def test_resolve_fills_every_rule_on_a_hand_computed_example():
    resolved = resolve(TrainOptions(), n_labeled=2, n_unlabeled=2, seen=HAND_ROWS)
    assert resolved.labeled_noise == pytest.approx(HAND_NOISE, rel=1e-12)
    assert (resolved.hidden, resolved.coupling_layers, resolved.hidden_layers) == (512, 10, 1)
    assert (resolved.unlabeled_weight, resolved.variance) == (1.0, 1.72)
    assert (resolved.batch_size, resolved.labeled_batch_size) == (2, 2)
    assert resolved.epochs == 2000  # one step per epoch
    assert resolved.means_scale is None  # the means are then placed 7 std apart


def test_resolve_uses_the_dimension_the_flow_sees():
    seen = np.random.default_rng(0).normal(size=(300, 32))  # e.g. 384 features projected to 32
    resolved = resolve(TrainOptions(), n_labeled=20, n_unlabeled=280, seen=seen)
    assert (resolved.hidden, resolved.coupling_layers, resolved.unlabeled_weight) == (128, 8, 0.3)
    assert resolved.labeled_noise == pytest.approx(default_labeled_noise(seen), rel=1e-12)


def test_resolve_passes_the_seed_to_the_noise_sample():
    seen = np.random.default_rng(1).normal(size=(2100, 2))  # above the 2,000-row sample
    a = resolve(TrainOptions(random_state=3), n_labeled=10, n_unlabeled=2090, seen=seen).labeled_noise
    assert a == pytest.approx(default_labeled_noise(seen, seed=3), rel=1e-12)
    assert a != resolve(TrainOptions(random_state=4), n_labeled=10, n_unlabeled=2090, seen=seen).labeled_noise


@pytest.mark.parametrize(
    "options, n_labeled, n_unlabeled, epochs",
    [
        (TrainOptions(), 20, 1000, 750),  # 4 unlabeled batches of 256 per epoch
        (TrainOptions(batch_size=100), 20, 1000, 300),  # the given batch size sets the steps
        (TrainOptions(), 100, 0, 1500),  # no unlabeled rows: epochs over the labeled rows, 64 per batch
        (TrainOptions(labeled_batch_size=10), 100, 0, 300),
    ],
)
def test_resolve_epochs_follow_the_batches_of_an_epoch(options, n_labeled, n_unlabeled, epochs):
    seen = np.random.default_rng(0).normal(size=(n_labeled + n_unlabeled, 2))
    assert resolve(options, n_labeled=n_labeled, n_unlabeled=n_unlabeled, seen=seen).epochs == epochs


@pytest.mark.parametrize(
    "dim, n_rows, given, expected",
    [
        (64, 1000, None, 0),
        (65, 1000, None, 32),
        (100, 10, None, 9),
        (100, 1000, 0, 0),  # 0 means off, even above 64 features
        (100, 1000, 50, 50),
        (100, 1000, 100, 0),  # every feature: no projection
        (100, 1000, 150, 0),
        (3, 100, 2, 2),  # a given projection applies at any width
    ],
)
def test_resolve_input_projection(dim, n_rows, given, expected):
    assert resolve_input(TrainOptions(projection_dim=given), dim, n_rows).projection_dim == expected


EXPLICIT = TrainOptions(
    coupling_layers=3, hidden=5, hidden_layers=0, means_scale=0.0, variance=0.5, scaling="feature", projection_dim=0,
    unlabeled_weight=0.0, labeled_noise=0.0, perturbation=0.0, epochs=7, batch_size=9, labeled_batch_size=4, permutation="random",
    power_transform=False, square_root=False, calibration_folds=0, classification_weight=0.0, learn_weights=False, flow="vector", scales=0, translate=0, consistency_weight=0.0,
    members=1,
)  # fmt: skip


def test_the_views_perturbation_is_half_the_labeled_noise_on_dense_wide_data_else_all_of_it():
    dense = np.random.default_rng(0).normal(size=(2000, 16))  # 125 rows per dimension
    auto = resolve(TrainOptions(), n_labeled=20, n_unlabeled=1980, seen=dense)
    assert auto.perturbation == 0.5 * auto.labeled_noise and auto.labeled_noise > 0
    assert resolve(TrainOptions(labeled_noise=0.3), n_labeled=20, n_unlabeled=1980, seen=dense).perturbation == 0.15
    sparse = dense[:300]  # 19 rows per dimension
    assert resolve(TrainOptions(labeled_noise=0.3), n_labeled=20, n_unlabeled=280, seen=sparse).perturbation == 0.3
    low_dimensional = dense[:, :4]  # as many rows per dimension as any, but few dimensions
    assert resolve(TrainOptions(labeled_noise=0.3), n_labeled=20, n_unlabeled=1980, seen=low_dimensional).perturbation == 0.3
    assert resolve(TrainOptions(labeled_noise=0.3, perturbation=0.1), n_labeled=20, n_unlabeled=1980, seen=dense).perturbation == 0.1


@pytest.mark.parametrize("dim", [3, 100])
def test_explicit_values_zeros_included_are_never_replaced(dim):
    seen = np.random.default_rng(0).normal(size=(500, dim))
    assert resolve_input(EXPLICIT, dim, 500) == EXPLICIT
    assert resolve(EXPLICIT, n_labeled=20, n_unlabeled=480, seen=seen) == EXPLICIT
    assert resolve(resolve_input(EXPLICIT, dim, 500), n_labeled=20, n_unlabeled=0, seen=seen) == EXPLICIT


def test_after_both_steps_only_the_square_root_and_means_scale_are_left():
    """The square root follows the rows' least value (``factory.prepare``, which reads them); the
    means' scale is left to the model."""
    x = np.random.default_rng(0).normal(size=(200, 5))
    options = resolve_input(TrainOptions(), 5, 200)
    resolved = resolve(options, n_labeled=10, n_unlabeled=190, seen=x)
    unset = [field.name for field in dataclasses.fields(resolved) if getattr(resolved, field.name) is None]
    assert unset == ["means_scale", "square_root"]
    # Settings that no rule touches come through unchanged.
    assert (resolved.permutation, resolved.lr, resolved.random_state) == (Permutation.reverse, 1e-3, 0)


@pytest.mark.parametrize(("units", "expected"), [("per-column", (True, 1.0, True)), ("shared", (False, 0.0, False)), (None, (False, 0.0, False))])
def test_tables_get_the_power_map_the_cross_entropy_and_learned_weights(units, expected):
    resolved = resolve_input(TrainOptions(), 16, 15_000, units=units)
    assert (resolved.power_transform, resolved.classification_weight, resolved.learn_weights) == expected
    chosen = resolve_input(TrainOptions(power_transform=False, classification_weight=0.5, learn_weights=False), 16, 15_000, units=units)
    assert (chosen.power_transform, chosen.classification_weight, chosen.learn_weights) == (False, 0.5, False)  # a choice beats the rule


@pytest.mark.parametrize(("n_classes", "members"), [(2, 1), (4, 1), (5, 3), (10, 3), (26, 3)])
def test_the_seed_ensemble_follows_the_number_of_classes(n_classes, members):
    """Three members from five classes on, whatever the rows' units or shape; a choice beats the rule."""
    seen = np.random.default_rng(0).normal(size=(300, 4))
    counts = np.full(n_classes, 3)
    assert resolve(TrainOptions(), n_labeled=3 * n_classes, n_unlabeled=300, seen=seen, class_counts=counts).members == members
    assert resolve(TrainOptions(members=2), n_labeled=3 * n_classes, n_unlabeled=300, seen=seen, class_counts=counts).members == 2
    assert resolve(TrainOptions(), n_labeled=3 * n_classes, n_unlabeled=300, seen=seen).members == 1  # no classes known: one flow
