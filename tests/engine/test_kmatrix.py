"""Tests for csdraft.engine.kmatrix's helpers that tune, bench and inspect share: the blocks a
reviewer checks, the rungs a k-matrix uses, its canonical form and sub-ladder, its family."""

from __future__ import annotations

from csdraft.engine import kmatrix


def test_segments_follow_cumulative_counts():
    k = [[4, 2], [0, 6]]
    assert kmatrix.segments(k, 0, 100) == [(1, 4), (2, 2)]
    assert kmatrix.segments(k, 0, 5) == [(1, 4), (2, 1)]
    assert kmatrix.segments(k, 1, 3) == [(2, 3)]
    assert kmatrix.segments(k, 2, 9) == []  # Max-Gram has no row
    assert kmatrix.block_length(k, 0) == 6 and kmatrix.block_length(k, 2) == 0


def test_canonical_sub_ladder_and_families():
    assert kmatrix.canonical([[0, 5], [0, 3]]) == ((0, 5), (0, 0))  # drafter 1 never runs
    assert kmatrix.canonical([[0, 0], [0, 3]]) is None  # that is plain ar
    # one neural drafter (rung 1) and Max-Gram (rung 2)
    assert kmatrix.sub_ladder([[4, 0], [0, 0]]) == ([1], [[4]])
    assert kmatrix.sub_ladder([[0, 5], [0, 0]]) == ([2], [[5]])
    assert kmatrix.sub_ladder([[4, 2], [0, 6]]) == ([1, 2], [[4, 2], [0, 6]])
    k3 = [[3, 0, 2], [0, 0, 4], [0, 0, 5]]  # drafter 2 unused
    assert kmatrix.sub_ladder(k3) == ([1, 3], [[3, 2], [0, 4]])
    assert kmatrix.sub_ladder([]) == ([], [])  # plain ar
    assert kmatrix.used_rungs(k3) == {1, 3}
    assert kmatrix.family([[4, 0], [0, 6]]) == "vertical"
    assert kmatrix.family([[4, 2], [0, 0]]) == "horizontal"
    assert kmatrix.family([[4, 2], [0, 6]]) == "combined"
    assert kmatrix.family([[4, 0], [0, 0]]) == "single"
    assert kmatrix.is_vertical([[4, 0], [0, 6]]) and not kmatrix.is_vertical([[4, 2], [0, 6]])
    assert kmatrix.is_horizontal([[4, 2], [0, 0]]) and not kmatrix.is_horizontal([[4, 0], [0, 6]])
    assert kmatrix.text([[4, 2], [0, 6]]) == "4,2;0,6" and kmatrix.text([]) == "-"
