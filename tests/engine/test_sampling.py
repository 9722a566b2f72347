"""Exact sampling through the cascade.

What the target accepts must follow the target's own sampling distribution (temperature, then
top-k, then top-p, as transformers' warpers define them), whatever drafts it. The main tests
enumerate that distribution exactly on tiny models (vocab 12): p(x1) p(x2 | x1) p(x3 | x1, x2)
..., then run the cascade many times and compare the joint laws of neighbouring pairs, the
marginal laws of the later tokens and the joint law of the first three.

The statistical check (``distribution_check`` in engine_helpers.py): Pearson chi-square goodness
of fit of the empirical counts against the exact probabilities, with cells whose expected count
is below 5 pooled into one cell, and an immediate failure if any run produced an outcome of exact
probability zero (outside top-k / top-p). The check passes when every p-value is above 1e-4
(at most 6 p-values per ladder, so a correct engine fails a ladder with probability < 6e-4).
Every generation is seeded (``generate(..., seed=1234 + i)`` for run i: the cascade reseeds its
torch.Generator for every generation), so the tests are deterministic; with a correct engine a
fresh seed would fail one chi-square check with probability 1e-4, so changes to how the engine
consumes random numbers will not make the suite flaky. The teeth tests run the same check, with
fewer runs, on deliberately wrong reviews; their p-values must sit below 1e-6, far under the
threshold. (A review that treats every proposal as one-hot is not among them: accepting x with
probability p(x) and otherwise drawing from p without x is lossless whatever x's real law, only
slower, and the check rightly passes it.)
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import (
    P_THRESHOLD,
    SMALL_VOCAB,
    ResampleFromP,
    cascade_of,
    chi_square_pvalue,
    distribution_check,
    hf_probs,
    ids_of,
    passes,
    spec_cascade,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from csdraft.engine import Draft, MaxGram, Sampling
from csdraft.engine.review import SamplingReview, lenient_output
from csdraft.trace import Review, Stats

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]  # repetitive, so Max-Gram proposes
RUNS = 1500  # per correct ladder
WRONG_RUNS = 600  # per deliberately wrong review


# ---------------------------------------------------------------------------------------------
# Sampling.probs against transformers' warpers


@settings(max_examples=150, deadline=None)
@given(
    vocab=st.integers(2, 40),
    rows=st.integers(1, 4),
    temperature=st.floats(0.05, 3.0),
    top_k=st.integers(0, 45),
    top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_probs_equal_transformers_warpers(vocab, rows, temperature, top_k, top_p, ties, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(rows, vocab, generator=gen)
    if ties:  # few distinct values: top-k and top-p must treat ties as transformers does
        logits = logits.round()
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    got = sampling.probs(logits)
    torch.testing.assert_close(got, hf_probs(sampling, logits), atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(rows), atol=1e-5, rtol=0)


def test_probs_greedy_is_softmax():
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    greedy = Sampling(temperature=0.0, top_k=2, top_p=0.5)
    assert greedy.greedy
    torch.testing.assert_close(greedy.probs(logits), torch.softmax(logits, -1))


# ---------------------------------------------------------------------------------------------
# lenient_output


def distributions(vocab: int, gen: torch.Generator, sparse: bool) -> torch.Tensor:
    x = torch.rand(vocab, generator=gen) ** 3
    if sparse:
        x[torch.rand(vocab, generator=gen) < 0.4] = 0
        x[int(torch.randint(vocab, (1,), generator=gen))] += 0.1
    return x / x.sum()


@settings(max_examples=100, deadline=None)
@given(
    vocab=st.integers(1, 30),
    lenience=st.floats(1.0, 10.0),
    sparse_p=st.booleans(),
    q_kind=st.sampled_from(["dense", "sparse", "one-hot", "equal"]),
    seed=st.integers(0, 2**16),
)
def test_lenient_output_is_a_distribution(vocab, lenience, sparse_p, q_kind, seed):
    gen = torch.Generator().manual_seed(seed)
    p = distributions(vocab, gen, sparse_p)
    if q_kind == "one-hot":
        q = torch.nn.functional.one_hot(torch.tensor(seed % vocab), vocab).float()
    elif q_kind == "equal":
        q = p.clone()
    else:
        q = distributions(vocab, gen, q_kind == "sparse")
    out = lenient_output(q, p, lenience)
    assert out.shape == p.shape
    assert (out >= 0).all()
    assert abs(float(out.sum()) - 1) < 1e-5
    torch.testing.assert_close(lenient_output(q, p, 1.0), p, atol=1e-6, rtol=0)
    # Batched rows give the same as one row at a time.
    batched = lenient_output(torch.stack([q, p]), torch.stack([p, q]), lenience)
    torch.testing.assert_close(batched[0], out)


def simulate_lenient(q, p, lenience, n, gen) -> torch.Tensor:
    """The lenient review done by hand, vectorised: x ~ q, keep it with probability
    min(1, l p(x) / q(x)), otherwise draw from normalise(max(0, p - q))."""
    x = torch.multinomial(q, n, replacement=True, generator=gen)
    keep = torch.rand(n, generator=gen) < (lenience * p[x] / q[x]).clamp(max=1)
    residual = (p - q).clamp_min(0)
    residual = residual / residual.sum() if residual.sum() > 0 else p
    y = torch.multinomial(residual, n, replacement=True, generator=gen)
    return torch.where(keep, x, y)


LENIENT_CASES = [
    ("dense q", 1.0, False, "dense"),
    ("dense q", 1.7, False, "dense"),
    ("dense q", 4.0, False, "dense"),
    ("sparse p and q", 2.5, True, "sparse"),
    ("one-hot q (Max-Gram)", 3.0, False, "one-hot"),
    ("one-hot q on p's zero", 3.0, True, "one-hot-zero"),
]


def lenient_case(lenience, sparse_p, q_kind, vocab=7, seed=11):
    gen = torch.Generator().manual_seed(seed)
    p = distributions(vocab, gen, sparse_p)
    if q_kind == "one-hot":
        q = torch.nn.functional.one_hot(p.argmax(), vocab).float()
    elif q_kind == "one-hot-zero":
        p[0] = 0
        p = p / p.sum()
        q = torch.nn.functional.one_hot(torch.tensor(0), vocab).float()
    else:
        q = distributions(vocab, gen, q_kind == "sparse")
    return p, q


@pytest.mark.parametrize("name, lenience, sparse_p, q_kind", LENIENT_CASES)
def test_lenient_output_matches_simulated_procedure(name, lenience, sparse_p, q_kind):
    p, q = lenient_case(lenience, sparse_p, q_kind)
    n = 200_000
    draws = simulate_lenient(q, p, lenience, n, torch.Generator().manual_seed(5))
    counts = torch.bincount(draws, minlength=len(p))
    want = lenient_output(q, p, lenience)
    assert chi_square_pvalue(counts, want) > P_THRESHOLD, (counts / n, want)
    assert (counts / n - want).abs().max() < 0.01
    if lenience > 1 and q_kind != "one-hot-zero":
        # Lenience really changes the output: it is not p any more (so p cannot be handed on).
        assert (want - p).abs().max() > 0.01


@pytest.mark.parametrize("name, lenience, sparse_p, q_kind", LENIENT_CASES)
def test_sampling_review_hands_on_what_it_outputs(name, lenience, sparse_p, q_kind):
    """Drive SamplingReview itself: the distribution it hands on for its output token must be
    the distribution that token really follows."""
    p, q = lenient_case(lenience, sparse_p, q_kind)
    gen = torch.Generator().manual_seed(9)
    review = SamplingReview(Sampling(temperature=1.0), gen)
    logits = torch.log(torch.stack([p, p]))  # softmax(log p) = p at both positions
    proposals = torch.multinomial(q, 6000, replacement=True, generator=gen).tolist()
    counts = torch.zeros(len(p))
    q_block = None if q_kind.startswith("one-hot") else q
    for x in proposals:
        verdict = review(logits, Draft([x], [2], [q_block]), lenience)
        out = x if verdict.accepted == 1 else verdict.token
        counts[out] += 1
        handed = verdict.q[0]
    torch.testing.assert_close(handed, lenient_output(q, p, lenience), atol=1e-6, rtol=0)
    assert chi_square_pvalue(counts, handed) > P_THRESHOLD, (counts / counts.sum(), handed)


# ---------------------------------------------------------------------------------------------
# The cascade's output distribution, exactly


LADDERS = {
    # target + one drafter: plain speculative sampling.
    "one drafter": dict(
        drafters=("far",), maxgram=False, k=[[2]], lenience=1.0,
        sampling=Sampling(1.0), max_new_tokens=3,
    ),
    # target + Max-Gram: one-hot proposals; top-k makes some of them impossible for the target.
    "max-gram, top-k": dict(
        drafters=(), maxgram=True, k=[[3]], lenience=1.0,
        sampling=Sampling(1.0, top_k=5), max_new_tokens=3,
    ),
    # Full cascade: two drafters + Max-Gram, lenient inner rungs, temperature, top-k and top-p.
    # max_new_tokens=4 lets every rung review a block of at least one proposal.
    "two drafters + max-gram, lenient, top-k, top-p": dict(
        drafters=("near", "qwen2"), maxgram=True, k=[[3, 1, 1], [0, 2, 1], [0, 0, 2]],
        lenience=[2.0, 4.0], sampling=Sampling(0.8, top_k=6, top_p=0.9), max_new_tokens=4,
    ),
    # A drafter of another architecture reviewing Max-Gram leniently, under top-p.
    "gpt2 drafter + max-gram, lenient, top-p": dict(
        drafters=("gpt2",), maxgram=True, k=[[2, 1], [0, 2]], lenience=3.0,
        sampling=Sampling(1.3, top_p=0.8), max_new_tokens=4,
    ),
}  # fmt: skip


def make_cascade(models, spec, seed):
    drafters = [models[name] for name in spec["drafters"]] + (
        [MaxGram()] if spec["maxgram"] else []
    )
    return spec_cascade(models, spec, drafters, seed)


@pytest.mark.parametrize("name", list(LADDERS))
def test_cascade_samples_the_target_distribution(sampling_models, name):
    spec = LADDERS[name]
    cascade = make_cascade(sampling_models, spec, seed=0)
    results, tv = distribution_check(
        cascade,
        sampling_models["target"],
        spec["sampling"],
        spec["max_new_tokens"],
        RUNS,
        PROMPT,
        seed=1234,
    )
    assert passes(results), f"{name}: chi-square p-values {results}, TV(x1,x2) {tv:.3f}"


# Deliberately wrong reviews: the same check must reject each of them.


class LenientTarget(SamplingReview):
    """Wrong: the target's review is lenient too."""

    def __call__(self, logits, draft, lenience):
        return super().__call__(logits, draft, 3.0 if lenience == 1 else lenience)


