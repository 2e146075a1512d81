"""The training objective: each term against a hand computation, weights, and the per-dimension report."""

from __future__ import annotations

import math

import pytest
import torch

from flowgmm_cli.data import Batch
from flowgmm_cli.layers import RealNVP
from flowgmm_cli.model import FlowGMM
from flowgmm_cli.objective import ConsistencyNLL, LabeledCrossEntropy, LabeledNLL, Objective, StepOutputs, UnlabeledNLL
from flowgmm_cli.prior import GaussianMixturePrior
from flowgmm_cli.transforms import Standardize, TransformChain
from flowgmm_testutils import perturb_

#: log p(x, y=k) for five rows (ids 0-4) and two classes.
TABLE = [[-1.0, -3.0], [-2.0, -0.5], [-4.0, -4.0], [-0.25, -6.0], [-7.0, -1.5]]


class TableModel(torch.nn.Module):
    """A stand-in model whose ``log p(x, y=k)`` is a learnable table row chosen by the row id in ``x[:, 0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(TABLE, dtype=torch.float64))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.table[x[:, 0].long()]


def _batch(labeled: list[int], labels: list[int], unlabeled: list[int], dim: int = 2) -> Batch:
    def rows(ids: list[int]) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.float64).reshape(-1, 1).expand(-1, dim).contiguous()

    return Batch(rows(labeled), torch.tensor(labels, dtype=torch.long), rows(unlabeled))


def _outputs(batch: Batch, model: torch.nn.Module) -> StepOutputs:
    joint = model(torch.cat([batch.x_labeled, batch.x_unlabeled]))
    n = len(batch.x_labeled)
    return StepOutputs(joint[:n], joint[n:], batch, model)


def _logaddexp(a: float, b: float) -> float:
    return math.log(math.exp(a) + math.exp(b))


def test_labeled_nll_is_minus_the_mean_log_joint_of_the_true_class():
    batch = _batch([0, 1, 3], [0, 1, 1], [])
    value = LabeledNLL()(_outputs(batch, TableModel()))
    assert value.shape == ()
    assert value.item() == pytest.approx(-(-1.0 + -0.5 + -6.0) / 3, rel=1e-14)


def test_unlabeled_nll_is_minus_the_mean_log_evidence():
    batch = _batch([0], [0], [2, 3, 4])
    value = UnlabeledNLL()(_outputs(batch, TableModel()))
    expected = -(_logaddexp(-4.0, -4.0) + _logaddexp(-0.25, -6.0) + _logaddexp(-7.0, -1.5)) / 3
    assert value.item() == pytest.approx(expected, rel=1e-14)


def test_unlabeled_term_is_zero_without_unlabeled_rows():
    batch = _batch([0, 1], [1, 0], [])
    assert batch.x_unlabeled.shape == (0, 2)
    value = UnlabeledNLL()(_outputs(batch, TableModel()))
    assert value.shape == () and value.item() == 0.0


def test_objective_weighs_the_terms_and_reports_them_per_dimension():
    batch = _batch([0, 4], [1, 1], [1, 2], dim=4)
    labeled = -(-3.0 + -1.5) / 2
    unlabeled = -(_logaddexp(-2.0, -0.5) + _logaddexp(-4.0, -4.0)) / 2
    model = TableModel()
    objective = Objective([(LabeledNLL(), 1.0), (UnlabeledNLL(), 0.3)], dim=4)
    assert objective.names == ["labeled_nll", "unlabeled_nll"]
    loss, values = objective(model, batch)
    assert model.calls == 1, "one forward pass over labeled and unlabeled rows together"
    assert values.tolist() == pytest.approx([labeled / 4, unlabeled / 4], rel=1e-14)
    assert loss.item() == pytest.approx((labeled + 0.3 * unlabeled) / 4, rel=1e-14)
    assert not values.requires_grad and loss.requires_grad

    # Weights multiply their term: doubling the unlabeled weight adds one more unlabeled term.
    heavier, _ = Objective([(LabeledNLL(), 1.0), (UnlabeledNLL(), 0.6)], dim=4)(model, batch)
    assert (heavier - loss).item() == pytest.approx(0.3 * unlabeled / 4, rel=1e-12)
    scaled, scaled_values = Objective([(LabeledNLL(), 2.0), (UnlabeledNLL(), 0.0)], dim=4)(model, batch)
    assert scaled.item() == pytest.approx(2 * labeled / 4, rel=1e-14)
    assert torch.equal(scaled_values, values), "the reported values do not depend on the weights"


def test_the_gradient_reaches_only_the_rows_in_the_batch():
    model = TableModel()
    batch = _batch([0], [1], [2])
    loss, _ = Objective([(LabeledNLL(), 1.0), (UnlabeledNLL(), 0.5)], dim=2)(model, batch)
    loss.backward()
    expected = torch.zeros(5, 2, dtype=torch.float64)
    expected[0, 1] = -1.0 / 2  # −log p(x₀, y=1), divided by the dimension
    expected[2] = -0.5 * torch.softmax(torch.tensor(TABLE[2], dtype=torch.float64), 0) / 2
    torch.testing.assert_close(model.table.grad, expected, rtol=1e-14, atol=1e-14)


def test_no_unlabeled_rows_leaves_the_labeled_loss():
    batch = _batch([0, 1], [0, 0], [])
    loss, values = Objective([(LabeledNLL(), 1.0), (UnlabeledNLL(), 1.0)], dim=2)(TableModel(), batch)
    assert values.tolist() == pytest.approx([(1.0 + 2.0) / 2 / 2, 0.0], rel=1e-14)
    assert loss.item() == pytest.approx(0.75, rel=1e-14)


def test_objective_on_a_real_model_is_the_equation_of_the_paper(float64):
    torch.manual_seed(0)
    model = FlowGMM(TransformChain([Standardize(3)]), perturb_(RealNVP(3, coupling_layers=2, hidden=8)), GaussianMixturePrior(2, 3))
    generator = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(4, 3, generator=generator), torch.tensor([0, 1, 1, 0]), torch.randn(6, 3, generator=generator))
    loss, values = Objective([(LabeledNLL(), 1.0), (UnlabeledNLL(), 0.3)], dim=3)(model, batch)
    labeled = -model(batch.x_labeled).gather(1, batch.y_labeled.unsqueeze(1)).mean()
    unlabeled = -model.log_prob(batch.x_unlabeled).mean()
    torch.testing.assert_close(values, torch.stack([labeled, unlabeled]).detach() / 3, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, (labeled + 0.3 * unlabeled) / 3, rtol=1e-12, atol=1e-12)


def test_labeled_cross_entropy_is_minus_the_mean_log_posterior_of_the_true_class_per_row():
    """``−log p(y | x) = −log p(x, y) + log Σ_k p(x, k)``, not divided by the dimension."""
    batch = _batch([0, 1, 4], [0, 1, 0], [2])
    objective = Objective([(LabeledNLL(), 1.0), (LabeledCrossEntropy(), 3.0)], dim=4)
    loss, values = objective(TableModel(), batch)
    expected = -((TABLE[0][0] - _logaddexp(*TABLE[0])) + (TABLE[1][1] - _logaddexp(*TABLE[1])) + (TABLE[4][0] - _logaddexp(*TABLE[4]))) / 3
    labeled = -(TABLE[0][0] + TABLE[1][1] + TABLE[4][0]) / 3
    assert values.tolist() == pytest.approx([labeled / 4, expected], rel=1e-12)
    assert loss.item() == pytest.approx(labeled / 4 + 3.0 * expected, rel=1e-12)


def test_labeled_cross_entropy_moves_the_true_class_up_and_the_others_down():
    model = TableModel()
    LabeledCrossEntropy()(_outputs(_batch([0], [1], []), model)).backward()
    assert model.table.grad[0, 1] < 0 < model.table.grad[0, 0], "descending the loss raises the true class's log joint"
    assert model.table.grad[1:].abs().sum() == 0


class TablePrior(torch.nn.Module):
    """A stand-in prior with unequal class weights, so ``log p(x | y)`` differs from ``log p(x, y)``."""

    log_weights = torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_consistency_is_minus_log_p_of_the_unlabeled_rows_given_the_class_of_their_view():
    """Equation 7 by hand on the table: the first view (the unlabeled rows) is row 0, 1 or 3; the
    second view (row 1, 4 or 3) decides the class, in a pass of its own without gradient."""
    model = TableModel()
    model.prior = TablePrior()
    batch = _batch([2], [0], [0, 1, 3])
    batch.x_view = _batch([], [], [1, 4, 3]).x_unlabeled  # its argmax: 1, 1, 0
    objective = Objective([(ConsistencyNLL(ramp=0.0), 1.0)], dim=1)
    loss, values = objective(model, batch)
    assert model.calls == 2, "one pass with gradient, one for the view"
    log_weights = TablePrior.log_weights.tolist()
    expected = -((TABLE[0][1] - log_weights[1]) + (TABLE[1][1] - log_weights[1]) + (TABLE[3][0] - log_weights[0])) / 3
    assert loss.item() == pytest.approx(expected) and values.tolist() == pytest.approx([expected])
    loss.backward()
    assert model.table.grad[2].abs().sum() == 0, "the labeled rows are not in the term"
    assert model.table.grad[4].abs().sum() == 0 and model.table.grad[1, 0] == 0, "the second view gets no gradient"


def test_consistency_of_an_identical_view_is_minus_the_best_class_conditional_log_density():
    model = TableModel()
    model.prior = TablePrior()
    batch = _batch([0], [0], [0, 4])
    batch.x_view = batch.x_unlabeled
    loss, _ = Objective([(ConsistencyNLL(ramp=0.0), 1.0)], dim=1)(model, batch)
    log_weights = TablePrior.log_weights
    best = [max(TABLE[row][k] - float(log_weights[k]) if TABLE[row][k] == max(TABLE[row]) else -math.inf for k in range(2)) for row in (0, 4)]
    assert loss.item() == pytest.approx(-sum(best) / 2)


@pytest.mark.parametrize(("progress", "factor"), [(0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (0.9, 1.0)])
def test_the_consistency_weight_ramps_up_over_the_first_half(progress, factor):
    model = TableModel()
    model.prior = TablePrior()
    batch = _batch([0], [0], [0, 4])
    batch.x_view = batch.x_unlabeled
    objective = Objective([(LabeledNLL(), 1.0), (ConsistencyNLL(), 2.0)], dim=1)
    loss, values = objective(model, batch, progress)
    assert loss.item() == pytest.approx(values[0].item() + 2.0 * factor * values[1].item())


def test_without_views_the_consistency_term_is_zero():
    model = TableModel()
    model.prior = TablePrior()
    loss, values = Objective([(ConsistencyNLL(), 1.0)], dim=1)(model, _batch([0], [0], [2]))
    assert loss.item() == 0.0 and values.tolist() == [0.0]
