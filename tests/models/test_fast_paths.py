"""The per-pass savings of the transformers backend, each computing what it replaces bit for
bit: the KV cache that grows in place (``kv_cache``), grouped-query attention without copies
(``attention``), and int8 projections fused per input (``int8.SharedInput``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from engine_helpers import build_model
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

import csdraft.models.kv_cache as kv_cache
from csdraft.engine import Draft
from csdraft.models import TransformersScorer
from csdraft.models.attention import GQA_ATTENTION, use_gqa_attention
from csdraft.models.int8 import Int8Layer, Int8Linear, SharedInput, quantize_int8
from csdraft.models.invariant import RowInt8Linear, make_batch_invariant

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64


def gqa_model(seed: int = 0) -> torch.nn.Module:
    return build_model(
        "qwen2",
        VOCAB,
        hidden=64,
        layers=2,
        seed=seed,
        num_attention_heads=4,
        num_key_value_heads=2,
    )


def passes(model: torch.nn.Module, seq: np.ndarray, cuts: list[int]) -> list[torch.Tensor]:
    """The scorer's logits over a run of passes: feeding seq up to each cut in turn, where a
    cut below the last one drops the tokens after it from the cache (a rejected draft)."""
    scorer = TransformersScorer(model, "passes")
    out = []
    for i, cut in enumerate(cuts):
        start = max(1, min(cuts[i - 1] if i else 1, cut))
        out.append(scorer.score(seq[:cut], start))
    return out


cuts_strategy = st.lists(st.integers(2, 60), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None)
@given(cuts=cuts_strategy, seed=st.integers(0, 3))
def test_growing_cache_computes_what_dynamic_cache_computes(cuts, seed):
    model = gqa_model(seed)
    seq = np.random.default_rng(seed).integers(0, VOCAB, 61).astype(np.int64)
    grown = passes(model, seq, cuts)
    saved = kv_cache.growing_cache
    kv_cache.growing_cache = lambda config: DynamicCache(config=config)
    try:
        plain = passes(model, seq, cuts)
    finally:
        kv_cache.growing_cache = saved
    assert all(torch.equal(a, b) for a, b in zip(grown, plain, strict=True))


def test_growing_cache_appends_in_place():
    """What makes it cheap: a pass writes into the same buffer (no copy of the context)."""
    model = gqa_model()
    scorer = TransformersScorer(model, "grow")
    seq = np.arange(40) % VOCAB
    scorer.score(seq[:20], 1)
    buffer = scorer.cache.layers[0].keys.data_ptr()
    for n in range(21, 40):
        scorer.score(seq[:n], n - 1)
    assert scorer.cache.layers[0].keys.data_ptr() == buffer
    assert scorer.cache.layers[0].keys.shape[-2] == 39
    scorer.score(np.concatenate([seq[:30], seq[:5]]), 30)  # a rejection: crop, then append
    assert scorer.cache.layers[0].keys.data_ptr() == buffer
    assert scorer.cache.get_seq_length() == 35


def test_growing_cache_copies_keys_replaced_from_outside():
    """Keys replaced by other tensors (not views of its buffer) are taken over, not lost."""
    model = gqa_model()
    scorer = TransformersScorer(model, "outside")
    seq = np.arange(30) % VOCAB
    scorer.score(seq[:20], 1)
    for layer in scorer.cache.layers:
        layer.keys, layer.values = layer.keys.clone(), layer.values.clone()
    after = scorer.score(seq, 20)
    untouched = TransformersScorer(model, "untouched")  # the same two passes, keys left alone
    untouched.score(seq[:20], 1)
    assert torch.equal(after, untouched.score(seq, 20))


def logits_by(model: torch.nn.Module, seq: np.ndarray) -> list[torch.Tensor]:
    """A prompt pass, a block after it, one token, and a token tree."""
    scorer = TransformersScorer(model, "paths")
    out = [scorer.score(seq[:20], 1), scorer.score(seq[:27], 20), scorer.score(seq[:28], 27)]
    tree = Draft(tokens=[3, 4, 5, 6], parents=[-1, -1, 0, 1])
    out.append(scorer.score_tree(seq[:28], tree))
    return out


def test_gqa_attention_equals_sdpa_bit_for_bit():
    model = gqa_model()
    seq = np.random.default_rng(5).integers(0, VOCAB, 40).astype(np.int64)
    sdpa = logits_by(model, seq)
    use_gqa_attention(model)
    assert model.config._attn_implementation == GQA_ATTENTION
    assert all(torch.equal(a, b) for a, b in zip(logits_by(model, seq), sdpa, strict=True))


def test_gqa_attention_leaves_other_models_alone():
    full = build_model("qwen2", VOCAB, hidden=64, num_attention_heads=4, num_key_value_heads=4)
    assert use_gqa_attention(full).config._attn_implementation == "sdpa"
    eager = gqa_model()
    eager.set_attn_implementation("eager")
    assert use_gqa_attention(eager).config._attn_implementation == "eager"


@pytest.mark.parametrize("layer", [Int8Linear, RowInt8Linear])
def test_fused_projections_compute_what_separate_ones_do(layer, monkeypatch):
    import csdraft.models.int8 as int8

    model = gqa_model()
    fused = quantize_int8(copy.deepcopy(model), layer=layer)
    monkeypatch.setattr(int8, "_fused_groups", lambda model, linears: [])
    separate = quantize_int8(copy.deepcopy(model), layer=layer)
    if layer is RowInt8Linear:
        fused, separate = make_batch_invariant(fused), make_batch_invariant(separate)
    groups = [m for m in fused.modules() if isinstance(m, SharedInput)]
    assert len(groups) == 4  # q/k/v and gate/up in each of 2 layers
    assert sum(isinstance(m, Int8Layer) for m in fused.modules()) == 2 * 4 + 1  # + lm_head
    assert sum(isinstance(m, Int8Layer) for m in separate.modules()) == 2 * 7 + 1
    seq = np.random.default_rng(7).integers(0, VOCAB, 40).astype(np.int64)
    pairs = zip(logits_by(fused, seq), logits_by(separate, seq), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_fused_projections_read_a_cache_written_unfused(tmp_path, monkeypatch):
    """The int8 cache keeps one entry per projection, whichever way it was written."""
    import csdraft.models.int8 as int8

    model = gqa_model()
    cache = tmp_path / "int8.safetensors"
    with monkeypatch.context() as m:
        m.setattr(int8, "_fused_groups", lambda model, linears: [])
        quantize_int8(copy.deepcopy(model), cache)
    written = cache.stat().st_mtime_ns
    fused = quantize_int8(copy.deepcopy(model), cache)
    assert cache.stat().st_mtime_ns == written  # read, not recomputed
    fresh = quantize_int8(copy.deepcopy(model))
    seq = np.arange(30) % VOCAB
    assert torch.equal(
        TransformersScorer(fused, "a").score(seq, 1), TransformersScorer(fresh, "b").score(seq, 1)
    )
