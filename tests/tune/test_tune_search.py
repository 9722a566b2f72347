"""Tests for csdraft.tune.search: the candidate grid, settings keys, and which candidates run
for real."""

from __future__ import annotations

import pytest
from tune_helpers import spec_with

from csdraft import tune
from csdraft.engine import kmatrix


@pytest.mark.parametrize(("drafters", "maxgram"), [(1, False), (0, True), (1, True), (2, True)])
def test_candidates_respect_shape_rules(drafters, maxgram):
    spec = spec_with(drafters, maxgram)
    d = spec.drafting_rungs
    grid = tune.candidate_grid(d)
    assert grid
    assert len(set(grid)) == len(grid)
    for i, k in enumerate(grid):
        assert spec.replace(k_matrix=[list(r) for r in k]).k_matrix == k
        assert kmatrix.canonical(k) == k
        assert any(k[0])
        for nb in tune.neighbours(k) if i < 200 else ():
            spec.replace(k_matrix=[list(r) for r in nb])
    if d == 2:
        assert len(grid) > 100
        assert ((4, 2), (0, 6)) in grid


def test_candidate_grid_samples_large_ladders_reproducibly():
    grid = tune.candidate_grid(4, limit=500, seed=3)
    assert grid == tune.candidate_grid(4, limit=500, seed=3)
    spec = spec_with(3, True)
    for k in grid:
        spec.replace(k_matrix=[list(r) for r in k])


def test_settings_that_cannot_act_are_neutral():
    # one drafter + Max-Gram: n_neural = 2 (target and drafter)
    assert tune.setting_key(((0, 5), (0, 0)), 3.0, 0.5, 2) == (((0, 5), (0, 0)), 1.0, 0.0, None)
    assert tune.setting_key(((4, 0), (0, 0)), 3.0, 0.5, 2) == (((4, 0), (0, 0)), 1.0, 0.5, None)
    assert tune.setting_key(((4, 0), (0, 3)), 3.0, 0.5, 2) == (((4, 0), (0, 3)), 3.0, 0.5, None)
    spec = spec_with(1, True).with_settings(k_matrix=[[8, 0], [0, 4]], min_confidence=0.4)
    assert tune.current_setting(spec) == (((8, 0), (0, 4)), 1.0, 0.4, None)
    steps = tune.nearby(tune.Candidate(((8, 0), (0, 4)), 1.0, 0.4))
    assert (((8, 0), (0, 4)), 1.0, 0.3, None) in steps
    assert (((8, 0), (0, 4)), 1.0, 0.5, None) in steps
    assert (((9, 0), (0, 4)), 1.0, 0.4, None) in steps


def test_pick_for_measurement_covers_the_questions():
    def cand(k, floor, speed):
        return tune.Candidate(k, 1.0, floor, pred=tune.Prediction(speed, 3.0, [1.0], [2.0]))

    best = cand(((9, 2), (0, 4)), 0.7, 2.3)
    near = cand(((9, 3), (0, 4)), 0.7, 2.29)  # all but the best: not worth a real run
    at_current_k = cand(((8, 0), (0, 4)), 0.6, 2.2)
    current = cand(((8, 0), (0, 4)), 0.4, 2.0)
    vertical = cand(((6, 0), (0, 3)), 0.4, 1.9)
    horizontal = cand(((4, 3), (0, 0)), 0.4, 1.8)
    no_maxgram = cand(((4, 0), (0, 0)), 0.4, 1.7)
    lookup = cand(((0, 3), (0, 0)), 0.0, 1.3)
    lenient = cand(((9, 2), (0, 4)), 0.7, 2.28)
    lenient.lenience = 3.0
    ranked = [best, near, lenient, at_current_k, current, vertical, horizontal, no_maxgram, lookup]
    picked = tune.pick_for_measurement(ranked, current, 2, True, 1e9, 1.0, most=10)
    # the best vertical-only setting is at_current_k, already picked
    assert picked == [best, current, at_current_k, lenient, horizontal, lookup, no_maxgram]
    # a budget that fits one round of only a few keeps the best and the current first
    assert tune.pick_for_measurement(ranked, current, 2, True, 3.5, 1.0) == [best, current]


def test_search_finds_the_best_block_on_a_synthetic_calibration():
    """With a drafter that never disagrees and costs a tenth of the target, the replay's best
    is a long block, the ladder's current setting is among the candidates, and the ranking is
    by predicted speedup."""
    from tune_helpers import synthetic_calibration

    cal = synthetic_calibration(None, t=20, c=0.1)
    spec = spec_with(1, False).with_settings(k_matrix=[[2]])
    agree = tune.agreement(cal)
    ranked = tune.search(
        cal, spec, tune.Replay(cal), tune.AnalyticModel.from_calibration(cal, agree)
    )
    speeds = [c.speedup for c in ranked]
    assert speeds == sorted(speeds, reverse=True)
    assert ranked[0].k[0][0] > 2
    assert any(c.key == tune.current_setting(spec) for c in ranked)
