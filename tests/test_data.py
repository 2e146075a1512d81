"""Training data: the in-memory source's batches (coverage, cycling, seeds, resuming, labeled noise) and the validation hold-out."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from flowgmm_cli.stores import ArrayStore
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from flowgmm_cli.data import InMemorySource, ShuffledSource
from flowgmm_cli.errors import OptionError
from flowgmm_cli.factory import build_model, build_source, prepare
from flowgmm_cli.options import TrainOptions
from flowgmm_cli.splits import hold_out
from flowgmm_cli.transforms import SquareRoot, Standardize, YeoJohnson


class FeatureNoise:
    """Gaussian noise with a standard deviation per feature, ``x + std · ε`` (a source's ``Noise``)."""

    def __init__(self, std: torch.Tensor) -> None:
        self.std = std

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x + torch.randn(x.shape, generator=generator) * self.std


def _ids(n: int, start: int = 0, dim: int = 2) -> torch.Tensor:
    """Rows whose every feature is the row's id, so a batch says which rows it holds."""
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).expand(n, dim).contiguous()


def _source(n_labeled: int = 10, n_unlabeled: int = 23, batch: int = 5, labeled_batch: int = 3, seed: int = 0, noise=None) -> InMemorySource:
    y = torch.arange(n_labeled) % 3
    return InMemorySource(_ids(n_labeled), y, _ids(n_unlabeled, start=1000), batch, labeled_batch, seed=seed, labeled_noise=None if noise is None else FeatureNoise(noise))


def _epoch(source: InMemorySource) -> list[tuple[list[int], list[int], list[int]]]:
    return [
        (batch.x_labeled[:, 0].long().tolist(), batch.y_labeled.tolist(), batch.x_unlabeled[:, 0].long().tolist())
        for batch in source.epoch()
    ]


def test_an_epoch_covers_every_unlabeled_row_exactly_once():
    source = _source(n_unlabeled=23, batch=5)
    assert source.steps_per_epoch == 5
    for _ in range(3):
        batches = _epoch(source)
        assert [len(unlabeled) for _, _, unlabeled in batches] == [5, 5, 5, 5, 3]
        seen = [row for _, _, unlabeled in batches for row in unlabeled]
        assert sorted(seen) == list(range(1000, 1023))
        assert seen != sorted(seen), "the rows are shuffled"


def test_labeled_batches_cycle_through_every_labeled_row():
    source = _source(n_labeled=12, n_unlabeled=80, batch=5, labeled_batch=3)  # 16 steps, 4 per pass over the labeled rows
    batches = _epoch(source)
    labeled = [batch for batch, _, _ in batches]
    assert all(len(rows) == 3 for rows in labeled)
    for start in range(0, 16, 4):
        one_pass = sorted(row for rows in labeled[start : start + 4] for row in rows)
        assert one_pass == list(range(12)), f"steps {start}-{start + 3} are not one pass over the labeled rows"
    assert labeled[:4] != labeled[4:8], "each pass is reshuffled"
    for rows, labels, _ in batches:
        assert labels == [row % 3 for row in rows], "labels travel with their rows"


def test_labeled_rows_are_never_repeated_within_a_pass_when_the_batch_does_not_divide_them():
    source = _source(n_labeled=10, n_unlabeled=300, batch=10, labeled_batch=3)  # 30 steps
    labeled = [rows for rows, _, _ in _epoch(source)]
    counts = Counter()
    for start in range(0, 30, 3):  # each pass uses 3 batches of 3 distinct rows before reshuffling
        rows = [row for batch in labeled[start : start + 3] for row in batch]
        assert len(rows) == len(set(rows)) == 9
        counts.update(rows)
    assert set(counts) == set(range(10)), "every labeled row is used"


