"""Greedy exactness of the cascade engine and the mechanics around it.

The central property: whatever the ladder (0-2 neural drafters, with or without Max-Gram),
k-matrix (zeros included), inner lenience, min_confidence, eos, stop callable and prompt, the
cascade's ids equal the target's plain greedy decoding (``model.generate(do_sample=False)``),
token for token, in float32. The harness (``cases``, ``run_greedy_case``, ``check_stream``)
lives in engine_helpers.py: engine/test_toy_proposer.py runs it again with a toy proposer in the
ladder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import (
    ARCHS,
    LARGE_VOCAB,
    SMALL_VOCAB,
    TARGETS,
    cascade_of,
    cases,
    drafter_of,
    ids_of,
    model_rung,
    reference_greedy,
    run_greedy_case,
    scorer,
    target_of,
)
from hypothesis import HealthCheck, given, settings

from csdraft.engine import Cascade, MaxGram
from csdraft.trace import Commit, Review, Stats

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_cascade_equals_target_greedy(zoo, case):
    run_greedy_case(zoo, case)


def ladder(zoo, arch="llama", drafters=("same",), maxgram=True, k=None, lenience=1.0, seed=0):
    """A cascade over the SMALL_VOCAB target of ``arch``; default k gives long blocks."""
    key = next(t for t in TARGETS if t[0] == arch and t[1] == SMALL_VOCAB)
    d = len(drafters) + maxgram
    if k is None:
        k = [[6 if c == r else 2 if c > r else 0 for c in range(d)] for r in range(d)]
    rungs = [drafter_of(zoo, key, kind) for kind in drafters] + ([MaxGram(4, 1)] if maxgram else [])
    target = target_of(zoo, key)
    return cascade_of(target, rungs, k, lenience=lenience, seed=seed), target


PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
REPETITIVE = [7, 8, 9, 10] * 4


@pytest.mark.parametrize("arch", ARCHS)
def test_eos_stops_with_eos_included(zoo, arch):
    cascade, target = ladder(zoo, arch)
    plain = zoo.reference(target, PROMPT, 30)
    # Choose an eos that the target emits a few tokens in, so the block holding it is cut.
    eos = next(t for i, t in enumerate(plain) if i >= 3 and t not in plain[:i])
    want = zoo.reference(target, PROMPT, 30, eos_id=eos)
    assert want[-1] == eos and eos not in want[:-1]
    assert want == plain[: len(want)]
    events = list(cascade.generate(PROMPT, 30, eos_ids=(eos, 10**6)))
    assert ids_of(events) == want
    assert events[-1].reason == "eos"
    assert Stats.of(events).new_tokens == len(want)


def test_eos_absent_from_output_does_not_stop(zoo):
    cascade, target = ladder(zoo)
    want = zoo.reference(target, PROMPT, 12)
    absent = [t for t in range(SMALL_VOCAB) if t not in want]
    in_prompt_only = [t for t in PROMPT if t not in want]
    events = list(cascade.generate(PROMPT, 12, eos_ids=[*absent[:3], *in_prompt_only]))
    assert ids_of(events) == want
    assert events[-1].reason == "length"


def test_stop_callable_cuts_mid_block(zoo):
    # The drafter is the target itself, so whole blocks of 7 are committed at once.
    cascade, target = ladder(zoo, drafters=("same",), maxgram=False, k=[[6]])
    want = zoo.reference(target, PROMPT, 30)
    seen: list[list[int]] = []
    total = [0]
    cut_at = 10

    def stop(tokens: list[int]) -> int | None:
        seen.append(list(tokens))
        before = total[0]
        total[0] += len(tokens)
        return cut_at - before if total[0] >= cut_at else None

    events = list(cascade.generate(PROMPT, 30, stop=stop))
    assert ids_of(events) == want[:cut_at], zoo.divergence(target, PROMPT, ids_of(events), want)
    assert events[-1].reason == "stop"
    assert len(seen[-1]) > cut_at - sum(map(len, seen[:-1])) > 0, "the cut was not mid-block"
    # The stop callable saw exactly the committed tokens, batch by batch.
    assert [t for batch in seen for t in batch][: len(want[:cut_at])] == want[:cut_at]


def test_stop_callable_keeping_nothing(zoo):
    cascade, _ = ladder(zoo)
    events = list(cascade.generate(PROMPT, 20, stop=lambda tokens: 0))
    assert ids_of(events) == []
    assert events[-1].reason == "stop"


@pytest.mark.parametrize("max_new_tokens", [0, 1, 2, 3, 6, 7, 8, 13, 21])
@pytest.mark.parametrize("drafters", [(), ("same",), ("same", "near")])
def test_max_new_tokens_exactly_respected(zoo, max_new_tokens, drafters):
    cascade, target = ladder(zoo, drafters=drafters, maxgram=True)
    events = list(cascade.generate(REPETITIVE, max_new_tokens))
    got = ids_of(events)
    want = zoo.reference(target, REPETITIVE, max_new_tokens)
    assert got == want, zoo.divergence(target, REPETITIVE, got, want)
    assert len(got) == max_new_tokens
    running = 0
    for e in events:
        if isinstance(e, Commit):
            running += len(e.tokens)
            assert running <= max_new_tokens
    assert events[-1].reason == "length"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("vocab", [SMALL_VOCAB, LARGE_VOCAB])
def test_scorer_cache_cropping(zoo, arch, vocab):
    model = zoo.model(arch, vocab, 16, 2)
    rng = np.random.default_rng(ARCHS.index(arch) + vocab)
    a = rng.integers(0, vocab, 24)
    rung = scorer(model, "r")

    def fresh(seq, start):
        return scorer(model, "fresh").score(seq, start)

    @torch.inference_mode()
    def full(seq, start):  # no cache at all
        logits = model(torch.from_numpy(np.asarray(seq))[None]).logits[0]
        return logits[start - 1 :].float()

    def check(seq, start):
        got = rung.score(np.asarray(seq, dtype=np.int64), start)
        assert got.shape == (len(seq) - start + 1, vocab)
        torch.testing.assert_close(got, fresh(seq, start), atol=1e-5, rtol=0)
        torch.testing.assert_close(got, full(seq, start), atol=1e-5, rtol=0)

    check(a[:10], 4)  # fresh cache
    check(a[:16], 10)  # extend
    b = a.copy()
    b[12:] = (a[12:] + 1) % vocab  # diverge after 12 shared tokens
    check(b[:20], 14)
    check(b[:20], 20)  # score only the next token after the whole sequence
    check(a[:8], 6)  # a strict prefix of what the cache holds
    c = a.copy()
    c[1:] = (a[1:] + 3) % vocab  # only the first token shared
    check(c[:12], 2)
    check(c[:12], 1)
    check(a[:18], 3)  # back to the first sequence
    rung.reset()
    check(a[:5], 5)


def _drafters(model, n, lenience=1.0, min_confidence=0.0):
    return [model_rung(model, f"d{i}", lenience, min_confidence) for i in range(n)]


def test_an_empty_prompt_raises(zoo):
    model = zoo.model("llama", SMALL_VOCAB)
    cascade = cascade_of(model, [MaxGram()], [[2]])
    with pytest.raises(ValueError, match="prompt"):
        list(cascade.generate([], 3))


def test_valid_configurations_accepted(zoo):
    model = zoo.model("llama", SMALL_VOCAB)
    Cascade([model_rung(model, "t")], [])
    Cascade([model_rung(model, "t"), MaxGram()], [[0]])
    Cascade([model_rung(model, "t"), *_drafters(model, 1, lenience=5), MaxGram()], [[0, 0], [0, 0]])
    Cascade([model_rung(model, "t"), *_drafters(model, 1)], [[3]])
    Cascade(
        [model_rung(model, "t"), *_drafters(model, 2, 1.5, 0.5), MaxGram()],
        [[1, 1, 1], [0, 1, 1], [0, 0, 1]],
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_target_alone_is_autoregressive(zoo, arch):
    cascade, target = ladder(zoo, arch, drafters=(), maxgram=False, k=[])
    events = list(cascade.generate(PROMPT, 15))
    assert ids_of(events) == zoo.reference(target, PROMPT, 15)
    reviews = [e for e in events if isinstance(e, Review)]
    assert len(reviews) == 15
    assert all(r.reviewer == 0 and r.proposed == [] and r.accepted == 0 for r in reviews)
    commits = [e for e in events if isinstance(e, Commit)]
    assert [len(c.tokens) for c in commits] == [1] * 15
    assert Stats.of(events).tokens_per_forward == 1.0


@pytest.mark.parametrize("arch", ARCHS)
def test_maxgram_alone_is_prompt_lookup(zoo, arch):
    cascade, target = ladder(zoo, arch, drafters=(), maxgram=True, k=[[5]])
    events = list(cascade.generate(REPETITIVE, 20))
    got = ids_of(events)
    assert got == zoo.reference(target, REPETITIVE, 20)
    stats = Stats.of(events)
    assert stats.proposed[0] > 0  # the prompt repeats, so Max-Gram always has a match
    assert set(stats.drafted) <= {0, 1}
    assert all(e.reviewer == 0 for e in events if isinstance(e, Review))
    assert stats.kinds == ["target", "statistical"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["near", "far", "other"])
def test_one_drafter_is_speculative_decoding(zoo, arch, kind):
    cascade, target = ladder(zoo, arch, drafters=(kind,), maxgram=False, k=[[4]])
    events = list(cascade.generate(PROMPT, 20))
    got = ids_of(events)
    want = zoo.reference(target, PROMPT, 20)
    assert got == want, zoo.divergence(target, PROMPT, got, want)
    # The drafter has nothing below it: it decodes one token per forward pass.
    assert all(e.proposed == [] for e in events if isinstance(e, Review) and e.reviewer == 1)


@pytest.mark.parametrize("maxgram", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_drafter_equal_to_target_is_always_accepted(zoo, arch, maxgram):
    k = [[5, 2], [0, 3]] if maxgram else [[5]]
    cascade, target = ladder(zoo, arch, drafters=("same",), maxgram=maxgram, k=k)
    events = list(cascade.generate(PROMPT, 24))
    got = ids_of(events)
    assert got == zoo.reference(target, PROMPT, 24)
    stats = Stats.of(events)
    first = [e for e in events if isinstance(e, Review) and e.reviewer == 0][0]
    if not maxgram:
        # Every proposal is the target's own greedy choice.
        assert stats.acceptance(0) == 1.0
        assert stats.drafted[1] > stats.drafted[0]
    else:
        # Drafter tokens are always kept; Max-Gram's tail may not be.
        assert first.accepted >= 5
    assert stats.tokens_per_forward > 1
    assert stats.target_forwards == sum(
        1 for e in events if isinstance(e, Review) and e.reviewer == 0
    )
    assert stats.new_tokens == sum(len(e.tokens) for e in events if isinstance(e, Commit)) == 24
    assert stats.by_position[0][0] == sum(
        1 for e in events if isinstance(e, Review) and e.reviewer == 0 and e.proposed
    )
    assert stats.finish == "length"


def test_runs_are_independent(zoo):
    """A cascade object can generate again: caches and Max-Gram start over."""
    cascade, target = ladder(zoo, drafters=("near", "far"), maxgram=True)
    first = ids_of(cascade.generate(REPETITIVE, 12))
    other = ids_of(cascade.generate(PROMPT, 9))
    again = ids_of(cascade.generate(REPETITIVE, 12))
    assert first == again == zoo.reference(target, REPETITIVE, 12)
    assert other == zoo.reference(target, PROMPT, 9)


def test_an_abandoned_generation_does_not_leak_into_the_next(zoo):
    """A generation stopped half way (the consumer stops iterating) leaves nothing behind."""
    cascade, target = ladder(zoo, drafters=("near", "far"), maxgram=True)
    events = cascade.generate(PROMPT, 30)
    for e in events:
        if isinstance(e, Commit):
            break
    events.close()
    assert ids_of(cascade.generate(REPETITIVE, 12)) == zoo.reference(target, REPETITIVE, 12)


def test_lenient_inner_rungs_stay_exact_greedy(zoo):
    """Heavy lenience lets the drafters accept nearly anything; the target still decides."""
    cascade, target = ladder(zoo, drafters=("far", "other"), maxgram=True, lenience=5.0)
    events = list(cascade.generate(REPETITIVE, 24))
    got = ids_of(events)
    want = zoo.reference(target, REPETITIVE, 24)
    assert got == want, zoo.divergence(target, REPETITIVE, got, want)
    inner = [e for e in events if isinstance(e, Review) and e.reviewer > 0 and e.proposed]
    assert inner, "the inner rungs reviewed nothing"


@pytest.mark.parametrize("arch", ARCHS)
def test_vertical_cascade_every_rung_contributes(zoo, arch):
    """Two drafters and Max-Gram on a prompt that already holds the target's continuation:
    inner reviews keep proposals from below, and the target commits tokens of every rung."""
    cascade, target = ladder(
        zoo, arch, drafters=("near", "same"), maxgram=True, k=[[4, 2, 2], [0, 3, 2], [0, 0, 3]]
    )
    seed = [2, 7, 1, 8]
    prompt = seed + zoo.reference(target, seed, 24) + seed
    events = list(cascade.generate(prompt, 24))
    got = ids_of(events)
    want = zoo.reference(target, prompt, 24)
    assert got == want, zoo.divergence(target, prompt, got, want)
    stats = Stats.of(events)
    assert stats.accepted.get(1, 0) > 0 and stats.accepted.get(2, 0) > 0
    assert stats.drafted.get(3, 0) > 0  # Max-Gram tokens made it to the output
    assert stats.drafted.get(1, 0) + stats.drafted.get(2, 0) > 0
    assert stats.tokens_per_forward > 1
    assert stats.kinds == ["target", "model", "model", "statistical"]


def test_min_confidence_shortens_drafts_but_not_output(zoo):
    """A drafter that stops after an unsure token proposes fewer tokens; the output stays the
    target's greedy decoding."""
    key = TARGETS[0]
    target, far = target_of(zoo, key), drafter_of(zoo, key, "far")
    k = [[6, 2], [0, 3]]
    eager = cascade_of(target, [far, MaxGram()], k)
    wary = cascade_of(target, [far, MaxGram()], k, min_confidence=[0.99])
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]

    def proposed(events):
        return sum(len(e.proposed) for e in events if isinstance(e, Review) and e.reviewer == 0)

    bold, careful = list(eager.generate(prompt, 24)), list(wary.generate(prompt, 24))
    assert ids_of(careful) == ids_of(bold) == reference_greedy(target, prompt, 24)
    assert proposed(careful) < proposed(bold)


def test_review_returns_the_kept_nodes_the_loop_commits(zoo):
    from csdraft.engine.draft import Draft

    cascade, target = ladder(zoo)
    plain = zoo.reference(target, PROMPT, 3)
    rung = cascade.rungs[0]
    rung.reset(PROMPT)
    wrong = (plain[2] + 1) % SMALL_VOCAB
    reviewed = cascade.review(rung, np.asarray(PROMPT), Draft.deterministic([*plain[:2], wrong], 1))
    rung.release()
    assert reviewed.kept == [0, 1]
    assert reviewed.out.tokens == plain[:3] and reviewed.out.origins == [1, 1, 0]
    assert 0 < reviewed.confidence <= 1
    # the loop commits the kept nodes and reports the others of the target's review as rejected
    events = list(cascade.generate(PROMPT, 30))
    review = None
    for e in events:
        if isinstance(e, Review) and e.reviewer == 0:
            review = e
        elif isinstance(e, Commit):
            kept = set(review.kept())
            assert e.rejected == [t for i, t in enumerate(review.proposed) if i not in kept]
    assert any(isinstance(e, Commit) and e.rejected for e in events)
