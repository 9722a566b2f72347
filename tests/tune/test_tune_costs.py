"""Tests for csdraft.tune.costs: cost curves and measuring them through a model's session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csdraft import tune
from csdraft.tune import CostCurve


def test_cost_curve_interpolates_and_is_made_monotone():
    curve = CostCurve([1, 4, 8], [1.0, 2.0, 4.0])
    assert curve(1) == 1.0 and curve(0) == 1.0
    assert curve(6) == pytest.approx(3.0)
    assert curve(12) == pytest.approx(6.0)  # last slope continues
    assert curve.review(3) == curve(4)
    noisy = tune.monotone(CostCurve([1, 2, 8], [9.0, 1.0, 2.0]))
    assert noisy.seconds == [1.0, 1.0, 2.0]


class _Session:
    """A scorer that logs what it is asked (the engine's calling convention)."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.name = "fake"

    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        self.log.append((len(seq), start))
        return torch.zeros(len(seq) - start + 1, 5)

    def reset(self) -> None:
        self.log.append("reset")


class _Model:
    """A loaded model as tune sees it: only ``session``."""

    def __init__(self) -> None:
        self.log: list = []
        self.sessions: list[str] = []

    def session(self, name: str, vocab: int | None = None) -> _Session:
        self.sessions.append(name)
        return _Session(self.log)


def test_measure_cost_times_the_models_own_session():
    model = _Model()
    context = list(range(40))
    curve = tune.measure_cost(model, context, [7, 8, 9], lengths=(1, 4), repeats=1)
    assert model.sessions == ["cost"]
    assert curve.lengths == [1, 4, 40] and curve.prefill == 40
    assert curve.seconds == sorted(curve.seconds)  # made monotone
    # blocks of n new tokens after the context: seq holds context + n - 1 drafted tokens
    assert (40, 40) in model.log and (43, 40) in model.log
    assert model.log[-1] == "reset"  # the cache is freed afterwards


def test_measure_cost_of_trees_scores_combs_by_node_count():
    from engine_helpers import build_model

    from csdraft.models import TransformersScorer
    from csdraft.tune.costs import comb

    tree = comb([5, 6, 7, 8, 9])
    assert tree.parents == [-1, -1, 0, 0, 2] and tree.depth() == [1, 1, 2, 2, 3]

    class Tiny:
        def session(self, name: str, vocab: int | None = None) -> TransformersScorer:
            return TransformersScorer(build_model("llama", 16), name)

    curve = tune.measure_cost(Tiny(), list(range(12)), [1, 2], lengths=(1, 3, 5), repeats=1)
    trees = tune.measure_cost(
        Tiny(), list(range(12)), [1, 2], lengths=(1, 3, 5), repeats=1, prefill=False, tree=True
    )
    assert trees.lengths == [1, 3, 5] and curve.lengths == [1, 3, 5, 12]
    assert trees.seconds == sorted(trees.seconds) and trees.prefill is None