def test_batch_sizes_are_capped_by_the_rows_there_are():
    source = _source(n_labeled=4, n_unlabeled=7, batch=100, labeled_batch=50)
    assert source.steps_per_epoch == 1
    [(labeled, _, unlabeled)] = _epoch(source)
    assert sorted(labeled) == [0, 1, 2, 3] and sorted(unlabeled) == list(range(1000, 1007))


def test_without_unlabeled_rows_an_epoch_runs_over_the_labeled_rows():
    source = _source(n_labeled=12, n_unlabeled=0, labeled_batch=4)
    assert source.steps_per_epoch == 3
    batches = _epoch(source)
    assert all(unlabeled == [] for _, _, unlabeled in batches)
    assert sorted(row for rows, _, _ in batches for row in rows) == list(range(12))


def test_training_needs_a_labeled_row():
    with pytest.raises(ValueError, match="at least one labeled row"):
        InMemorySource(_ids(0), torch.zeros(0, dtype=torch.long), _ids(5), 2, 2)


def test_the_same_seed_gives_the_same_batches():
    a, b, c = _source(seed=4), _source(seed=4), _source(seed=5)
    first = [_epoch(a), _epoch(a)]
    assert first == [_epoch(b), _epoch(b)]
    assert first[0] != first[1], "epochs differ from each other"
    assert _epoch(c) != first[0]


def test_state_dict_resumes_the_identical_sequence():
    noise = torch.tensor([0.5, 2.0])
    original = _source(seed=7, noise=noise)
    original_batches = [list(original.epoch())]
    state = original.state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    stored = load_tensors(save_tensors({k: v.contiguous() for k, v in state.items()}))  # as a checkpoint stores it
    later = [list(original.epoch()) for _ in range(2)]

    resumed = _source(seed=123, noise=noise)  # the seed is overridden by the loaded state
    resumed.load_state_dict(stored)
    again = [list(resumed.epoch()) for _ in range(2)]
    for epoch, epoch_again in zip(later, again, strict=True):
        for batch, batch_again in zip(epoch, epoch_again, strict=True):
            assert torch.equal(batch.x_labeled, batch_again.x_labeled)  # the noise too
            assert torch.equal(batch.y_labeled, batch_again.y_labeled)
            assert torch.equal(batch.x_unlabeled, batch_again.x_unlabeled)
    assert not torch.equal(original_batches[0][0].x_labeled, later[0][0].x_labeled)


def test_labeled_noise_has_the_given_per_feature_std():
    std = torch.tensor([0.05, 1.0, 3.0, 0.0])
    n_labeled, steps = 50, 200
    source = InMemorySource(
        torch.zeros(n_labeled, 4), torch.zeros(n_labeled, dtype=torch.long), _ids(steps * 10, dim=4), 10, n_labeled, seed=0, labeled_noise=FeatureNoise(std)
    )
    batches = list(source.epoch())
    assert len(batches) == steps
    noise = torch.cat([batch.x_labeled for batch in batches]).double()  # the rows are zeros: what is there is noise
    n = len(noise)
    assert n == 10_000
    # The sample std of n normal draws has relative standard error 1/√(2n) = 0.7%; allow 4 of them (2.8%).
    tolerance = 4 / math.sqrt(2 * n)
    measured = noise.std(0)
    torch.testing.assert_close(measured[:3], std[:3].double(), rtol=tolerance, atol=0)
    assert torch.all(noise[:, 3] == 0), "a zero std adds nothing"
    # Centred (4 standard errors of the mean) and independent between features.
    assert (noise.mean(0)[:3].abs() < 4 * std[:3].double() / math.sqrt(n)).all()
    correlation = torch.corrcoef(noise[:, :3].T)
    assert (correlation - torch.eye(3, dtype=torch.float64)).abs().max() < 4 / math.sqrt(n)
    # Fresh noise at every step, and none on the unlabeled rows.
    assert not torch.equal(batches[0].x_labeled, batches[1].x_labeled)
    for batch in batches:
        assert torch.equal(batch.x_unlabeled, batch.x_unlabeled[:, :1].expand(-1, 4))


