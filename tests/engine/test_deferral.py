"""Speculative cascades' deferral rules: the pi each rule defines, and reviews that follow it.

The rules' formulas are checked against hand-computed values; the cascade's sampled first
tokens against the exact pi law enumerated on the sampling zoo's tiny models (vocab 12), with
the chi-square machinery of test_sampling.py; each rule's lossless end against today's lossless
review, seed for seed; and greedy ladders by property-based tests.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import (
    P_THRESHOLD,
    SMALL_VOCAB,
    cascade_of,
    chi_square_pvalue,
    divergence_report,
    ids_of,
    prompts,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from csdraft.engine import MaxGram, Sampling
from csdraft.engine.deferral import RULES, Deferral, parse
from csdraft.engine.review import SamplingReview

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]
RUNS = 500
WRONG_RUNS = 400
LOSSLESS_END = {
    "none": 0.0,
    "chow": 0.0,
    "diff": -1.0,
    "opt": -1.01,
    "v1": -1.0,
    "v2": -1e-6,
    "v3": -1e-6,
}


# ---------------------------------------------------------------------------------------------
# The formulas, by hand

Q = torch.tensor([0.6, 0.3, 0.1])
P = torch.tensor([0.2, 0.5, 0.3])


@pytest.mark.parametrize(
    "rule, alpha, want",
    [
        ("chow", 0.5, Q),  # max q 0.6 >= 0.5
        ("chow", 0.3, P),  # 0.6 < 0.7
        ("diff", 0.0, Q),  # 0.6 >= 0.5
        ("diff", -0.2, P),  # 0.6 < 0.7
        ("opt", -0.2, Q),  # TV 0.4: 0.6 >= 0.5 + 0.08
        ("opt", -0.3, P),  # 0.6 < 0.5 + 0.12
        ("v1", 0.0, torch.tensor([0.68, 0.2, 0.12])),  # A = {0}: [.6, 0, 0] + .4 p
        ("v2", 0.25, torch.tensor([0.12, 0.6, 0.28])),  # A = {1, 2}: [0, .3, .1] + .6 p
        ("v3", 0.3, torch.tensor([0.14, 0.65, 0.21])),  # A = {1}: [0, .3, 0] + .7 p
        ("none", 0.7, P),
    ],
)
def test_target_by_hand(rule, alpha, want):
    pi, pi_raw = Deferral(rule, alpha).target(Q, Q, P, P)
    torch.testing.assert_close(pi, want)
    torch.testing.assert_close(pi_raw, want)


def test_criteria_use_raw_mixtures_use_tempered():
    q_raw, p_raw = torch.tensor([0.9, 0.05, 0.05]), torch.tensor([0.3, 0.4, 0.3])
    q, p = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.5, 0.25])
    pi, pi_raw = Deferral("diff", 0.0).target(q, q_raw, p, p_raw)  # 0.9 >= 0.4 on raw
    torch.testing.assert_close(pi, q)
    torch.testing.assert_close(pi_raw, q_raw)
    # OPT's TV is on the tempered distributions: equal tempered q and p give TV 0, so OPT keeps
    # the drafter iff max q_raw >= max p_raw, whatever alpha.
    assert Deferral("opt", -5.0).keep_drafter(p, torch.tensor([0.5, 0.5, 0]), p, p_raw).item()
    # V1's set is judged on raw q, its mixture uses tempered q: A = {0} here.
    pi, _ = Deferral("v1", 0.0).target(q, q_raw, p, p_raw)
    torch.testing.assert_close(pi, q * torch.tensor([1.0, 0, 0]) + 0.5 * p)


def test_diff_is_lossy_between_minus_one_and_zero():
    """Diff at alpha = -0.5 still keeps a drafter that is far surer than the reviewer."""
    q, p = torch.tensor([0.9, 0.05, 0.05]), torch.tensor([0.3, 0.35, 0.35])  # 0.9 >= 0.85
    assert not Deferral("diff", -0.5).lossless
    torch.testing.assert_close(Deferral("diff", -0.5).target(q, q, p, p)[0], q)


def distributions(draw, vocab):
    x = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=vocab, max_size=vocab))) ** 3
    x[draw(st.integers(0, vocab - 1))] += 1e-3
    return x / x.sum()


@settings(max_examples=200, deadline=None)
@given(data=st.data(), vocab=st.integers(2, 8), rule=st.sampled_from(list(RULES)))
def test_pi_is_a_distribution_and_lossless_at_its_end(data, vocab, rule):
    q, p = distributions(data.draw, vocab), distributions(data.draw, vocab)
    alpha = data.draw(st.floats(-2, 2))
    pi, pi_raw = Deferral(rule, alpha).target(q, q, p, p)
    assert (pi >= 0).all() and abs(float(pi.sum()) - 1) < 1e-5
    end = Deferral(rule, LOSSLESS_END[rule])
    assert end.lossless
    if rule in ("diff", "opt"):  # the formula itself keeps no q but one p rounds to
        keep = end.keep_drafter(q, q, p, p).item()
        assert not keep or (q - p).abs().sum() < 1e-5
    elif rule in ("v1", "v2", "v3"):
        assert not end.accepted_set(q, p).any()


def test_chow_at_zero_never_keeps_even_a_saturated_drafter():
    q = torch.tensor([1.0, 0.0])  # float32 softmax can round to exactly 1
    p = torch.tensor([0.5, 0.5])
    assert Deferral("chow", 1e-9).keep_drafter(q, q, p, p).item()  # the formula would keep it
    torch.testing.assert_close(Deferral("chow", 0.0).target(q, q, p, p)[0], p)


def test_parse_and_refusals():
    assert parse("opt@0.1") == Deferral("opt", 0.1)
    assert parse("none") == Deferral("none", 0.0)
    with pytest.raises(ValueError, match="unknown deferral rule"):
        parse("best@0.1")
    with pytest.raises(ValueError, match="finite"):
        Deferral("chow", float("nan"))
    with pytest.raises(ValueError, match="bad deferral"):
        parse("opt@x")


@torch.inference_mode()
def rows(model, contexts, sampling):
    """(tempered, raw) next-token distributions of ``model`` after each context."""
    logits = model(torch.tensor(contexts)).logits[:, -1].float()
    return sampling.probs(logits), torch.softmax(logits, -1)


def pi_rows(target, drafter, contexts, sampling, deferral, below=None, inner=None):
    """pi at the target for each context, the drafter proposing; with ``below``, the drafter
    itself reviews ``below``'s proposals under ``inner`` (its output law is its own pi)."""
    q, q_raw = rows(drafter, contexts, sampling)
    if below is not None:
        b, b_raw = rows(below, contexts, sampling)
        q, q_raw = (inner or Deferral("none")).target(b, b_raw, q, q_raw)
    p, p_raw = rows(target, contexts, sampling)
    return deferral.target(q, q_raw, p, p_raw)[0].double()