class HandsOnP(SamplingReview):
    """Wrong: a lenient inner review hands on p instead of the distribution it really output."""

    def __call__(self, logits, draft, lenience):
        verdict = super().__call__(logits, draft, lenience)
        if lenience > 1:
            p = self.sampling.probs(logits)
            verdict.q = [p[j] for j in range(verdict.accepted + 1)]
        return verdict


WRONG = {
    "resample from p": (ResampleFromP, "one drafter"),
    "lenient target": (LenientTarget, "one drafter"),
    "hands on p from lenient rungs": (HandsOnP, "two drafters + max-gram, lenient, top-k, top-p"),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_check_rejects_a_wrong_review(sampling_models, name):
    wrong, ladder = WRONG[name]
    spec = LADDERS[ladder]
    cascade = make_cascade(sampling_models, spec, seed=0)
    cascade.rule = wrong(cascade.sampling, cascade.generator)
    results, tv = distribution_check(
        cascade,
        sampling_models["target"],
        spec["sampling"],
        spec["max_new_tokens"],
        WRONG_RUNS,
        PROMPT,
        seed=1234,
    )
    assert not passes(results), f"{name} went unnoticed: p-values {results}, TV {tv:.3f}"
    assert min(results.values()) < 1e-6, results  # not a near miss


# ---------------------------------------------------------------------------------------------
# Seeds, temperature 0, stats


def test_same_seed_same_ids(sampling_models):
    spec = LADDERS["two drafters + max-gram, lenient, top-k, top-p"]
    runs = []
    for _ in range(2):
        cascade = make_cascade(sampling_models, spec, seed=7)
        runs.append([ids_of(cascade.generate(PROMPT, 16, seed=s)) for s in (None, 1, 2, None, 7)])
    assert runs[0] == runs[1]
    # Every generation reseeds: without a seed, from the cascade's own (7), so it repeats.
    assert runs[0][0] == runs[0][3] == runs[0][4]
    assert len({tuple(r) for r in runs[0]}) > 1  # other seeds give other samples
    others = {
        tuple(ids_of(make_cascade(sampling_models, spec, s).generate(PROMPT, 16))) for s in range(6)
    }
    assert len(others) > 1, "different seeds gave identical samples"


def test_temperature_zero_is_greedy(zoo):
    target = zoo.model("llama", SMALL_VOCAB)
    drafters = [zoo.noisy(target, 0.3), zoo.model("qwen2", SMALL_VOCAB, seed=7)]
    cascade = cascade_of(
        target,
        [*drafters, MaxGram()],
        [[3, 2, 1], [0, 2, 2], [0, 0, 3]],
        lenience=[2.0, 3.0],
        sampling=Sampling(temperature=0.0, top_k=3, top_p=0.5),
        seed=99,
    )
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    want = zoo.reference(target, prompt, 20)
    for seed in (None, 1, 2):
        got = ids_of(cascade.generate(prompt, 20, seed=seed))
        assert got == want, zoo.divergence(target, prompt, got, want)


@pytest.mark.parametrize("drafter, low, high", [("target", 0.99, 1.0), ("far", 0.05, 0.95)])
def test_stats_report_sampling_acceptance(sampling_models, drafter, low, high):
    cascade = cascade_of(
        sampling_models["target"], [sampling_models[drafter]], [[4]], sampling=Sampling(1.0)
    )
    events = []
    for seed in range(10):
        events += list(cascade.generate(PROMPT, 20, seed=3 + seed))
    stats = Stats.of(events)
    assert stats.new_tokens == 200
    assert stats.proposed[0] > 0
    assert low <= stats.acceptance(0) <= high
    assert stats.target_forwards == sum(isinstance(e, Review) and e.reviewer == 0 for e in events)
    assert stats.tokens_per_forward > 1
    reached, kept = stats.by_position[0]
    nonempty = sum(isinstance(e, Review) and e.reviewer == 0 and e.proposed != [] for e in events)
    assert reached == nonempty and 0 < kept <= reached
    summary = Stats.of(cascade.generate(PROMPT, 20)).as_dict()
    assert summary["new_tokens"] == 20
    assert low <= summary["reviews"]["target"]["acceptance"] <= high
    assert summary["reviews"]["target"]["proposed"] > 0
