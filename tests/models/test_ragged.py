"""The ragged pass (``LeanDecoder.many``, run by ``pooled``): several sequences' new rows in one
forward pass, each with its own cache length, positions and rejected tail. Over the int8
batch-invariant target each sequence's logits are bit for bit its pass alone's; the control:
fbgemm's dynamic int8 (a drafter's) is not, which is why ``pooled.shares_passes`` keeps a sampled
request's drafter passes to itself."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_invariant import int8_target, tokens

from csdraft.models import TransformersScorer
from csdraft.models.attention import use_gqa_attention
from csdraft.models.lean import LeanDecoder
from csdraft.models.pooled import _ragged

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {arch: int8_target(arch) for arch in ("llama", "qwen2")}


def passes(model, plans: list[list[tuple[int, int]]]) -> tuple[list, list]:
    """Each sequence's logits over its plan of (length, start) passes, alone and in ragged
    passes shared with the others (round r of every plan in one pass)."""
    seqs = [tokens(max(n for n, _ in plan) + 1, seed=i) for i, plan in enumerate(plans)]
    alone = [TransformersScorer(model, "alone") for _ in plans]
    pooled = [TransformersScorer(model, "pooled") for _ in plans]
    solo, shared = [[] for _ in plans], [[] for _ in plans]
    for r in range(max(len(p) for p in plans)):
        jobs = []
        for i, plan in enumerate(plans):
            if r < len(plan):
                n, start = plan[r]
                solo[i].append(alone[i].score(seqs[i][:n], start))
                ids, keep = pooled[i].feed(seqs[i][:n], start)
                jobs.append((i, n, (pooled[i], ids, keep)))
        for (i, n, _), logits in zip(jobs, _ragged([j for _, _, j in jobs]), strict=True):
            pooled[i].tokens = seqs[i][:n]
            shared[i].append(logits)
    return solo, shared


def plan(lengths: list[int]) -> list[tuple[int, int]]:
    """Passes feeding a sequence up to each length: the first its prompt, then blocks (a length
    below the one before drops a rejected tail)."""
    out, seen = [], 0
    for n in lengths:
        start = max(1, min(seen, n))
        out.append((n, start))
        seen = n
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_ragged_logits_equal_each_sequence_alone_bit_for_bit(arch):
    model = MODELS[arch]
    plans = [plan([30, 34, 33, 38]), plan([5, 6, 11, 9, 10]), plan([61, 62]), plan([12, 16, 20])]
    solo, shared = passes(model, plans)
    for a, b in zip(solo, shared, strict=True):
        assert len(a) == len(b)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@settings(max_examples=12, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(1, 6), min_size=1, max_size=4),
        min_size=2,
        max_size=4,
    ),
    st.lists(st.integers(1, 40), min_size=4, max_size=4),
    st.sampled_from(["llama", "qwen2"]),
)
def test_ragged_equals_alone_for_any_mix_of_lengths(blocks, prompts, arch):
    plans = []
    for steps, prompt in zip(blocks, prompts, strict=False):
        lengths, n = [prompt], prompt
        for s in steps:
            n = max(1, n - s // 3) + s  # a rejected tail, then a block
            lengths.append(n)
        plans.append(plan(lengths))
    solo, shared = passes(MODELS[arch], plans)
    for a, b in zip(solo, shared, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_fbgemm_int8_rows_depend_on_their_batch():
    """The control: a drafter's dynamic int8 takes one activation scale per pass."""
    drafter = use_gqa_attention(int8_target(invariant=False))  # as csdraft loads a drafter
    assert LeanDecoder.of(drafter) is not None
    solo, shared = passes(drafter, [plan([30, 34]), plan([8, 12])])
    pairs = zip(sum(solo, []), sum(shared, []), strict=True)
    assert not all(torch.equal(x, y) for x, y in pairs)
