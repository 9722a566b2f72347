"""The shared run-and-check layer: outcome records, the rotated interleaved runner, spreads."""

from __future__ import annotations

import pytest

from csdraft.runs import Outcome, interleaved, relative_spread, rotated
from csdraft.trace import Commit, Finish, Review, Start


def test_rotated_order():
    names = ["ar", "sd", "csd"]
    assert [rotated(names, i) for i in range(4)] == [
        ["ar", "sd", "csd"],
        ["sd", "csd", "ar"],
        ["csd", "ar", "sd"],
        ["ar", "sd", "csd"],
    ]


def test_interleaved_runs_every_method_in_rotation():
    calls: list[tuple[str, tuple[int, ...]]] = []

    def runner(name):
        def run(ids, n):
            calls.append((name, tuple(ids)))
            return Outcome(list(ids)[:n], 1.0, 1, {name: 1})

        return run

    seen = list(interleaved([[1], [2]], {"a": runner("a"), "b": runner("b")}, 5))
    assert calls == [("a", (1,)), ("b", (1,)), ("b", (2,)), ("a", (2,))]
    assert [i for i, _ in seen] == [0, 1]
    assert list(seen[1][1]) == ["a", "b"]  # outcomes come back in the runners' order


def test_outcome_from_events():
    events = [
        Start(["t", "d", "max-gram"], 3, kinds=["target", "model", "statistical"]),
        Review(1, [5, 6], [2, 2], 1, 7, 0.01, 0.1),
        Review(0, [5, 7], [2, 1], 2, 8, 0.05, 0.2),
        Commit([5, 7, 8], [2, 1, 0], t=0.2),
        Finish("length", t=0.2),
    ]
    o = Outcome.of(events, 0.5)
    assert o.ids == [5, 7, 8] and o.target_forwards == 1
    assert o.forwards == {"t": 1, "d": 1}
    assert o.reviews == {"t": [2, 2], "d": [2, 1]}
    assert o.record()["new_tokens"] == 3 and o.tokens_per_s == pytest.approx(6.0)


def test_relative_spread():
    assert relative_spread([1.0]) is None
    assert relative_spread([1.0, 1.1, 0.9]) == pytest.approx(0.2)
