"""Scoring a token tree in one forward pass (``TransformersScorer.score_tree``) and keeping one
path of it in the KV cache (``keep_path``): each node's logits must equal those of feeding its
root-to-node path alone, and the cache after keeping a path must equal the cache of feeding that
path alone, for every architecture and both the eager and the sdpa attention."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from engine_helpers import ARCHS, build_model

from csdraft.engine import Draft
from csdraft.models import TransformersScorer

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 40
CONTEXT = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int64)
# A tree of 7 nodes: two children of the root, one of them with two children, a chain below.
TREE = Draft(
    tokens=[7, 8, 11, 12, 13, 14, 15],
    origins=[1] * 7,
    q=[None] * 7,
    parents=[-1, -1, 0, 0, 2, 1, 4],
)


def path_to(draft: Draft, node: int) -> list[int]:
    """The nodes from the root's child down to ``node``."""
    path = []
    while node >= 0:
        path.append(node)
        node = draft.parents[node]
    return path[::-1]


def model_of(arch: str, attn: str) -> torch.nn.Module:
    model = copy.deepcopy(build_model(arch, VOCAB, hidden=16, layers=2, seed=3))
    model.set_attn_implementation(attn)
    assert model.config._attn_implementation == attn
    return model


@torch.inference_mode()
def plain_logits(model: torch.nn.Module, seq: np.ndarray) -> torch.Tensor:
    return model(torch.from_numpy(seq)[None]).logits[0, -1].float()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "cached"])
def test_tree_logits_equal_each_path_alone(arch, attn, warm):
    model = model_of(arch, attn)
    scorer = TransformersScorer(model, "t")
    if warm:  # a cache holding part of the context and a stale tail
        scorer.score(np.concatenate([CONTEXT[:5], [0, 0]]), 5)
    logits = scorer.score_tree(CONTEXT, TREE)
    assert logits.shape == (1 + len(TREE), VOCAB)
    torch.testing.assert_close(logits[0], plain_logits(model, CONTEXT), atol=1e-5, rtol=1e-5)
    tokens = np.asarray(TREE.tokens)
    for node in range(len(TREE)):
        seq = np.concatenate([CONTEXT, tokens[path_to(TREE, node)]])
        torch.testing.assert_close(logits[node + 1], plain_logits(model, seq), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_keep_path_leaves_the_cache_of_that_path(arch, attn):
    model = model_of(arch, attn)
    tokens = np.asarray(TREE.tokens)
    for leaf in (3, 6):
        path = path_to(TREE, leaf)
        scorer = TransformersScorer(model, "t")
        scorer.score_tree(CONTEXT, TREE)
        scorer.keep_path(path)
        seq = np.concatenate([CONTEXT, tokens[path]])
        np.testing.assert_array_equal(scorer.tokens, seq)
        alone = TransformersScorer(model, "a")
        alone.score(seq, len(seq) - 1)
        assert scorer.cache.get_seq_length() == len(seq)
        for mine, ref in zip(scorer.cache.layers, alone.cache.layers, strict=True):
            torch.testing.assert_close(mine.keys, ref.keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mine.values, ref.values, atol=1e-5, rtol=1e-5)
        # A later score continues from the kept path (the bonus token, then a block).
        more = np.concatenate([seq, [21, 22, 23]])
        got = scorer.score(more, len(seq) + 1)
        fresh = TransformersScorer(model, "f").score(more, len(seq) + 1)
        torch.testing.assert_close(got, fresh, atol=1e-5, rtol=1e-5)
        # And a second tree after it.
        ctx = more[:-1]
        got = scorer.score_tree(ctx, TREE)
        fresh = TransformersScorer(model, "f").score_tree(ctx, TREE)
        torch.testing.assert_close(got, fresh, atol=1e-5, rtol=1e-5)


def test_score_after_an_unkept_tree_drops_the_tree():
    model = model_of("llama", "sdpa")
    scorer = TransformersScorer(model, "t")
    scorer.score_tree(CONTEXT, TREE)
    seq = np.concatenate([CONTEXT, [7, 8, 9]])
    got = scorer.score(seq, len(CONTEXT))
    fresh = TransformersScorer(model, "f").score(seq, len(CONTEXT))
    torch.testing.assert_close(got, fresh, atol=1e-5, rtol=1e-5)
    assert scorer.cache.get_seq_length() == len(seq)


def test_chain_draft_scores_like_score():
    model = model_of("qwen2", "sdpa")
    chain = Draft([7, 8, 9], [1, 1, 1], [None] * 3)
    got = TransformersScorer(model, "t").score_tree(CONTEXT, chain)
    seq = np.concatenate([CONTEXT, chain.tokens])
    want = TransformersScorer(model, "t").score(seq, len(CONTEXT))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
