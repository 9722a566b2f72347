"""A new drafting strategy is one class: a toy proposer, written here whole, drafts in ladders
beside neural drafters and Max-Gram, and the output stays exactly the target's.

``RepeatLast`` proposes the last token of the context again and again: deterministic, no
probabilities, no model. The greedy property test of engine/test_cascade.py runs again with it
inserted anywhere in random ladders (above, between or below neural drafters and Max-Gram,
coming up short or not); the sampling check compares the first two tokens of ladders holding it
with the target's exact sampling law, and shows the check would catch a wrong review there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from engine_helpers import (
    SMALL_VOCAB,
    TARGETS,
    ResampleFromP,
    cascade_of,
    cases,
    distribution_check,
    drafter_of,
    ids_of,
    passes,
    run_greedy_case,
    spec_cascade,
    target_of,
)
from hypothesis import HealthCheck, given, settings

from csdraft.engine import Draft, MaxGram, Proposer, Sampling
from csdraft.engine.proposer import Engine
from csdraft.trace import Commit, Review, Stats
from csdraft.viz import rung_style

pytestmark = pytest.mark.usefixtures("one_thread")


class RepeatLast(Proposer):
    """Drafts the last token of the context, repeated: right whenever the text stutters.

    All a proposer needs is ``propose``; ``reset`` and ``commit`` are for state kept across a
    generation (here only to check that the cascade reports the prompt and every commit)."""

    name = "repeat-last"
    kind = "statistical"  # no neural network: the live view, tune and bench cost it as cheap

    def __init__(self, most: int | None = None) -> None:
        self.most = most  # at most this many tokens a call; fewer than asked ends the block
        self.committed: list[int] = []
        self.calls = 0

    def reset(self, prompt: Sequence[int]) -> None:
        self.committed = [int(t) for t in prompt]

    def commit(self, tokens: Sequence[int]) -> None:
        self.committed += [int(t) for t in tokens]

    def propose(self, context: np.ndarray, n: int, engine: Engine) -> Draft:
        assert context[: len(self.committed)].tolist() == self.committed
        self.calls += 1
        return self.draft([int(context[-1])] * min(n, self.most or n))


def toy(case) -> RepeatLast:
    return RepeatLast(case.toy_most)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases(toy=True))
def test_cascade_with_toy_equals_target_greedy(zoo, case):
    run_greedy_case(zoo, case, toy)


KEY = TARGETS[0]  # llama, SMALL_VOCAB
STUTTER = [5, 5, 5, 9, 9, 9, 2, 2, 2, 7, 7, 7, 7]


def generate(cascade, prompt, n=24):
    events = list(cascade.generate(prompt, n))
    return events, ids_of(events)


def reviews(events, reviewer):
    return [e for e in events if isinstance(e, Review) and e.reviewer == reviewer]


@pytest.mark.parametrize("prompt", [STUTTER, [3, 1, 4, 1, 5, 9, 2, 6]])
def test_toy_alone_under_the_target(zoo, prompt):
    target = target_of(zoo, KEY)
    rl = RepeatLast()
    events, got = generate(cascade_of(target, [rl], [[4]]), prompt)
    want = zoo.reference(target, prompt, 24)
    assert got == want, zoo.divergence(target, prompt, got, want)
    assert rl.calls == len(reviews(events, 0)) - 1  # every target review but the last (1 token)
    assert all(set(e.origins) == {1} for e in reviews(events, 0) if e.proposed)
    stats = Stats.of(events)
    assert stats.rungs == ["target", "repeat-last"]
    assert stats.kinds == ["target", "statistical"]
    assert rung_style(1, stats.kinds) == "magenta"
    repeats = sum(a == b for a, b in zip([prompt[-1], *want], want, strict=False))
    assert stats.drafted.get(1, 0) <= repeats  # only a repeat can be a kept toy token


def test_toy_between_a_drafter_and_maxgram(zoo):
    target, near = target_of(zoo, KEY), drafter_of(zoo, KEY, "near")
    rl = RepeatLast()
    seed = [2, 7, 1, 8]
    prompt = seed + zoo.reference(target, seed, 24) + seed  # Max-Gram finds the continuation
    k = [[5, 2, 3], [0, 2, 2], [0, 0, 2]]  # the drafter's blocks: 2 toy, then 2 Max-Gram
    events, got = generate(cascade_of(target, [near, rl, MaxGram()], k), prompt)
    want = zoo.reference(target, prompt, 24)
    assert got == want, zoo.divergence(target, prompt, got, want)
    assert rl.calls > 0
    # The drafter reviews the toy's and Max-Gram's tokens; the target sees all three rungs.
    assert {2, 3} <= {o for e in reviews(events, 1) for o in e.origins}
    assert {1, 2, 3} <= {o for e in reviews(events, 0) for o in e.origins}
    assert Stats.of(events).kinds == ["target", "model", "statistical", "statistical"]


def test_toy_below_a_drafter(zoo):
    """The drafter writes its segments by reviewing the toy's (vertical cascade)."""
    target, far = target_of(zoo, KEY), drafter_of(zoo, KEY, "far")
    rl = RepeatLast()
    events, got = generate(cascade_of(target, [far, rl], [[4, 0], [0, 3]]), STUTTER)
    want = zoo.reference(target, STUTTER, 24)
    assert got == want, zoo.divergence(target, STUTTER, got, want)
    inner = reviews(events, 1)
    assert inner and all(set(e.origins) <= {2} for e in inner)
    assert any(e.proposed for e in inner)
    # k[0] asks rung 1 alone: its segments end with its own token and may hold kept toy tokens.
    outer = [e for e in reviews(events, 0) if e.proposed]
    assert all(set(e.origins) <= {1, 2} and e.origins[-1] == 1 for e in outer)


