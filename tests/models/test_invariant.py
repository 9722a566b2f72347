"""Batch-invariant int8 targets (``csdraft.models.invariant``): a block pass gives, row for row,
bit-identical logits to one-token passes (prompt, block, token tree, a context past the
attention kernel's 512-key split), so a cascade over an int8 target outputs exactly what that
target outputs alone. The controls: fbgemm's per-pass int8 kernel, and attention over the whole
block, are not."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from engine_helpers import build_model, cascade_of, ids_of, perturb
from model_fixtures import own_home, tiny_dir_fixture  # noqa: F401 - fixtures

from csdraft.engine import Draft, MaxGram
from csdraft.engine.tree import TreeSettings
from csdraft.errors import UsageError
from csdraft.models import TransformersScorer
from csdraft.models.attention import GQA_ATTENTION
from csdraft.models.cpu import has_flag
from csdraft.models.int8 import Int8Linear, int8_weights, quantize_int8
from csdraft.models.invariant import ATTENTION, RowInt8Linear, make_batch_invariant

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 256


def float_model(arch: str = "qwen2", seed: int = 0) -> torch.nn.Module:
    """Widths that are multiples of 32 (as real models'): head size 32, MLP 256."""
    return build_model(
        arch,
        VOCAB,
        hidden=128,
        layers=2,
        seed=seed,
        init_range=0.05,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )


def int8_target(arch: str = "qwen2", invariant: bool = True) -> torch.nn.Module:
    model = copy.deepcopy(float_model(arch))
    if not invariant:
        return quantize_int8(model)
    return make_batch_invariant(quantize_int8(model, layer=RowInt8Linear))


def one_token_logits(model: torch.nn.Module, seq: np.ndarray, start: int) -> torch.Tensor:
    """Rows after seq[:start], ..., after seq: a pass over seq[:start], then one token each."""
    scorer = TransformersScorer(model, "steps")
    rows = [scorer.score(seq[:start], start)]
    rows += [scorer.score(seq[: t + 1], t + 1) for t in range(start, len(seq))]
    return torch.cat(rows)


def block_logits(model: torch.nn.Module, seq: np.ndarray, start: int) -> torch.Tensor:
    """The same rows from a pass over seq[:start] and one block pass over the rest."""
    scorer = TransformersScorer(model, "block")
    first = scorer.score(seq[:start], start)
    return torch.cat([first, scorer.score(seq, start + 1)])


def tokens(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.int64)


VNNI = has_flag("avx512_vnni")
"""Whether fbgemm multiplies int8 with VNNI here (int32 products: nothing saturates)."""


def test_row_int8_linear_rows_do_not_depend_on_their_block():
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 64, generator=gen), torch.randn(96, generator=gen)
    layer = RowInt8Linear(*int8_weights(weight), bias)
    block = torch.randn(1, 9, 64, generator=gen)
    block[0, 0] *= 200  # an attention sink: coarsens nobody else
    out = layer(block)
    for i in range(block.shape[1]):
        assert torch.equal(out[0, i], layer(block[:, i : i + 1])[0, 0])
    exact = block[0, 1:] @ weight.T + bias
    error, scale = (out[0, 1:] - exact).abs(), exact.abs().max()
    assert error.median() < 0.01 * scale  # outputs 10% too large give 2.1%
    if VNNI:  # elsewhere fbgemm's int16 pair sums saturate on some outputs of these uniformly
        # spread weights (see invariant.ROW_PEAK): 5% of them here, on an AVX2 CPU
        assert error.max() < 0.05 * scale


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("length", [40, 600], ids=["short", "past-512-keys"])
def test_block_logits_equal_one_token_logits_bit_for_bit(arch, length):
    model = int8_target(arch)
    seq = tokens(length + 9, seed=length)
    start = length
    assert torch.equal(block_logits(model, seq, start), one_token_logits(model, seq, start))
    # the prompt pass too: one pass over all of it equals one token at a time
    prompt = TransformersScorer(model, "prompt").score(seq[:12], 1)
    assert torch.equal(prompt, one_token_logits(model, seq[:12], 1))


