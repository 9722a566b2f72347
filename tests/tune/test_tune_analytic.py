"""Tests for csdraft.tune.analytic and csdraft.tune.agreement: the cost model's arithmetic
and the agreement statistics."""

from __future__ import annotations

import numpy as np
import pytest
from tune_helpers import geometric

from csdraft import tune
from csdraft.tune import CostCurve


@pytest.mark.parametrize(("a", "g", "c"), [(0.8, 4, 0.1), (0.5, 1, 0.3), (0.95, 12, 0.02)])
def test_ewif_closed_form(a, g, c):
    assert tune.ewif(a, g, c) == pytest.approx((1 - a ** (g + 1)) / ((1 - a) * (g * c + 1)))
    assert tune.expected_tokens(a, g) == pytest.approx(sum(a**j for j in range(g + 1)))


def test_ewif_perfect_acceptance():
    assert tune.expected_tokens(1.0, 5) == 6
    assert tune.ewif(1.0, 5, 0.2) == pytest.approx(6 / 2)
    g, best = tune.best_ewif(0.9, 0.05)
    assert best == max(tune.ewif(0.9, x, 0.05) for x in range(1, 17))
    assert tune.ewif(0.9, g, 0.05) == best


@pytest.mark.parametrize("a", [0.3, 0.7, 0.9])
@pytest.mark.parametrize("g", [1, 4, 8])
@pytest.mark.parametrize("c", [0.05, 0.3])
def test_cascade_model_reduces_to_ewif(a, g, c):
    """One drafter, constant costs, i.i.d. acceptance: the recursive model is EWIF."""
    model = tune.AnalyticModel(
        [CostCurve.constant(1.0).review, CostCurve.constant(c).review], {(0, 1): geometric(a)}
    )
    pred = model.predict([[g]])
    assert pred.speedup == pytest.approx(tune.ewif(a, g, c))
    assert pred.tokens_per_review == pytest.approx(tune.expected_tokens(a, g))


def test_prompt_lookup_costs_nothing_to_draft():
    # the only drafting rung is a cheap one (after every neural rung), free per proposal
    model = tune.AnalyticModel(
        [CostCurve.constant(1.0).review], {(0, 1): geometric(0.5)}, draft_s=[0.0]
    )
    assert model.predict([[6]]).speedup == pytest.approx(tune.expected_tokens(0.5, 6))


def test_perfect_acceptance_fills_every_block():
    ones = np.ones(40)
    single = tune.AnalyticModel(
        [CostCurve.constant(1.0).review, CostCurve.constant(0.1).review], {(0, 1): ones}
    )
    assert single.predict([[5]]).tokens_per_review == pytest.approx(6)
    cascade = tune.AnalyticModel(
        [CostCurve.constant(1.0).review, CostCurve.constant(0.1).review],
        {(0, 1): ones, (0, 2): ones, (1, 2): ones},
        draft_s=[0.0],
    )
    pred = cascade.predict([[4, 2], [0, 3]])
    assert pred.tokens_per_review == pytest.approx(7)
    # the drafter writes 4 tokens in one review of 3 Max-Gram proposals, all kept
    assert pred.speedup == pytest.approx(7 * 1.0 / (1.0 + 0.1))


def test_statistics_helpers():
    assert tune.run_lengths(np.array([1, 1, 0, 1, 1, 1], bool)).tolist() == [2, 1, 0, 3, 2, 1]
    proposals = np.array([[5, 6, 9], [6, 7, -1], [1, 2, 3]])
    assert tune.prefix_lengths(proposals, np.array([5, 6, 7])).tolist() == [2, 2, 0]
    s = tune.survival(np.array([0, 1, 2, 3]), depth=3)
    assert s.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
