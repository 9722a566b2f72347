"""Encoder-decoder ladders (T5, BART) on tiny random models saved as plain directories: greedy
output equals transformers' own ``generate`` of the target, whatever the ladder and k-matrix;
the encoder runs once per rung per generation; the decoder cache crops after rejections; the
rules (one kind of model per ladder, limits, int8) refuse in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seq2seq_models import (
    TOKENIZER,
    bart_config,
    ladder_yaml,
    model_dir,
    reference,
    t5_config,
)

from csdraft import api
from csdraft.errors import UsageError
from csdraft.trace import Commit

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = len(TOKENIZER)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Per architecture: a target, a near copy, a farther copy and a smaller random model."""
    root = tmp_path_factory.mktemp("encdec")
    out = {}
    for arch, config, small in (
        ("t5", t5_config(), t5_config(16, 1)),
        ("bart", bart_config(), bart_config(16, 1)),
    ):
        target = model_dir(root / f"{arch}-target", config, 0)
        out[arch] = {
            "target": target,
            "near": model_dir(root / f"{arch}-near", config, 1, base=target, noise=0.05),
            "far": model_dir(root / f"{arch}-far", config, 2, base=target, noise=0.3),
            "small": model_dir(root / f"{arch}-small", small, 3),
        }
    return out


@pytest.fixture(scope="module")
def ladders(dirs, tmp_path_factory):
    """Per architecture, the loaded ladder target, near, far + Max-Gram."""
    root = tmp_path_factory.mktemp("yaml")
    out = {}
    for arch, d in dirs.items():
        path = ladder_yaml(
            root / f"{arch}.yaml",
            [d["target"], d["near"], d["far"]],
            [[1, 1, 1], [0, 1, 1], [0, 0, 1]],
        )
        out[arch] = api.load(config=path)
    return out


_REFERENCES: dict = {}


def want(dirs, arch: str, prompt: list[int], n: int) -> list[int]:
    key = (arch, tuple(prompt), n)
    if key not in _REFERENCES:
        _REFERENCES[key] = reference(dirs[arch]["target"], prompt, n)
    return _REFERENCES[key]


@st.composite
def sub_ladders(draw):
    """A sub-ladder (the target, 0-2 of near/far, Max-Gram or not) and a k-matrix over it:
    row r (the target, then each neural drafter above another drafting rung) may take from the
    drafting rungs below it; and per neural drafter its lenience, min_confidence and window."""
    neural = draw(st.sampled_from([[], ["d1"], ["d2"], ["d1", "d2"]]))
    names = neural + (["max-gram"] if draw(st.booleans()) else [])
    rows = min(1 + len(neural), len(names))  # the rungs with drafting rungs below them
    k = [[draw(st.integers(0, 5)) if c >= r else 0 for c in range(len(names))] for r in range(rows)]
    rungs = {
        name: dict(
            lenience=draw(st.sampled_from([1.0, 2.0])),
            min_confidence=draw(st.sampled_from([0.0, 0.5])),
            window=draw(st.sampled_from([None, 3])),
        )
        for name in neural
    }
    return names, (k if names else []), rungs


prompts = st.one_of(
    st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=10),
    st.builds(lambda p, r: p * r, st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=3),
              st.integers(2, 5)),
)  # fmt: skip


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(arch=st.sampled_from(["t5", "bart"]), ladder=sub_ladders(), prompt=prompts,
       n=st.integers(1, 16))  # fmt: skip
def test_greedy_equals_the_targets_generate(dirs, ladders, arch, ladder, prompt, n):
    names, k, rungs = ladder
    lad = ladders[arch]
    spec = lad.spec.keep(names, k)
    for name, settings_ in rungs.items():
        spec = spec.with_rung(name, **settings_)
    result = lad.generate(prompt, n, spec=spec)
    assert result.token_ids == want(dirs, arch, prompt, n), (names, k, rungs)