def test_labeled_noise_option_is_in_standardised_units():
    """``labeled_noise`` is a std in standardised units; the source adds it in feature units."""
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.1, 1.0, 20.0])
    transform, options = prepare(ArrayStore(x), 10, 30, TrainOptions(labeled_noise=0.3, hidden=8, coupling_layers=1))
    model = build_model(transform, 2, options)
    source = build_source(ArrayStore(x[10:]), x[:10], torch.tensor([0, 1] * 5), model, options)
    scale = transform.layers[0].scale
    assert source.labeled_noise.parts == []  # standardisation alone: no round trip
    torch.testing.assert_close(source.labeled_noise.scale, 0.3 * scale)
    torch.testing.assert_close(scale, x.double().std(0, unbiased=False).float())


def test_behind_a_square_root_the_noise_is_added_in_its_standardised_roots():
    """Long-tailed rows in one unit take the root: the noise goes through the root alone (the
    standardisation after it only scales it) and is Gaussian of the given std where the flow sees
    the rows, at zero and far in the tail alike."""
    generator = torch.Generator().manual_seed(3)
    x = (torch.rand(3000, 4, generator=generator) < 0.5) * torch.exp(1.5 * torch.randn(3000, 4, generator=generator))
    transform, options = prepare(ArrayStore(x, units="shared"), 10, 2990, TrainOptions(labeled_noise=0.1, projection_dim=0, hidden=8, coupling_layers=1))
    assert options.square_root
    noise = build_source(ArrayStore(x[10:]), x[:10], torch.tensor([0, 1] * 5), build_model(transform, 2, options), options).labeled_noise
    assert [type(part) for part in noise.parts] == [SquareRoot]
    for point in (torch.zeros(1, 4), torch.full((1, 4), 40.0)):
        moved = noise(point.expand(4000, 4), torch.Generator().manual_seed(4))
        seen = transform(moved)[0] - transform(point)[0]
        torch.testing.assert_close(seen.double().std(0), torch.full((4,), 0.1, dtype=torch.float64), rtol=0.1, atol=0)


def test_with_a_power_transform_the_noise_is_added_where_the_flow_sees_the_rows():
    """Behind a Yeo-Johnson map the noise is Gaussian in the transformed, standardised units, so a
    heavy-tailed column's tail gets wider noise in feature units than its bulk."""
    generator = torch.Generator().manual_seed(1)
    x = torch.exp(2 * torch.randn(2000, 2, generator=generator))  # log-normal columns
    transform, options = prepare(ArrayStore(x), 10, 1990, TrainOptions(labeled_noise=0.1, power_transform=True, hidden=8, coupling_layers=1))
    model = build_model(transform, 2, options)
    noise = build_source(ArrayStore(x[10:]), x[:10], torch.tensor([0, 1] * 5), model, options).labeled_noise
    # the second standardisation only scales the noise; the map before it is inverted
    assert [type(part) for part in noise.parts] == [Standardize, YeoJohnson]
    for point in (torch.tensor([[0.5, 0.5]]), torch.tensor([[50.0, 50.0]])):
        moved = noise(point.expand(4000, 2), torch.Generator().manual_seed(2))
        seen = transform(moved)[0] - transform(point)[0]
        torch.testing.assert_close(seen.std(0), torch.full((2,), 0.1), rtol=0.1, atol=0)
    bulk, tail = (
        (noise(point.expand(4000, 2), torch.Generator().manual_seed(2)) - point).std(0) for point in (torch.tensor([[0.5, 0.5]]), torch.tensor([[50.0, 50.0]]))
    )
    assert (tail > 10 * bulk).all()


def test_without_labeled_noise_the_rows_are_untouched():
    for batch in _source(noise=None).epoch():
        assert torch.equal(batch.x_labeled, batch.x_labeled[:, :1].expand(-1, 2))  # every feature is still the row's id
        assert torch.equal(batch.x_labeled, batch.x_labeled.round())


