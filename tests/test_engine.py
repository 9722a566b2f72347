"""Greedy exactness of the cascade engine and the mechanics around it.

The central property: whatever the ladder (0-2 neural drafters, with or without Max-Gram),
k-matrix (zeros included), inner lenience and prompt, the cascade's ids equal the target's plain
greedy decoding (``model.generate(do_sample=False)``), token for token, in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from conftest import ARCHS, LARGE_VOCAB, SMALL_VOCAB, reference_greedy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csdraft.engine import Cascade, HFRung, MaxGram, learn_bigram
from csdraft.trace import Commit, Finish, Review, Start, Stats

pytestmark = pytest.mark.usefixtures("one_thread")

# (arch, vocab, hidden, layers): the targets the property test draws from.
TARGETS = [
    ("llama", SMALL_VOCAB, 16, 1),
    ("qwen2", SMALL_VOCAB, 32, 2),
    ("gpt2", SMALL_VOCAB, 16, 2),
    ("llama", LARGE_VOCAB, 32, 1),
    ("qwen2", LARGE_VOCAB, 16, 1),
]
# How a drafter relates to its target: the target itself (everything accepted), a lightly or
# heavily perturbed copy, or an unrelated model of another architecture with the same vocab.
DRAFTER_KINDS = ("same", "near", "far", "other")


def ids_of(events) -> list[int]:
    return [t for e in events if isinstance(e, Commit) for t in e.tokens]


def target_of(zoo, key):
    arch, vocab, hidden, layers = key
    return zoo.model(arch, vocab, hidden, layers)


def drafter_of(zoo, key, kind: str):
    arch, vocab, hidden, layers = key
    target = target_of(zoo, key)
    if kind == "same":
        return target
    if kind == "near":
        return zoo.noisy(target, 0.03)
    if kind == "far":
        return zoo.noisy(target, 0.3)
    other = ARCHS[(ARCHS.index(arch) + 1) % len(ARCHS)]
    return zoo.model(other, vocab, 16, 1, seed=7)


@dataclass
class Case:
    target: tuple
    drafters: list[str]
    maxgram: bool
    max_ngram: int
    min_ngram: int
    bigram: bool
    k: list[list[int]]
    lenience: list[float]
    prompt: list[int]
    max_new_tokens: int
    eos_at: int | None = None  # the token the target emits at this index becomes eos
    stop_at: int | None = None  # a stop callable keeps exactly this many tokens in all
    min_confidence: list[float] | None = None  # per drafter; None: never stop drafting early
    echo: bool = False  # prompt + the target's own continuation + prompt: Max-Gram will match


@st.composite
def prompts(draw, vocab: int) -> list[int]:
    """Random prompts, and repetitive ones (so that Max-Gram finds matches)."""
    token = st.integers(0, vocab - 1)
    if draw(st.booleans()):
        return draw(st.lists(token, min_size=1, max_size=12))
    pattern = draw(st.lists(token, min_size=1, max_size=4))
    head = draw(st.lists(token, max_size=3))
    return head + pattern * draw(st.integers(2, 6))


@st.composite
def k_matrices(draw, size: int) -> list[list[int]]:
    """Upper-triangular non-negative D x D matrices, zeros allowed anywhere on or above the
    diagonal."""
    return [[draw(st.integers(0, 6)) if c >= r else 0 for c in range(size)] for r in range(size)]


@st.composite
def cases(draw) -> Case:
    target = draw(st.sampled_from(TARGETS))
    drafters = draw(st.lists(st.sampled_from(DRAFTER_KINDS + ("near",)), max_size=2))
    maxgram = draw(st.booleans())
    max_ngram = draw(st.integers(1, 5))
    return Case(
        target=target,
        drafters=drafters,
        maxgram=maxgram,
        max_ngram=max_ngram,
        min_ngram=draw(st.integers(1, max_ngram)),
        bigram=draw(st.booleans()),
        k=draw(k_matrices(len(drafters) + maxgram)),
        lenience=[draw(st.floats(1.0, 5.0)) for _ in drafters],
        prompt=draw(prompts(target[1])),
        max_new_tokens=draw(st.integers(1, 32)),
        eos_at=draw(st.one_of(st.none(), st.integers(0, 31))),
        stop_at=draw(st.one_of(st.none(), st.integers(0, 32))),
        min_confidence=draw(
            st.one_of(
                st.none(),
                st.lists(st.floats(0.0, 0.99), min_size=len(drafters), max_size=len(drafters)),
            )
        ),  # fmt: skip
        echo=draw(st.booleans()),
    )


def build_cascade(zoo, case: Case, seed: int = 0) -> Cascade:
    target = target_of(zoo, case.target)
    rungs = [HFRung(target, "target")]
    rungs += [HFRung(drafter_of(zoo, case.target, d), f"d{i}") for i, d in enumerate(case.drafters)]
    mg = None
    if case.maxgram:
        bigram = None
        if case.bigram:
            rng = np.random.default_rng(len(case.prompt))
            bigram = learn_bigram([rng.integers(0, case.target[1], 200).tolist()])
        mg = MaxGram(case.max_ngram, case.min_ngram, bigram)
    floors = case.min_confidence or 0.0
    return Cascade(rungs, mg, case.k, lenience=case.lenience, seed=seed, min_confidence=floors)


def check_segments(review: Review, case: Case) -> None:
    """The k-matrix row of the reviewer says which drafter fills which part of its block: in
    ladder order, drafter c + 1 fills positions up to k[r][r] + ... + k[r][c]. A neural
    drafter's segment ends with a token of its own (the last of its own reviews); its other
    tokens come from it or from rungs below it. Only Max-Gram, last, may come up short."""
    r, n_neural = review.reviewer, len(case.drafters)
    start = cumulative = 0
    for col in range(r, len(case.k)):
        cumulative += case.k[r][col]
        end = min(cumulative, len(review.proposed))
        drafter = col + 1
        segment = review.origins[start:end]
        if drafter <= n_neural:
            assert all(o >= drafter for o in segment), (review, case.k)
            if segment:
                assert segment[-1] == drafter, (review, case.k)
        else:
            assert all(o == drafter for o in segment), (review, case.k)
        start = end
    assert start == len(review.proposed)


def check_stream(events, case: Case) -> None:
    """Invariants of the event stream: shape, review structure, commits and the k-matrix."""
    assert isinstance(events[0], Start)
    assert isinstance(events[-1], Finish)
    assert sum(isinstance(e, Finish) for e in events) == 1
    drafting = len(case.drafters) + case.maxgram
    assert events[0].rungs[0] == "target"
    assert len(events[0].rungs) == drafting + 1
    assert events[0].prompt_tokens == len(case.prompt)
    produced = 0
    last_target = None
    for e in events:
        if isinstance(e, Review):
            # Only neural rungs review, and only proposals drafted by rungs below them.
            assert 0 <= e.reviewer <= len(case.drafters)
            assert all(e.reviewer < o <= drafting for o in e.origins)
            assert len(e.origins) == len(e.proposed)
            assert 0 <= e.accepted <= len(e.proposed)
            if e.reviewer < drafting:
                assert len(e.proposed) <= sum(case.k[e.reviewer])
                check_segments(e, case)
            else:
                assert e.proposed == []  # nothing below: autoregressive
            if e.reviewer == 0:
                room = case.max_new_tokens - produced - 1
                want = min(sum(case.k[0]), room) if drafting else 0
                if case.maxgram or case.min_confidence:  # may come up short
                    assert len(e.proposed) <= want
                else:
                    assert len(e.proposed) == want
                last_target = e
        elif isinstance(e, Commit):
            # A commit is the last target review's kept proposals plus its own token.
            assert last_target is not None
            out = last_target.proposed[: last_target.accepted] + [last_target.token]
            origins = last_target.origins[: last_target.accepted] + [0]
            assert e.tokens == out[: len(e.tokens)]
            assert e.origins == origins[: len(e.tokens)]
            assert e.rejected == last_target.proposed[last_target.accepted :]
            produced += len(e.tokens)
            last_target = None
    stats = Stats.of(events)
    assert (
        stats.new_tokens == produced == sum(len(e.tokens) for e in events if isinstance(e, Commit))
    )
    reviews = [e for e in events if isinstance(e, Review)]
    assert stats.target_forwards == sum(e.reviewer == 0 for e in reviews)
    for r in range(len(case.drafters) + 1):
        assert stats.forwards.get(r, 0) == sum(e.reviewer == r for e in reviews)
    assert sum(stats.drafted.values()) == stats.new_tokens


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_cascade_equals_target_greedy(zoo, case):
    target = target_of(zoo, case.target)
    if case.echo:
        seed = case.prompt
        case = replace(case, prompt=seed + zoo.reference(target, seed, 12) + seed, echo=False)
    plain = zoo.reference(target, case.prompt, case.max_new_tokens)
    # What the target alone would give, after eos and the stop callable cut it.
    length, reason, eos_ids, stop = case.max_new_tokens, "length", (), None
    if case.eos_at is not None and case.eos_at < len(plain):
        eos = plain[case.eos_at]
        eos_ids = (eos,)
        length, reason = plain.index(eos) + 1, "eos"
    if case.stop_at is not None:
        total = [0]

        def stop(tokens: list[int]) -> int | None:
            before = total[0]
            total[0] += len(tokens)
            return case.stop_at - before if total[0] >= case.stop_at else None

        if case.stop_at <= length:
            length, reason = case.stop_at, "stop"
    want = plain[:length]

    cascade = build_cascade(zoo, case)
    events = list(cascade.generate(case.prompt, case.max_new_tokens, eos_ids=eos_ids, stop=stop))
    got = ids_of(events)
    assert got == want, f"{zoo.divergence(target, case.prompt, got, want)}\n{case}"
    assert events[-1].reason == reason
    check_stream(events, case)


def ladder(zoo, arch="llama", drafters=("same",), maxgram=True, k=None, lenience=1.0, seed=0):
    """A cascade over the SMALL_VOCAB target of ``arch``; default k gives long blocks."""
    key = next(t for t in TARGETS if t[0] == arch and t[1] == SMALL_VOCAB)
    d = len(drafters) + maxgram
    if k is None:
        k = [[6 if c == r else 2 if c > r else 0 for c in range(d)] for r in range(d)]
    case = Case(key, list(drafters), maxgram, 4, 1, False, k, [lenience] * len(drafters), [], 1)
    return build_cascade(zoo, case, seed), target_of(zoo, key)


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
def test_hf_rung_cache_cropping(zoo, arch, vocab):
    model = zoo.model(arch, vocab, 16, 2)
    rng = np.random.default_rng(ARCHS.index(arch) + vocab)
    a = rng.integers(0, vocab, 24)
    rung = HFRung(model, "r")

    def fresh(seq, start):
        return HFRung(model, "fresh").score(seq, start)

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


@pytest.mark.parametrize(
    "k, lenience, n_drafters, maxgram",
    [
        ([[1]], 1.0, 1, True),  # needs 2x2
        ([[1, 2]], 1.0, 1, True),
        ([[1, 2], [0]], 1.0, 1, True),
        ([[1, 2], [0, 1], [0, 0]], 1.0, 1, True),
        ([], 1.0, 1, False),
        ([[1]], 1.0, 0, False),  # target alone: 0x0
        ([[1, -1], [0, 1]], 1.0, 1, True),
        ([[-3]], 1.0, 0, True),
        ([[1, 1], [0, 1]], 0.5, 2, False),
        ([[1, 1], [0, 1]], [1.0, 0.99], 2, False),
        ([[1, 1], [0, 1]], [2.0], 2, False),  # one lenience per neural drafter
        ([[1, 1], [0, 1]], [2.0, 2.0, 2.0], 2, False),
    ],
)
def test_invalid_configuration_raises(zoo, k, lenience, n_drafters, maxgram):
    model = zoo.model("llama", SMALL_VOCAB)
    rungs = [HFRung(model, f"r{i}") for i in range(n_drafters + 1)]
    with pytest.raises(ValueError):
        Cascade(rungs, MaxGram() if maxgram else None, k, lenience=lenience)


def test_valid_configurations_accepted(zoo):
    model = zoo.model("llama", SMALL_VOCAB)
    Cascade([HFRung(model, "t")], None, [])
    Cascade([HFRung(model, "t")], MaxGram(), [[0]])
    Cascade([HFRung(model, "t"), HFRung(model, "d")], MaxGram(), [[0, 0], [0, 0]], lenience=5)
    Cascade([HFRung(model, "t"), HFRung(model, "d")], None, [[3]], lenience=[1.0])


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


def test_min_confidence_shortens_drafts_but_not_output(zoo):
    """A drafter that stops after an unsure token proposes fewer tokens; the output stays the
    target's greedy decoding."""
    cascade, target = ladder(zoo, drafters=("far",), maxgram=True, k=[[6, 2], [0, 3]])
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    eager = list(cascade.generate(prompt, 24))
    wary = cascade.__class__(
        cascade.rungs, cascade.maxgram, cascade.k, min_confidence=[0.99], seed=0
    )
    careful = list(wary.generate(prompt, 24))

    def ids(events):
        return [t for e in events if isinstance(e, Commit) for t in e.tokens]

    def proposed(events):
        return sum(len(e.proposed) for e in events if isinstance(e, Review) and e.reviewer == 0)

    assert ids(careful) == ids(eager) == reference_greedy(target, prompt, 24)
    assert proposed(careful) < proposed(eager)
