"""The lean forward pass (``csdraft.models.lean``) computes transformers' forward bit for bit:
over runs of passes with rejections, token trees and kept paths, for float32 and int8 drafters
and the batch-invariant int8 target, in Llama and Qwen2; models it cannot replay are left to
transformers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from engine_helpers import build_model
from hypothesis import given, settings
from hypothesis import strategies as st

from csdraft.engine import Draft
from csdraft.models import TransformersScorer
from csdraft.models.attention import use_gqa_attention
from csdraft.models.int8 import quantize_int8
from csdraft.models.invariant import RowInt8Linear, make_batch_invariant
from csdraft.models.lean import LeanDecoder

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 96


def model_of(kind: str, arch: str = "qwen2", seed: int = 0) -> torch.nn.Module:
    """A tiny model as csdraft loads one: ``float`` (a float32 drafter), ``int8`` (an int8
    drafter, fused projections) or ``target`` (the batch-invariant int8 target)."""
    extra = {"attention_bias": True, "mlp_bias": True} if arch == "llama" else {}
    model = build_model(
        arch,
        VOCAB,
        hidden=64,
        layers=2,
        seed=seed,
        init_range=0.05,
        num_attention_heads=4,
        num_key_value_heads=2,
        **extra,
    )
    if kind == "target":
        return make_batch_invariant(quantize_int8(model, layer=RowInt8Linear))
    if kind == "int8":
        model = quantize_int8(model)
    return use_gqa_attention(model).eval()


def run(scorer: TransformersScorer, seq: np.ndarray, cuts: list[int]) -> list[torch.Tensor]:
    """Logits over passes feeding seq up to each cut (a cut below the last: a rejection), then a
    token tree after the last cut, one path of it kept, and one more token."""
    out = []
    for i, cut in enumerate(cuts):
        out.append(scorer.score(seq[:cut], max(1, min(cuts[i - 1] if i else 1, cut))))
    context = seq[: cuts[-1]]
    tree = Draft(tokens=[3, 4, 5, 6, 7], parents=[-1, -1, 0, 1, 2])
    out.append(scorer.score_tree(context, tree))
    scorer.keep_path([0, 2, 4])
    grown = np.concatenate([context, [3, 5, 7, 9]])
    out.append(scorer.score(grown, len(grown)))
    return out


@settings(max_examples=12, deadline=None)
@given(
    cuts=st.lists(st.integers(2, 50), min_size=1, max_size=6),
    kind=st.sampled_from(["float", "int8", "target"]),
    arch=st.sampled_from(["qwen2", "llama"]),
    seed=st.integers(0, 2),
)
def test_lean_passes_equal_transformers_bit_for_bit(cuts, kind, arch, seed):
    model = model_of(kind, arch, seed)
    seq = np.random.default_rng(seed).integers(0, VOCAB, 51).astype(np.int64)
    lean = TransformersScorer(model, "lean")
    assert lean.lean is not None
    plain = TransformersScorer(model, "plain")
    plain.lean = None
    for a, b in zip(run(lean, seq, cuts), run(plain, seq, cuts), strict=True):
        assert torch.equal(a, b)
    for x, y in zip(lean.cache.layers, plain.cache.layers, strict=True):
        assert torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)


def test_a_lean_pass_skips_the_framework():
    """What makes it cheaper: no transformers module's forward runs, only the layers' math."""
    model = model_of("int8")
    calls: list[str] = []
    hook = model.model.register_forward_pre_hook(lambda *_: calls.append("model"))
    lean = LeanDecoder(model)  # built directly: ``of`` refuses models with hooks
    assert TransformersScorer(model, "x").lean is None  # so the scorer takes transformers' path
    from csdraft.models.kv_cache import growing_cache

    lean(torch.tensor([[1, 2, 3]]), growing_cache(model.config), 1)
    assert calls == []
    hook.remove()
    assert TransformersScorer(model, "x").lean is not None


@pytest.mark.parametrize(
    "change",
    ["sdpa", "eager", "gpt2", "sliding", "training"],
)
def test_models_it_cannot_replay_take_transformers_path(change):
    if change == "gpt2":
        model = build_model("gpt2", VOCAB, hidden=32)
    else:
        model = model_of("float")
        if change in ("sdpa", "eager"):
            model.set_attn_implementation(change)
        elif change == "sliding":
            model = copy.deepcopy(model)
            model.config.layer_types = ["sliding_attention", "full_attention"]
        else:
            model.train()
    assert LeanDecoder.of(model) is None
    assert TransformersScorer(model, "x").lean is None
