"""A drafter's prompt window: a drafter may see only the last N prompt tokens (a cheaper pass
over a long prompt). Its drafts change; the cascade's output must not, greedy or sampled."""

from __future__ import annotations

import pytest
from engine_helpers import (
    TARGETS,
    cascade_of,
    distribution_check,
    drafter_of,
    ids_of,
    passes,
    target_of,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csdraft.engine import Cascade, MaxGram, Sampling

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [5, 9, 2, 7, 5, 9, 2, 7, 3, 1, 4, 1, 5, 9, 2, 6]
SAMPLING_PROMPT = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]


def with_window(cascade: Cascade, window: int) -> Cascade:
    """The same cascade with every neural drafter seeing the last ``window`` prompt tokens."""
    for rung in cascade.rungs[1:]:
        if hasattr(rung, "window"):
            rung.window = window
    return cascade


class Recording:
    """A scorer that records the length of every sequence it is asked to score."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.lengths: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, seq, start):
        self.lengths.append(len(seq))
        return self.inner.score(seq, start)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(TARGETS),
    window=st.integers(1, len(PROMPT) + 2),
    maxgram=st.booleans(),
    prompt_len=st.integers(1, len(PROMPT)),
)
def test_windowed_drafters_keep_the_targets_greedy_output(zoo, key, window, maxgram, prompt_len):
    target = target_of(zoo, key)
    drafters = [drafter_of(zoo, key, "near"), drafter_of(zoo, key, "far")]
    k = [[3, 2, 1], [0, 2, 1], [0, 0, 2]] if maxgram else [[3, 2], [0, 2]]
    cascade = with_window(
        cascade_of(target, [*drafters, *([MaxGram()] if maxgram else [])], k), window
    )
    prompt = PROMPT[:prompt_len]
    assert ids_of(cascade.generate(prompt, 20)) == zoo.reference(target, prompt, 20)


def test_a_windowed_drafter_sees_only_the_last_prompt_tokens(zoo):
    key = TARGETS[0]
    target = target_of(zoo, key)
    cascade = with_window(cascade_of(target, [drafter_of(zoo, key, "near")], [[4]]), 5)
    drafter = cascade.rungs[1]
    drafter.scorer = Recording(drafter.scorer)
    events = list(cascade.generate(PROMPT, 12))
    assert ids_of(events) == zoo.reference(target, PROMPT, 12)
    assert drafter.scorer.lengths[0] == 5  # its first pass: the prompt's last 5 tokens
    # later passes: the window plus what came after the prompt, never the whole prompt
    assert max(drafter.scorer.lengths) <= 5 + 12 + 4


def test_windowed_drafter_samples_the_target_distribution(sampling_models):
    sampling = Sampling(1.0)
    cascade = with_window(
        cascade_of(
            sampling_models["target"],
            [sampling_models["near"], sampling_models["far"]],
            [[2, 1], [0, 2]],
            sampling=sampling,
        ),
        3,
    )
    results, tv = distribution_check(
        cascade, sampling_models["target"], sampling, 3, 1000, SAMPLING_PROMPT
    )
    assert passes(results), f"chi-square p-values {results}, TV(x1,x2) {tv:.3f}"
