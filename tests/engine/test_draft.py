"""Drafts: chains and trees of proposed tokens, and how reviews treat them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csdraft.engine import Draft
from csdraft.engine.review import GreedyReview, Sampling, SamplingReview

#      root
#     /    \
#    0(a)   3(d)
#   /   \
#  1(b)  2(c)
#  |
#  4(e)
TREE = Draft([10, 11, 12, 13, 14], [1, 1, 2, 2, 1], [None] * 5, parents=[-1, 0, 0, -1, 1])


def test_a_draft_without_parents_is_a_chain():
    chain = Draft([5, 6, 7], [1, 1, 2], [None, None, None])
    assert chain.is_chain and chain.parents is None
    assert len(chain) == 3
    assert chain.depth() == [1, 2, 3]
    assert Draft().is_chain and len(Draft()) == 0 and Draft().depth() == []


def test_parents_in_chain_form_are_a_chain():
    chain = Draft([5, 6, 7], [1, 1, 1], [None] * 3, parents=[-1, 0, 1])
    assert chain.is_chain
    assert chain.depth() == [1, 2, 3]


def test_a_tree():
    assert not TREE.is_chain
    assert TREE.depth() == [1, 2, 2, 1, 3]
    assert len(TREE) == 5
    # Two children of the root are a tree too, however short.
    assert not Draft([1, 2], [1, 1], [None, None], parents=[-1, -1]).is_chain


def test_deterministic():
    draft = Draft.deterministic([3, 4, 5], origin=2)
    assert draft.tokens == [3, 4, 5]
    assert draft.origins == [2, 2, 2]
    assert draft.q == [None, None, None]
    assert draft.is_chain
    from_numpy = Draft.deterministic(np.array([7, 8]), origin=1)
    assert from_numpy.tokens == [7, 8] and all(type(t) is int for t in from_numpy.tokens)
    assert len(Draft.deterministic([], origin=3)) == 0


def test_extend_appends_chains():
    q = torch.full((4,), 0.25)
    draft = Draft([1], [2], [q])
    draft.extend(Draft.deterministic([5, 6], origin=3))
    draft.extend(Draft())
    assert draft.tokens == [1, 5, 6]
    assert draft.origins == [2, 3, 3]
    assert draft.q[0] is q and draft.q[1:] == [None, None]
    assert draft.is_chain
    chain_form = Draft([9], [1], [None], parents=[-1])
    chain_form.extend(Draft([8], [1], [None], parents=[-1]))
    assert chain_form.tokens == [9, 8]


def test_extend_appends_a_tree_below_a_chain():
    chain = Draft.deterministic([1, 2], 2)
    chain.extend(TREE)
    assert chain.tokens == [1, 2, *TREE.tokens]
    assert chain.parents == [-1, 0, *(p + 2 if p >= 0 else 1 for p in TREE.parents)]
    assert chain.depth() == [1, 2, *(d + 2 for d in TREE.depth())]


def test_extend_refuses_to_extend_trees():
    tree = Draft(list(TREE.tokens), list(TREE.origins), list(TREE.q), list(TREE.parents))
    with pytest.raises(ValueError, match="chains"):
        tree.extend(Draft.deterministic([1], 1))
    assert tree.tokens == TREE.tokens  # unchanged


def test_path_is_a_chain_of_the_chosen_nodes():
    q = [torch.full((3,), i / 10) for i in range(5)]
    tree = Draft(list(TREE.tokens), list(TREE.origins), q, list(TREE.parents))
    path = tree.path([0, 1, 4])
    assert path.tokens == [10, 11, 14]
    assert path.origins == [1, 1, 1]
    assert path.q == [q[0], q[1], q[4]]
    assert path.parents is None and path.is_chain
    assert tree.path([]).tokens == []
    chain = Draft.deterministic([4, 5, 6], 1)
    assert chain.path(range(2)).tokens == [4, 5]


def test_reviews_of_chains_given_with_parents_match_plain_chains():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, generator=gen)
    tokens = [int(t) for t in logits.argmax(-1)[:3]]
    tokens[2] = (tokens[2] + 1) % 9  # the third proposal is refused
    plain = Draft.deterministic(tokens, 1)
    with_parents = Draft(tokens, [1] * 3, [None] * 3, parents=[-1, 0, 1])
    review = GreedyReview(hand_on_probs=False)
    a, b = review(logits, plain, 1.0), review(logits, with_parents, 1.0)
    assert a.accepted == b.accepted == 2 and a.token == b.token == int(logits[2].argmax())
    assert a.kept() == b.kept() == [0, 1]


@pytest.mark.parametrize(
    "review", [GreedyReview(True), SamplingReview(Sampling(1.0), torch.Generator())]
)
def test_reviews_of_trees_are_refused(review):
    logits = torch.zeros(len(TREE) + 1, 20)
    with pytest.raises(ValueError, match="chain rule reviews chains only"):
        review(logits, TREE, 1.0)