def test_a_wrong_decoder_start_is_caught(dirs, ladders, monkeypatch):
    """Teeth: scoring the first output token after anything but the decoder start token
    changes the output (so the greedy tests above can fail)."""
    from csdraft.models import seq2seq

    prompt, lad = [5, 6, 7, 8, 9], ladders["t5"]
    assert lad.generate(prompt, 8).token_ids == want(dirs, "t5", prompt, 8)
    original = seq2seq.Seq2SeqScorer.__init__

    def wrong_start(self, model, name):
        original(self, model, name)
        self.start_id = prompt[-1]

    monkeypatch.setattr(seq2seq.Seq2SeqScorer, "__init__", wrong_start)
    assert lad.generate(prompt, 8).token_ids != want(dirs, "t5", prompt, 8)


def test_the_encoder_runs_once_per_rung_and_rejected_drafts_are_cropped(dirs, ladders):
    lad = ladders["t5"]
    encoders = {name: m.model.get_encoder() for name, m in lad.models.items()}
    calls = dict.fromkeys(encoders, 0)
    hooks = [
        enc.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
        for name, enc in encoders.items()
    ]
    try:
        prompt = [10, 20, 30, 10, 20, 30]
        events = list(lad.stream(prompt, 24))
    finally:
        for h in hooks:
            h.remove()
    assert calls == dict.fromkeys(encoders, 1)
    rejected = sum(len(e.rejected) for e in events if isinstance(e, Commit))
    assert rejected > 0  # the far drafter's drafts were refused, so caches were cropped
    got = [t for e in events if isinstance(e, Commit) for t in e.tokens]
    assert got == want(dirs, "t5", prompt, 24)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_cropped_cache_scores_as_a_fresh_one(ladders, arch):
    """After scoring a draft and then a sequence that parts from it (a rejection), the scorer's
    logits equal a fresh scorer's over the same sequence; the cache holds the kept tokens."""
    model = ladders[arch].target
    prompt = np.array([4, 5, 6, 7], dtype=np.int64)
    seq_a = np.concatenate([prompt, [10, 11, 12, 13, 14]])
    seq_b = np.concatenate([prompt, [10, 11, 20, 21]])
    s = model.session("s")
    s.begin(prompt)
    s.score(seq_a[:6], 4)
    s.score(seq_a, 6)
    got = s.score(seq_b, 6)  # keeps dec [start, 10, 11]... refeeds from the row before 20
    assert s.cache.get_seq_length() == 1 + len(seq_b) - len(prompt)
    fresh = model.session("f")
    fresh.begin(prompt)
    torch.testing.assert_close(got, fresh.score(seq_b, len(prompt))[2:], atol=1e-5, rtol=1e-5)
    assert s.encoder_passes == 1