def test_fbgemm_int8_is_not_batch_invariant():
    """The control: one activation scale per pass makes a block compute something else."""
    model = int8_target(invariant=False)
    seq = tokens(49, seed=1)
    assert not torch.equal(block_logits(model, seq, 40), one_token_logits(model, seq, 40))


def test_batched_attention_is_not_batch_invariant():
    """The other control: per-token int8 linears alone do not suffice; attention over the whole
    block (sdpa) rounds differently from one query at a time."""
    model = quantize_int8(copy.deepcopy(float_model()), layer=RowInt8Linear)
    model.set_attn_implementation("sdpa")
    seq = tokens(49, seed=40)
    assert not torch.equal(block_logits(model, seq, 40), one_token_logits(model, seq, 40))


def test_tree_rows_equal_one_token_passes_along_each_path():
    model = int8_target()
    context = tokens(30, seed=2)
    tree = Draft(
        tokens=[7, 8, 11, 12, 13, 14, 15],
        origins=[1] * 7,
        q=[None] * 7,
        parents=[-1, -1, 0, 0, 2, 1, 4],
    )
    logits = TransformersScorer(model, "tree").score_tree(context, tree)
    for node in range(len(tree)):
        path, i = [], node
        while i >= 0:
            path.append(tree.tokens[i])
            i = tree.parents[i]
        seq = np.concatenate([context, path[::-1]])
        assert torch.equal(logits[node + 1], one_token_logits(model, seq, len(context))[-1])


@torch.inference_mode()
def own_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """The int8 target alone: one token per pass."""
    scorer = TransformersScorer(model, "alone")
    seq = np.asarray(prompt, dtype=np.int64)
    out: list[int] = []
    for _ in range(n):
        nxt = int(scorer.score(seq, len(seq))[-1].argmax())
        out.append(nxt)
        seq = np.append(seq, nxt)
    return out


@pytest.mark.parametrize("tree", [None, TreeSettings(budget=8, top_k=2, min_prob=0.9)])
@pytest.mark.parametrize("seed", range(3))
def test_cascade_over_an_int8_target_outputs_its_own_greedy_exactly(seed, tree):
    target = int8_target()
    drafter = perturb(float_model(), 0.01, seed)
    prompt = tokens(20, seed=10 + seed).tolist()
    want = own_greedy(target, prompt, 40)
    cascade = cascade_of(target, [drafter, MaxGram()], [[4, 2], [0, 3]], tree=tree)
    assert ids_of(cascade.generate(prompt, 40)) == want  # no near-tie allowance


def test_loading_an_int8_target(tiny_dir):
    from csdraft.models.transformers_backend import load_transformers as load

    target = load(str(tiny_dir), "int8", progress=False, batch_invariant=True)
    assert target.batch_invariant and target.model.config._attn_implementation == ATTENTION
    layers = [m for m in target.model.modules() if isinstance(m, RowInt8Linear)]
    assert len(layers) == 2 * 4 + 1  # q/k/v fused, o, gate/up fused, down; and the head
    assert target.int8_layers() == 2 * 7 + 1  # projections, each counted
    drafter = load(str(tiny_dir), "int8", progress=False)
    assert not drafter.batch_invariant
    assert drafter.model.config._attn_implementation == GQA_ATTENTION
    assert all(not isinstance(m, RowInt8Linear) for m in drafter.model.modules())
    assert any(isinstance(m, Int8Linear) for m in drafter.model.modules())
    bf16 = load(str(tiny_dir), "bfloat16", progress=False, batch_invariant=True)
    assert not bf16.batch_invariant  # only int8 has a batch-invariant path


def test_models_the_rowwise_path_cannot_serve_are_refused():
    sliding = build_model(
        "qwen2", VOCAB, hidden=64, use_sliding_window=True, sliding_window=8, max_window_layers=0
    )
    with pytest.raises(UsageError, match="sliding_attention"):
        make_batch_invariant(quantize_int8(sliding, layer=RowInt8Linear))
    gpt2 = build_model("gpt2", VOCAB, hidden=64)  # Conv1D projections: no int8 layers
    with pytest.raises(UsageError, match="Conv1D"):
        make_batch_invariant(quantize_int8(gpt2, layer=RowInt8Linear))