def first_tokens(cascade, n, runs, max_new_tokens, seed=1234):
    """The first ``n`` tokens of ``runs`` seeded generations, one row each (a generation
    stops once it has them; ``max_new_tokens`` sets how long the blocks are)."""
    out = [
        ids_of(cascade.generate(PROMPT, max_new_tokens, stop=stop_after(n), seed=seed + i))
        for i in range(runs)
    ]
    return torch.tensor([ids[:n] for ids in out])


def stop_after(n: int):
    """A stop check that ends a generation once it has ``n`` tokens."""
    got: list[int] = []

    def stop(tokens: list[int]) -> int | None:
        got.extend(tokens)
        return len(tokens) - (len(got) - n) if len(got) >= n else None

    return stop


def pair_law(target, drafter, sampling, deferral):
    """Exact law of (x1, x2) with one drafter proposing both (its block holds two tokens)."""
    v = target.config.vocab_size
    first = pi_rows(target, drafter, [PROMPT], sampling, deferral)[0]
    second = pi_rows(target, drafter, [PROMPT + [x] for x in range(v)], sampling, deferral)
    return first[:, None] * second


def pair_pvalue(cascade, law, runs):
    v = law.shape[0]
    draws = first_tokens(cascade, 2, runs, max_new_tokens=3)
    counts = torch.bincount(draws[:, 0] * v + draws[:, 1], minlength=v * v)
    return chi_square_pvalue(counts, law)