# ------------------------------------------------------------------------------------ hold-out


CODES = np.array([0] * 10 + [1] * 4 + [-1] * 6 + [2] * 3)
CLASSES = np.array(["a", "b", "c"])


@pytest.mark.parametrize("fraction, held", [(0.2, {0: 2, 1: 1, 2: 1}), (0.5, {0: 5, 1: 2, 2: 2}), (0.0, {0: 0, 1: 0, 2: 0})])
def test_hold_out_takes_a_rounded_up_share_of_each_class(fraction, held):
    train, val = hold_out(CODES, fraction, seed=0, classes=CLASSES)
    assert dict(Counter(CODES[val].tolist())) == {k: v for k, v in held.items() if v}
    assert set(train).isdisjoint(val)
    assert sorted(np.concatenate([train, val]).tolist()) == np.flatnonzero(CODES >= 0).tolist(), "every labeled row, no unlabeled row"
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())


def test_hold_out_is_seeded():
    a = hold_out(CODES, 0.3, seed=1, classes=CLASSES)
    b = hold_out(CODES, 0.3, seed=1, classes=CLASSES)
    c = hold_out(CODES, 0.3, seed=2, classes=CLASSES)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_hold_out_keeps_a_row_of_every_class_or_names_the_option():
    with pytest.raises(OptionError) as caught:
        hold_out(CODES, 0.7, seed=0, classes=CLASSES)  # class c: ceil(0.7 × 3) = 3 of 3 rows
    assert caught.value.option == "val_fraction"
    assert "Class 'c' has no labeled row left" in str(caught.value)
    assert caught.value.render("--val-fraction").endswith("lower --val-fraction or label more rows of it.")


def test_the_view_is_a_noisy_copy_that_changes_no_other_draw():
    x_l, y_l, x_u = torch.randn(6, 3), torch.tensor([0, 1] * 3), torch.randn(40, 3)
    noise = FeatureNoise(torch.tensor([0.1, 1.0, 10.0]))
    plain = list(ShuffledSource(ArrayStore(x_u), x_l, y_l, 8, 3, seed=2, labeled_noise=noise).epoch())
    viewed = list(ShuffledSource(ArrayStore(x_u), x_l, y_l, 8, 3, seed=2, labeled_noise=noise, view_noise=noise).epoch())
    assert all(a.x_view is None for a in plain)
    for a, b in zip(plain, viewed, strict=True):
        assert torch.equal(a.x_labeled, b.x_labeled) and torch.equal(a.x_unlabeled, b.x_unlabeled)
    offsets = torch.cat([b.x_view - b.x_unlabeled for b in viewed])
    assert torch.allclose(offsets.std(dim=0), noise.std, rtol=0.2)  # 40 draws per feature: the std within 20%


def test_with_unlabeled_noise_too_the_rows_and_their_view_are_two_independent_perturbations():
    x_l, y_l, x_u = torch.randn(6, 3), torch.tensor([0, 1] * 3), torch.zeros(400, 3)
    noise = FeatureNoise(torch.tensor([0.1, 1.0, 10.0]))
    batches = list(ShuffledSource(ArrayStore(x_u), x_l, y_l, 80, 3, seed=2, view_noise=noise, unlabeled_noise=noise).epoch())
    first, second = torch.cat([b.x_unlabeled for b in batches]), torch.cat([b.x_view for b in batches])
    assert torch.allclose(first.std(dim=0), noise.std, rtol=0.15) and torch.allclose(second.std(dim=0), noise.std, rtol=0.15)
    correlation = torch.corrcoef(torch.stack([first[:, 1], second[:, 1]]))[0, 1]
    assert abs(correlation) < 0.2  # 400 pairs: independent draws correlate by about ±0.05
