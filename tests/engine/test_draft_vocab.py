"""A drafter's draft vocabulary (``models.draft_vocab``): its head cut to the lowest ids and the
special tokens, -inf elsewhere. Its drafts change; the cascade's output must not, greedy or
sampled, even where the target's choice lies outside the kept ids."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import (
    SAMPLING_VOCAB,
    TARGETS,
    build_model,
    distribution_check,
    drafter_of,
    ids_of,
    passes,
    target_of,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csdraft.engine import Cascade, MaxGram, ModelRung, Sampling
from csdraft.models import TransformersScorer
from csdraft.models.attention import use_gqa_attention
from csdraft.models.draft_vocab import DraftHead, cut_head, kept_ids
from csdraft.models.int8 import quantize_int8
from csdraft.trace import Review

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [5, 9, 2, 7, 5, 9, 2, 7, 3, 1, 4, 1, 5, 9, 2, 6]
SAMPLING_PROMPT = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]


class Tokenizer:
    """All a draft vocabulary reads of a tokenizer: its added tokens' ids."""

    def __init__(self, added: list[int]) -> None:
        self.added_tokens_decoder = dict.fromkeys(added)


def cut_rung(model: torch.nn.Module, name: str, size: int, added: list[int] = ()) -> ModelRung:
    """A drafting rung over ``model`` with its head cut to ``size`` ids (and ``added``)."""
    head = model.get_output_embeddings()
    keep = kept_ids(Tokenizer(list(added)), size, head.out_features)
    return ModelRung(TransformersScorer(model, name, cut_head(head, keep)), name)


def test_kept_ids_are_the_lowest_and_the_added_tokens():
    keep = kept_ids(Tokenizer([3, 40, 45, 60]), 8, 48)
    assert keep.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 40, 45]  # 60: past the head's rows
    assert kept_ids(Tokenizer([]), 100, 48).tolist() == list(range(48))


@pytest.mark.parametrize("int8", [False, True])
def test_a_cut_head_computes_the_kept_rows_and_minus_inf_elsewhere(int8):
    model = build_model("qwen2", 64, hidden=32)
    if int8:
        model = quantize_int8(model)
    head = model.get_output_embeddings()
    keep = kept_ids(Tokenizer([50, 63]), 20, 64)
    cut = cut_head(head, keep)
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0))
    full, out = head(x), cut(x)
    assert isinstance(cut, DraftHead) and out.shape == full.shape
    torch.testing.assert_close(out[..., keep], full[..., keep], rtol=1e-5, atol=1e-5)
    dropped = torch.ones(64, dtype=torch.bool).index_fill_(0, keep, False)
    assert torch.isneginf(out[..., dropped]).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_lean_and_the_framework_path_give_a_cut_head_the_same_logits(arch):
    """Llama takes the lean path with the cut head; GPT-2 the base model and then the head."""
    model = build_model(arch, 48, hidden=16)
    if arch == "llama":
        model = use_gqa_attention(model).eval()
    keep = kept_ids(Tokenizer([]), 20, 48)
    scorer = TransformersScorer(model, "d", cut_head(model.get_output_embeddings(), keep))
    assert (scorer.lean is not None) == (arch == "llama")
    seq = torch.tensor(PROMPT).numpy()
    logits = scorer.score(seq, 10)
    full = TransformersScorer(model, "full").score(seq, 10)
    torch.testing.assert_close(logits[:, keep], full[:, keep], rtol=1e-5, atol=1e-5)
    assert torch.isneginf(logits[:, 20:]).all()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(TARGETS),
    sizes=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    maxgram=st.booleans(),
    prompt_len=st.integers(1, len(PROMPT)),
)
def test_drafters_with_draft_vocabularies_keep_the_targets_greedy_output(
    zoo, key, sizes, maxgram, prompt_len
):
    target = target_of(zoo, key)
    drafters = [
        cut_rung(drafter_of(zoo, key, kind), f"d{i}", size)
        for i, (kind, size) in enumerate(zip(("near", "far"), sizes, strict=True))
    ]
    k = [[3, 2, 1], [0, 2, 1], [0, 0, 2]] if maxgram else [[3, 2], [0, 2]]
    rungs = [ModelRung(TransformersScorer(target, "target"), "target"), *drafters]
    cascade = Cascade([*rungs, *([MaxGram()] if maxgram else [])], k)
    prompt = PROMPT[:prompt_len]
    events = list(cascade.generate(prompt, 20))
    assert ids_of(events) == zoo.reference(target, prompt, 20)
    # each drafter's own tokens come from its vocabulary
    reviews = [e for e in events if isinstance(e, Review)]
    drafted = [(o, t) for e in reviews for o, t in zip(e.origins, e.proposed, strict=True)]
    assert all(t < sizes[o - 1] for o, t in drafted if o in (1, 2)), drafted
    assert any(o in (1, 2) for o, _ in drafted)


def test_drafters_with_draft_vocabularies_sample_the_targets_distribution(sampling_models):
    """Half the ids cut from both drafters: where the target samples one of those, the
    drafters' q is 0 and only the residual can give it."""
    sampling = Sampling(1.0)
    v = SAMPLING_VOCAB
    rungs = [
        ModelRung(TransformersScorer(sampling_models["target"], "target"), "target"),
        cut_rung(sampling_models["near"], "near", v // 2),
        cut_rung(sampling_models["far"], "far", v // 2, added=[v - 1]),
    ]
    cascade = Cascade(rungs, [[2, 1], [0, 2]], sampling=sampling)
    results, tv = distribution_check(
        cascade, sampling_models["target"], sampling, 3, 1000, SAMPLING_PROMPT
    )
    assert passes(results), f"chi-square p-values {results}, TV(x1,x2) {tv:.3f}"


def test_a_ladder_cuts_its_drafters_heads_when_it_loads(tmp_path, monkeypatch):
    """Not in the first request: a server's first request waited seconds for it."""
    import yaml
    from tiny_ladder import make_tiny_ladder

    from csdraft.api import Ladder
    from csdraft.ladder import get_ladder

    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CSDRAFT_CONFIG", str(tmp_path / "user.yaml"))
    config = make_tiny_ladder(tmp_path, drafters=1)
    data = yaml.safe_load(config.read_text())
    data["tiny"]["drafters"][0]["vocab"] = 16
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = Ladder.load(get_ladder("tiny", config), progress=False)
    drafter = loaded.models["tiny-d1"]
    assert isinstance(drafter.heads.get(16), DraftHead)
    assert drafter.session("d", 16).head is drafter.heads[16]  # requests take the one cut