TWO_MODEL = [
    (Deferral("chow", 0.55), Sampling(1.0)),
    (Deferral("diff", 0.05), Sampling(0.8, top_k=6)),
    (Deferral("opt", 0.3), Sampling(1.3, top_p=0.8)),
    (Deferral("v1", 0.2), Sampling(1.0)),
    (Deferral("v2", 0.15), Sampling(0.9, top_k=6, top_p=0.9)),
    (Deferral("v3", 0.4), Sampling(1.0, top_p=0.9)),
]


@pytest.mark.parametrize("deferral, sampling", TWO_MODEL, ids=[str(d) for d, _ in TWO_MODEL])
def test_two_models_sample_pi(sampling_models, deferral, sampling):
    target, far = sampling_models["target"], sampling_models["far"]
    law = pair_law(target, far, sampling, deferral)
    lossless = pair_law(target, far, sampling, Deferral("none"))
    assert (law - lossless).abs().sum() > 0.05, "this case cannot tell pi from p"
    cascade = cascade_of(target, [far], [[2]], sampling=sampling, deferral=deferral)
    assert not cascade.lossless
    assert pair_pvalue(cascade, law, RUNS) > P_THRESHOLD


THREE_RUNG = [
    (Deferral("diff", 0.1), Deferral("v2", 0.2), Sampling(1.0)),
    (Deferral("opt", 0.5), None, Sampling(0.8, top_k=6)),
    (None, Deferral("chow", 0.6), Sampling(1.2, top_p=0.9)),
]


@pytest.mark.parametrize("outer, inner, sampling", THREE_RUNG)
def test_three_rungs_sample_pi_of_pi(sampling_models, outer, inner, sampling):
    """target <- far <- qwen2: the middle rung's output follows its own pi, which it hands on
    (tempered and raw) as the proposals' distributions the target judges."""
    m = sampling_models
    law = pi_rows(
        m["target"], m["far"], [PROMPT], sampling, outer or Deferral("none"), m["qwen2"], inner
    )[0]
    cascade = cascade_of(
        m["target"],
        [m["far"], m["qwen2"]],
        [[2, 0], [0, 2]],
        sampling=sampling,
        deferral=[outer, inner],
    )
    draws = first_tokens(cascade, 1, RUNS, max_new_tokens=4)[:, 0]
    counts = torch.bincount(draws, minlength=law.shape[0])
    assert chi_square_pvalue(counts, law) > P_THRESHOLD, (counts / RUNS, law)


class AcceptsAgainstP(SamplingReview):
    """Wrong: ignores the deferral rule (lossless speculative sampling against p)."""

    def __call__(self, logits, draft, lenience, deferral=None, hand_on_raw=False):
        return super().__call__(logits, draft, lenience, None, hand_on_raw)


def test_check_rejects_a_review_against_p(sampling_models):
    target, far = sampling_models["target"], sampling_models["far"]
    sampling, deferral = Sampling(1.0), Deferral("chow", 0.55)
    cascade = cascade_of(target, [far], [[2]], sampling=sampling, deferral=deferral)
    cascade.rule = AcceptsAgainstP(cascade.sampling, cascade.generator)
    pvalue = pair_pvalue(cascade, pair_law(target, far, sampling, deferral), WRONG_RUNS)
    assert pvalue < 1e-6, pvalue


