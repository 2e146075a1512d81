"""The paper's Table 1 baselines behind one call: ``fit_predict(X_labeled, y_labeled, X_unlabeled, X_test, seed)``.

Labels are class codes ``0..C-1``; every method returns one predicted code per test row. The
supervised ones (kNN, logistic regression, the MLP) ignore ``X_unlabeled``, as in the paper; label
spreading and the Π-model use it. :mod:`flowgmm_cli.benchmark` hands every method the same features,
as they are or standardised with the pool's statistics.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import KNeighborsClassifier
from sklearn.semi_supervised import LabelSpreading
from torch import Tensor, nn

__all__ = ["Method", "KNN", "LogisticRegressionBaseline", "MLP", "LabelSpreadingBaseline", "PiModel", "loo_best_k"]

_PREDICT_CHUNK = 8192


class Method(Protocol):
    """A classifier fitted on one split: labeled rows, unlabeled rows, and the test rows to predict."""

    def fit_predict(self, X_labeled: np.ndarray, y_labeled: np.ndarray, X_unlabeled: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray: ...


def loo_best_k(X: np.ndarray, y: np.ndarray, candidates: tuple[int, ...]) -> int:
    """The ``k`` of a majority-vote kNN with the best leave-one-out accuracy on ``(X, y)``; the smallest on ties.

    Each row is classified by its ``k`` nearest other rows; a tied vote goes to the smallest class
    code, as in scikit-learn. Candidates of ``len(y)`` or more are skipped.

    Example:
        >>> X = np.array([[0.0], [1.0], [1.5], [2.0], [3.0], [10.0], [11.0], [12.0], [13.0]])
        >>> y = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1])
        >>> loo_best_k(X, y, (1, 3, 5))   # 1-NN misses the rows beside the stray 1.5
        3
    """
    usable = sorted(k for k in candidates if k < len(y)) or [1]
    distances = pairwise_distances(X)
    np.fill_diagonal(distances, np.inf)
    neighbours = y[np.argsort(distances, axis=1, kind="stable")[:, : max(usable)]]
    n_classes = int(y.max()) + 1
    best_k, best_accuracy = usable[0], -1.0
    for k in usable:
        votes = np.stack([(neighbours[:, :k] == c).sum(axis=1) for c in range(n_classes)], axis=1)
        accuracy = float(np.mean(votes.argmax(axis=1) == y))
        if accuracy > best_accuracy:
            best_k, best_accuracy = k, accuracy
    return best_k


@dataclass
class KNN:
    """k nearest neighbours on the labeled rows, ``k`` chosen by leave-one-out among ``candidates``."""

    candidates: tuple[int, ...] = (1, 3, 5, 7, 9, 11, 15, 21)

    def fit_predict(self, X_labeled: np.ndarray, y_labeled: np.ndarray, X_unlabeled: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
        k = loo_best_k(X_labeled, y_labeled, self.candidates)
        return KNeighborsClassifier(n_neighbors=k).fit(X_labeled, y_labeled).predict(X_test)


@dataclass
class LogisticRegressionBaseline:
    """L2-regularised multinomial logistic regression on the labeled rows (scikit-learn, ``C`` = 1)."""

    C: float = 1.0

    def fit_predict(self, X_labeled: np.ndarray, y_labeled: np.ndarray, X_unlabeled: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
        return LogisticRegression(C=self.C, max_iter=5000).fit(X_labeled, y_labeled).predict(X_test)


@dataclass
class LabelSpreadingBaseline:
    """Label spreading (Zhou et al., 2004) over labeled and unlabeled rows, with a kNN or an RBF graph.

    The RBF width adapts to the data: ``gamma = rbf_scale / median squared distance to the
    n_neighbors-th neighbour``, so the graph stays local whatever the dimension (scikit-learn's
    fixed ``gamma = 20`` gives a digit and its nearest neighbour an affinity of about e⁻²⁵⁰ even
    after standardising); ``rbf_scale`` = 30 was the best of 0.1 to 100 on standardised digits
    validation rows. Test rows of the RBF graph take the kernel-weighted average of the spread
    labels, computed stably: a test row far from every pool row would otherwise get all-zero
    weights. The kNN graph spreads for all ``iterations``: scikit-learn's default tolerance stops
    after about 5 sweeps, when labels have reached only rows 5 hops away, and leaves the rest
    without any label (420 of 1,000 rows on two moons).
    """

    kernel: str = "knn"
    n_neighbors: int = 10
    alpha: float = 0.2
    rbf_scale: float = 30.0
    iterations: int = 1000

    def fit_predict(self, X_labeled: np.ndarray, y_labeled: np.ndarray, X_unlabeled: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
        X = np.concatenate([X_labeled, X_unlabeled])
        y = np.concatenate([y_labeled, np.full(len(X_unlabeled), -1, dtype=y_labeled.dtype)])
        if self.kernel == "knn":
            model = LabelSpreading(kernel="knn", n_neighbors=self.n_neighbors, alpha=self.alpha, max_iter=self.iterations, tol=0.0)
            with warnings.catch_warnings():  # running all iterations is the point, not a failure to converge
                warnings.simplefilter("ignore", ConvergenceWarning)
                return model.fit(X, y).predict(X_test)
        gamma = self.rbf_scale / _neighbour_sq_distance(X, self.n_neighbors, seed)
        model = LabelSpreading(kernel="rbf", gamma=gamma, alpha=self.alpha, max_iter=self.iterations).fit(X, y)
        predicted = []
        for start in range(0, len(X_test), 1024):
            sq = pairwise_distances(X_test[start : start + 1024], X, metric="sqeuclidean")
            weights = np.exp(-gamma * (sq - sq.min(axis=1, keepdims=True)))
            predicted.append(model.classes_[np.argmax(weights @ model.label_distributions_, axis=1)])
        return np.concatenate(predicted)


def _neighbour_sq_distance(X: np.ndarray, k: int, seed: int, sample: int = 2000) -> float:
    """Median squared distance from (up to ``sample``) rows to their ``k``-th nearest neighbour."""
    rows = X if len(X) <= sample else X[np.random.default_rng(seed).choice(len(X), sample, replace=False)]
    distances = np.sort(pairwise_distances(rows, X, metric="sqeuclidean"), axis=1)
    return float(max(np.median(distances[:, min(k, len(X) - 1)]), 1e-12))


@dataclass
class MLP:
    """Table 1's "3-layer NN + dropout": three linear layers, ReLU and dropout, trained on the labeled rows.

    AdamW with a cosine schedule; each step draws ``labeled_batch_size`` labeled rows and adds
    Gaussian ``input_noise`` to them. Seeded; repeatable on the CPU.
    """

    hidden: int = 256
    dropout: float = 0.5
    input_noise: float = 0.1
    steps: int = 1000
    labeled_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    device: str = "cpu"

    def fit_predict(self, X_labeled: np.ndarray, y_labeled: np.ndarray, X_unlabeled: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        generator = torch.Generator(self.device).manual_seed(seed)
        x_l, y_l, x_u = (torch.as_tensor(a, device=self.device) for a in (X_labeled.astype(np.float32), y_labeled.astype(np.int64), X_unlabeled.astype(np.float32)))
        n_classes = int(y_labeled.max()) + 1
        network = nn.Sequential(
            nn.Linear(x_l.shape[1], self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden, n_classes),
        ).to(self.device)  # fmt: skip
        optimizer = torch.optim.AdamW(network.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.steps)
        network.train()
        for step in range(self.steps):
            batch = _batch(len(x_l), self.labeled_batch_size, generator, self.device)
            loss = nn.functional.cross_entropy(network(self._noisy(x_l[batch], generator)), y_l[batch])
            loss = loss + self._unlabeled_loss(network, x_u, step, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        network.eval()
        with torch.inference_mode():
            x_test = torch.as_tensor(X_test.astype(np.float32), device=self.device)
            return torch.cat([network(x_test[i : i + _PREDICT_CHUNK]).argmax(1) for i in range(0, len(x_test), _PREDICT_CHUNK)]).cpu().numpy()

    def _noisy(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return x + self.input_noise * torch.randn(x.shape, generator=generator, device=x.device)

    def _unlabeled_loss(self, network: nn.Module, x_unlabeled: Tensor, step: int, generator: torch.Generator) -> Tensor | float:
        """Nothing: the MLP learns from the labeled rows only; :class:`PiModel` adds its consistency term here."""
        return 0.0


@dataclass
class PiModel(MLP):
    """Π-model (Laine & Aila, 2017): the :class:`MLP` plus a dropout-consistency term on unlabeled rows.

    Loss: cross-entropy on labeled rows + ``w(t)`` × the squared distance between the softmax outputs
    of two passes over the same unlabeled batch, each with its own dropout mask and input noise.
    ``w`` ramps up as ``consistency · exp(-5 (1 - t / T)²)`` over the first ``ramp_up`` share of
    the steps, so the network first learns from the labels.
    """

    steps: int = 2000
    batch_size: int = 256
    consistency: float = 10.0
    ramp_up: float = 0.4

    def _unlabeled_loss(self, network: nn.Module, x_unlabeled: Tensor, step: int, generator: torch.Generator) -> Tensor | float:
        if len(x_unlabeled) == 0:
            return 0.0
        x = x_unlabeled[_batch(len(x_unlabeled), self.batch_size, generator, x_unlabeled.device)]
        first = network(self._noisy(x, generator)).softmax(dim=1)
        second = network(self._noisy(x, generator)).softmax(dim=1)
        return self._weight(step) * ((first - second) ** 2).sum(dim=1).mean()

    def _weight(self, step: int) -> float:
        ramp_steps = self.ramp_up * self.steps
        progress = min(1.0, step / ramp_steps) if ramp_steps > 0 else 1.0
        return self.consistency * math.exp(-5.0 * (1.0 - progress) ** 2)


def _batch(n: int, size: int, generator: torch.Generator, device: str | torch.device) -> Tensor:
    """``size`` distinct random row indices out of ``n`` (all of them when ``n <= size``)."""
    if n <= size:
        return torch.arange(n, device=device)
    return torch.randperm(n, generator=generator, device=device)[:size]