def test_a_short_proposal_ends_the_block(zoo):
    """A toy that drafts one token where three are asked: Max-Gram, after it, is never asked."""
    target = target_of(zoo, KEY)
    rl = RepeatLast(most=1)
    prompt = [4, 5, 6, 4, 5, 6, 4, 5, 6]
    events, got = generate(cascade_of(target, [rl, MaxGram()], [[3, 3], [0, 3]]), prompt)
    assert got == zoo.reference(target, prompt, 24)
    assert all(e.origins == [1] for e in reviews(events, 0)[:-1])  # one toy token, nothing more
    assert Stats.of(events).proposed[0] == rl.calls


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("eos_at", [None, 2, 9])
def test_toy_ladders_stop_at_eos_like_the_target(zoo, arch, eos_at):
    key = next(t for t in TARGETS if t[0] == arch and t[1] == SMALL_VOCAB)
    target, near = target_of(zoo, key), drafter_of(zoo, key, "near")
    plain = zoo.reference(target, STUTTER, 20)
    eos = None if eos_at is None else plain[eos_at]
    want = zoo.reference(target, STUTTER, 20, eos_id=eos)
    k = [[2, 3, 0], [0, 0, 2], [0, 0, 4]]
    cascade = cascade_of(target, [near, RepeatLast(2), MaxGram()], k, lenience=3.0)
    events = list(cascade.generate(STUTTER, 20, eos_ids=() if eos is None else (eos,)))
    assert ids_of(events) == want, zoo.divergence(target, STUTTER, ids_of(events), want)
    assert events[-1].reason == ("length" if eos is None else "eos")
    assert (
        Stats.of(events).new_tokens
        == len(want)
        == sum(len(e.tokens) for e in events if isinstance(e, Commit))
    )


# ---------------------------------------------------------------------------------------------
# Sampling: ladders with the toy follow the target's exact law (first two tokens)

PROMPT = [1, 1, 1, 1, 1]  # the target gives 1 again probability 0.46: the toy is often kept
RUNS = 1500
WRONG_RUNS = 600

TOY_LADDERS = {
    "toy alone": dict(
        drafters=("toy",), k=[[2]], lenience=1.0, sampling=Sampling(1.0), max_new_tokens=2
    ),
    # Three tokens: the drafter's first segment (2 tokens) reviews a toy token.
    "lenient drafter over the toy, then max-gram, top-k": dict(
        drafters=("far", "toy", "max-gram"),
        k=[[2, 0, 1], [0, 1, 1], [0, 0, 1]],
        lenience=3.0,
        sampling=Sampling(0.9, top_k=6),
        max_new_tokens=3,
    ),
}


def toy_cascade(models, spec, seed=0):
    drafters = [
        RepeatLast() if d == "toy" else MaxGram() if d == "max-gram" else models[d]
        for d in spec["drafters"]
    ]
    return spec_cascade(models, spec, drafters, seed)


@pytest.mark.parametrize("name", list(TOY_LADDERS))
def test_toy_ladder_samples_the_target_distribution(sampling_models, name):
    spec = TOY_LADDERS[name]
    cascade = toy_cascade(sampling_models, spec)
    target = sampling_models["target"]
    n = spec["max_new_tokens"]
    results, tv = distribution_check(cascade, target, spec["sampling"], n, RUNS, PROMPT)
    assert passes(results), f"{name}: chi-square p-values {results}, TV(x1,x2) {tv:.3f}"
    # The toy drafted in the very first block, and its tokens are kept.
    toy_index = spec["drafters"].index("toy") + 1
    first = [
        next(e for e in cascade.generate(PROMPT, n, seed=s) if isinstance(e, Review))
        for s in range(40)
    ]
    assert all(e.origins[:1] == [toy_index] for e in first)
    assert any(e.accepted for e in first)


def test_check_rejects_a_wrong_review_of_toy_drafts(sampling_models):
    """The check has teeth on a toy ladder too: resampling from p after refusing the toy's
    one-hot proposal over-weights the proposed token."""
    spec = TOY_LADDERS["toy alone"]
    cascade = toy_cascade(sampling_models, spec)
    cascade.rule = ResampleFromP(cascade.sampling, cascade.generator)
    target = sampling_models["target"]
    results, tv = distribution_check(cascade, target, spec["sampling"], 2, WRONG_RUNS, PROMPT)
    assert not passes(results), f"went unnoticed: p-values {results}, TV {tv:.3f}"
    assert min(results.values()) < 1e-6, results