@pytest.mark.parametrize("rule", list(RULES))
def test_lossless_end_reproduces_the_lossless_cascade(sampling_models, rule):
    """At its lossless end every rule is today's review, seed for seed (Max-Gram included)."""
    m = sampling_models
    spec = dict(k=[[2, 1], [0, 2]], sampling=Sampling(0.9, top_k=8), seed=3)
    drafters = [m["far"], MaxGram()]
    end = Deferral(rule, LOSSLESS_END[rule])
    lossy = cascade_of(m["target"], drafters, deferral=[end, end], **spec)
    lossless = cascade_of(m["target"], drafters, **spec)
    assert lossy.lossless
    for seed in range(3):
        assert ids_of(lossy.generate(PROMPT, 12, seed=seed)) == ids_of(
            lossless.generate(PROMPT, 12, seed=seed)
        )


# ---------------------------------------------------------------------------------------------
# Greedy


@settings(max_examples=12, deadline=None)
@given(data=st.data(), rule=st.sampled_from(list(RULES)))
def test_greedy_lossless_end_is_the_target(zoo, data, rule):
    target = zoo.model("llama", SMALL_VOCAB)
    drafter = zoo.noisy(target, 0.3)
    prompt = data.draw(prompts(SMALL_VOCAB))
    end = Deferral(rule, LOSSLESS_END[rule])
    cascade = cascade_of(target, [drafter, MaxGram()], [[2, 1], [0, 2]], deferral=[end, end])
    got = ids_of(cascade.generate(prompt, 12))
    want = zoo.reference(target, prompt, 12)
    assert got == want, divergence_report(target, prompt, got, want)


@settings(max_examples=12, deadline=None)
@given(data=st.data(), rule=st.sampled_from(list(RULES)), alpha=st.floats(-2, 2))
def test_greedy_max_gram_guesses_are_always_deferred(zoo, data, rule, alpha):
    target = zoo.model("llama", SMALL_VOCAB)
    prompt = data.draw(prompts(SMALL_VOCAB))
    cascade = cascade_of(target, [MaxGram()], [[3]], deferral=Deferral(rule, alpha))
    got = ids_of(cascade.generate(prompt, 12))
    want = zoo.reference(target, prompt, 12)
    assert got == want, divergence_report(target, prompt, got, want)


def test_greedy_lossy_keeps_the_drafters_argmax(zoo):
    """Chow at alpha = 1 keeps every neural proposal: the output is the drafter's greedy one."""
    target = zoo.model("llama", SMALL_VOCAB)
    drafter = zoo.model("qwen2", SMALL_VOCAB, seed=7)
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    cascade = cascade_of(target, [drafter], [[3]], deferral=Deferral("chow", 1.0))
    got = ids_of(cascade.generate(prompt, 12))
    # Each block of 3 kept drafts plus the target's own token after it.
    ref = cascade_of(drafter, [], [])
    assert got[:3] == ids_of(ref.generate(prompt, 3))
    assert got != zoo.reference(target, prompt, 12)


@settings(max_examples=10, deadline=None)
@given(data=st.data(), alpha=st.floats(-0.5, 0.9), k=st.integers(1, 4))
def test_greedy_opt_and_v1_decide_as_diff(zoo, data, alpha, k):
    """At temperature 0 the tempered q and p are one-hot: OPT's TV is 1 wherever the argmaxes
    differ and V1's set holds the drafted token iff max q >= max p - alpha, so both give Diff's
    output (why `tune deferral` sweeps chow, diff, v2 and v3 only)."""
    target = zoo.model("llama", SMALL_VOCAB)
    drafter = zoo.noisy(target, 0.5)
    prompt = data.draw(prompts(SMALL_VOCAB))
    outputs = {
        rule: ids_of(cascade_of(target, [drafter], [[k]], deferral=Deferral(rule, alpha))
                     .generate(prompt, 16))
        for rule in ("diff", "opt", "v1")
    }  # fmt: skip
    assert outputs["opt"] == outputs["diff"] == outputs["v1"]