def test_a_prompt_longer_than_a_drafters_limit_is_one_line(dirs, tmp_path):
    """A T5 target (no length limit) over a BART drafter of 16 positions."""
    short = model_dir(tmp_path / "bart16", bart_config(positions=16), 4)
    lad = api.load(
        config=ladder_yaml(tmp_path / "l.yaml", [dirs["t5"]["target"], short], [[2, 1], [0, 2]])
    )
    with pytest.raises(UsageError, match=r"prompt is 20 tokens; model 'd1' .* at most 16"):
        lad.generate(list(range(3, 23)), 4)
    with pytest.raises(UsageError, match=r"--max-new-tokens 30 exceeds model 'd1'"):
        lad.generate([5, 6], 30)
    assert lad.generate([5, 6, 7], 8).token_ids == want(dirs, "t5", [5, 6, 7], 8)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_next_logits_reads_the_prompt_apart(ladders, arch):
    """``next_logits(prompt + output, len(prompt))`` (the margins bench and tune report at a
    divergence) are the logits after the output; reading the whole context as the prompt
    gives other ones."""
    from csdraft import exactness

    model, prompt, out = ladders[arch].target, [7, 8, 9, 7, 8], [20, 21, 22]
    dec = torch.tensor([[model.model.config.decoder_start_token_id, *out]])
    with torch.inference_mode():
        ref = model.model(input_ids=torch.tensor([prompt]), decoder_input_ids=dec).logits[0, -1]
    got = model.next_logits(prompt + out, len(prompt))
    torch.testing.assert_close(got, ref.float(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.next_logits(prompt + out), got, atol=1e-3)
    top = got.topk(2).values
    assert exactness.top2_margin(model, prompt + out, len(prompt)) == pytest.approx(
        float(top[0] - top[1])
    )


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_scores_equal_one_full_forward_pass(ladders, arch):
    """Scored as the engine scores (blocks, a rejection, the cache cropped and refilled), every
    row of logits equals the model's own uncached forward pass over the prompt and
    [decoder start] + the output: positions and caches right whatever the greedy outputs
    (the tiny random BART repeats itself, so equal outputs alone would prove less)."""
    model = ladders[arch].target
    prompt = [4, 5, 6, 7, 8]
    p = len(prompt)
    session = model.session("s")
    session.begin(prompt)
    calls = [  # (output so far + draft, tokens of it already final)
        ([10, 11, 12], 0),
        ([10, 11, 12, 13, 14, 15], 3),
        ([10, 11, 30, 31], 2),  # 12.. rejected
        ([10, 11, 30, 31, 32, 33, 34], 4),
        ([10, 11, 30, 40], 3),
    ]
    full = model.model.eval()
    for out, final in calls:
        got = session.score(np.array(prompt + out, dtype=np.int64), p + final)
        dec = torch.tensor([[full.config.decoder_start_token_id, *out]])
        with torch.inference_mode():
            ref = full(input_ids=torch.tensor([prompt]), decoder_input_ids=dec).logits[0].float()
        torch.testing.assert_close(got, ref[final:], atol=1e-5, rtol=1e-5)
    assert session.encoder_passes == 1


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_a_drafter_equal_to_the_target_has_every_draft_kept(dirs, tmp_path, arch):
    """The drafter side of the mapping: a drafter that is the target drafts exactly the
    target's tokens (blocks of 4: a quarter of the target passes, every proposal kept)."""
    path = ladder_yaml(tmp_path / "same.yaml", [dirs[arch]["target"]] * 2, [[4]], maxgram=False)
    prompt = [10, 20, 30, 10, 20, 30]
    result = api.load(config=path).generate(prompt, 16)
    assert result.token_ids == want(dirs, arch, prompt, 16)
    stats = result.stats
    assert stats.proposed[0] > 0 and stats.accepted[0] == stats.proposed[0]
    assert stats.target_forwards == -(-len(result.token_ids) // 5)


@pytest.mark.parametrize("name", ["hf-generate", "hf-assisted"])
def test_benchs_transformers_baselines_read_the_output_after_the_start_token(dirs, ladders, name):
    """bench's ``hf-generate`` and ``hf-assisted`` (the largest drafter assisting) on a T5
    ladder give the target's greedy output (not its decoder start token, not the prompt)."""
    from csdraft.bench.methods import METHODS, Settings

    lad, prompt = ladders["t5"], [10, 20, 30, 10, 20, 30]
    outcome = METHODS[name].runner(lad, Settings())(prompt, 12)
    assert outcome.ids == want(dirs, "t5", prompt, 12)


def test_a_spec_with_trees_or_a_draft_vocabulary_is_refused_on_the_loaded_ladder(ladders):
    """Specs made after loading (bench's methods, a request's) meet the same rule, in one
    line: ``Ladder.runnable`` (bench then skips such a method with this reason)."""
    from csdraft.engine.tree import TreeSettings

    lad = ladders["t5"]
    for spec, needle in (
        (lad.spec.with_rung("target", tree=TreeSettings()), "has a tree"),
        (lad.spec.with_rung("d1", vocab=40), "has a draft vocabulary"),
    ):
        with pytest.raises(UsageError, match=needle):
            lad.generate([5, 6, 7], 4, spec=spec)
