"""bench arithmetic: spreads, speedups, SWI, acceptance by position, the speed bar."""

from __future__ import annotations

import pytest

from csdraft.bench import metrics
from csdraft.trace import Commit, Finish, Review, Start, Stats


def test_spread():
    s = metrics.spread([4.0, 1.0, 3.0, 2.0])
    assert s == {"n": 4, "median": 2.5, "mean": 2.5, "min": 1.0, "max": 4.0, "q1": 1.75, "q3": 3.25}
    one = metrics.spread([2.0])
    assert one["median"] == one["q1"] == one["q3"] == 2.0
    assert metrics.spread([])["median"] is None and metrics.spread([])["n"] == 0


def test_speedup_uses_throughput():
    ar = {"new_tokens": 100, "wall_s": 10.0}
    assert metrics.speedup({"new_tokens": 100, "wall_s": 5.0}, ar) == pytest.approx(2.0)
    assert metrics.speedup({"new_tokens": 50, "wall_s": 5.0}, ar) == pytest.approx(1.0)
    assert metrics.speedup(ar, {"new_tokens": 0, "wall_s": 0.0}) is None
    prompts = [
        {"results": {"ar": ar, "x": {"new_tokens": 100, "wall_s": w}}} for w in (5.0, 4.0, 2.5)
    ]
    s = metrics.spread(metrics.paired_ratios(prompts, "x", "ar"))
    assert s["median"] == pytest.approx(2.5) and s["mean"] == pytest.approx(2.8333, abs=1e-4)
    assert (s["min"], s["max"]) == (pytest.approx(2.0), pytest.approx(4.0))


def test_swi_with_known_costs():
    costs = {"t": 10.0, "d": 1.0, "max-gram": 0.0}
    assert metrics.swi(100, {"t": 100}, costs, "t") == pytest.approx(1.0)
    # 100 tokens for 40 target and 120 drafter forwards: 1000 / (400 + 120)
    assert metrics.swi(100, {"t": 40, "d": 120}, costs, "t") == pytest.approx(1000 / 520)
    assert metrics.swi(100, {"t": 40, "max-gram": 99}, costs, "t") == pytest.approx(2.5)
    assert metrics.swi(100, {"t": 40, "other": 3}, costs, "t") is None
    assert metrics.swi(100, {"t": 40}, {}, "t") is None
    measured = metrics.measured_costs(
        [
            {"forwards": {"t": 2, "d": 4}, "forward_s": {"t": 0.5, "d": 0.2}},
            {"forwards": {"t": 3}, "forward_s": {"t": 1.0}},
            {"forwards": {"t": 9}},  # hf methods time no forwards
        ]
    )
    assert measured == {"t": pytest.approx(0.3), "d": pytest.approx(0.05)}


def _trace(reviews: list[tuple[int, list[int], int]]) -> Stats:
    """Stats of a synthetic trace: (reviewer, proposed, accepted) per review."""
    events: list = [Start(["t", "d", "max-gram"], 5)]
    for reviewer, proposed, accepted in reviews:
        events.append(Review(reviewer, proposed, [1] * len(proposed), accepted, 0, 0.01, 0.0))
    events += [Commit([1, 2, 3], [0, 1, 1], t=1.0), Finish("length", t=1.0)]
    return Stats.of(events)


def test_acceptance_by_position_from_traces():
    a = _trace([(0, [1, 2, 3, 4], 2), (1, [5, 6], 1), (0, [1, 2], 2)])
    b = _trace([(0, [7, 8, 9], 0)])
    # a: review 1 reaches positions 1-3 (accepts 1, 2), review 2 reaches 1-2 (accepts both)
    assert a.by_position == [[2, 2], [2, 2], [1, 0]]
    assert b.by_position == [[1, 0]]
    merged = metrics.merge_positions([a.by_position, b.by_position])
    assert merged == [[3, 2], [2, 2], [1, 0]]
    assert metrics.position_rates(merged) == pytest.approx([2 / 3, 1.0, 0.0])
    rungs = metrics.acceptance_by_rung([{"t": [6, 4], "d": [2, 1]}, {"t": [3, 0]}, {"d": [0, 0]}])
    assert rungs == {"t": pytest.approx(4 / 9), "d": pytest.approx(0.5)}


def test_speed_bar():
    summary = {
        "ar": {"tokens_per_s": 4.0, "mismatches": 0, "speedup": {"median": 1.0}},
        "csd": {"tokens_per_s": 8.0, "mismatches": 0, "speedup": {"median": 2.0}},
        "hf-generate": {"tokens_per_s": 4.1, "mismatches": 0, "speedup": {"median": 1.02}},
        "hf-assisted": {"tokens_per_s": 5.0, "mismatches": 1, "speedup": {"median": 1.25}},
    }
    prompts = [
        {
            "results": {
                "csd": {"new_tokens": 8, "wall_s": 1.0},
                "hf-assisted": {"new_tokens": 5, "wall_s": 1.0},
            }
        }
    ]
    bar = metrics.speed_bar(summary, prompts)
    assert [c["pass"] for c in bar] == [True, True, True, False]
    assert bar[1]["value"] == pytest.approx(1.6) and bar[2]["value"] == pytest.approx(4 / 4.1)
    assert [c["pass"] for c in metrics.speed_bar({}, [])] == [None, None, None, True]
    assert metrics.speed_bar(summary, prompts, greedy=False)[3]["pass"] is None


def test_tree_crossover_from_decoding_passes():
    """csd: 11 passes (10 after the prompt) of 0.1 s target, 0.1 s drafter each, 4 tokens a
    pass; the tree: 8 passes (7 decoding) of 0.15 s target, 0.15 s drafter, 5.5 tokens a pass.
    Gain 5.5 / 4 = 1.375, cost ratio 1.5, break-even (1.375 (0.1 + 0.1) - 0.15) / 0.1 = 1.25."""

    def rec(passes: int, tokens: int, target_s: float, drafter_s: float, nodes: int) -> dict:
        return {
            "new_tokens": tokens,
            "wall_s": 1.0,
            "target_forwards": passes,
            "forwards": {"t": passes, "d": 3 * passes},
            "forward_s": {"t": 0.5 + (passes - 1) * target_s, "d": 0.2 + (passes - 1) * drafter_s},
            "prompt_pass_s": {"t": 0.5, "d": 0.2},
            "reviews": {"t": [nodes * passes, tokens]},
        }

    results = {
        "ladder": {"rungs": ["t", "d", "max-gram"]},
        "methods": ["ar", "csd", "csd-tree", "sd"],
        "method_configs": {"csd-tree": {"tree": [{"budget": 12, "extend": 3}]}},
        "costs": {},
        "prompts": [
            {
                "results": {
                    "ar": {"new_tokens": 44, "wall_s": 4.0, "forwards": {"t": 44}},
                    "csd": rec(11, 44, 0.1, 0.1, 4),
                    "csd-tree": rec(8, 44, 0.15, 0.15, 9),
                    "sd": rec(11, 44, 0.1, 0.1, 4),
                }
            },
        ],
    }
    (row,) = metrics.tree_crossover(results)  # sd has no tree: not a row
    assert row["method"] == "csd-tree" and row["nodes"] == pytest.approx(9)
    assert row["gain"] == pytest.approx(5.5 / 4)
    assert row["cost"] == pytest.approx(1.5)
    assert row["break_even"] == pytest.approx((5.5 / 4 * 0.2 - 0.15) / 0.1)  # 1.25: loses
    assert metrics.tree_crossover({**results, "methods": ["ar", "csd-tree"]}) == []
