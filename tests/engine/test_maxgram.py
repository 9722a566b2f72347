"""Max-Gram: longest earlier match, prompt first, bigram fallback, incremental index, and Max-Gram
as a ``Proposer`` (drafts, reset and commit as the cascade calls them).

The property tests compare against a brute-force oracle written from the documented rules:
the longest suffix (max_ngram down to min_ngram) that occurred earlier with a continuation;
among its occurrences, one whose continuation lies in the prompt wins (the earliest of them),
otherwise the most recent; proposals copy what followed the match and match again once the copy
runs out; with no match, the bigram table proposes one token.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from csdraft.engine import Draft, MaxGram, Proposer, learn_bigram


def oracle_match(tokens, prompt_len, suffix, max_ngram, min_ngram):
    """End position of the chosen earlier occurrence of the longest matching suffix."""
    for n in range(min(max_ngram, len(suffix)), min_ngram - 1, -1):
        key = list(suffix[len(suffix) - n :])
        ends = [e for e in range(n - 1, len(tokens) - 1) if tokens[e - n + 1 : e + 1] == key]
        if ends:
            in_prompt = [e for e in ends if e < prompt_len - 1]
            return in_prompt[0] if in_prompt else ends[-1]
    return None


def oracle_propose(tokens, prompt_len, context, n, max_ngram, min_ngram, bigram):
    tail = list(context)
    out: list[int] = []
    while len(out) < n:
        end = oracle_match(tokens, prompt_len, tail, max_ngram, min_ngram)
        if end is not None:
            run = tokens[end + 1 : end + 1 + n - len(out)]
        elif tail and tail[-1] in bigram:
            run = [bigram[tail[-1]]]
        else:
            break
        out += run
        tail += run
    return out


def oracle_index(tokens, prompt_len, max_ngram):
    """Every n-gram with a continuation, mapped to the end of its chosen occurrence."""
    index = {}
    for end in range(len(tokens) - 1):
        for n in range(1, min(max_ngram, end + 1) + 1):
            key = tuple(tokens[end - n + 1 : end + 1])
            index.setdefault(key, [])
            index[key].append(end)
    chosen = {}
    for key, ends in index.items():
        in_prompt = [e for e in ends if e < prompt_len - 1]
        chosen[key] = in_prompt[0] if in_prompt else ends[-1]
    return chosen


def test_proposes_what_followed_the_longest_match():
    # "1 2 3" occurred before, followed by 9 4; "2 3" alone occurred first, followed by 7.
    prompt = [5, 2, 3, 7, 1, 2, 3, 9, 4, 6, 1, 2, 3]
    mg = MaxGram(max_ngram=4)
    mg.reset(prompt)
    assert mg.continuation(prompt, 2) == [9, 4]
    short = MaxGram(max_ngram=2)  # cannot see the 3-gram: the first "2 3" wins
    short.reset(prompt)
    assert short.continuation(prompt, 2) == [7, 1]


def test_min_ngram_ignores_short_matches():
    prompt = [1, 2, 8, 3, 4, 2]
    mg = MaxGram(max_ngram=3, min_ngram=2)
    mg.reset(prompt)
    assert mg.continuation(prompt, 3) == []  # only the 1-gram "2" matches
    assert MaxGram(max_ngram=3, min_ngram=1, bigram=None).continuation([], 3) == []
    loose = MaxGram(max_ngram=3, min_ngram=1)
    loose.reset(prompt)
    assert loose.continuation(prompt, 3)[:1] == [8]


def test_copy_continues_past_the_match_and_rematches():
    prompt = [1, 2, 3, 4, 5, 1, 2]
    mg = MaxGram()
    mg.reset(prompt)
    # Copies 3 4 5 1 2 (up to the end of the context), then matches "1 2" again: 3 4 ...
    assert mg.continuation(prompt, 9) == [3, 4, 5, 1, 2, 3, 4, 5, 1]


def test_prompt_match_beats_generated_match():
    prompt = [0, 1, 2, 7]
    generated = [0, 1, 2, 8, 0, 1, 2, 9, 5, 0, 1, 2]
    mg = MaxGram()
    mg.reset(prompt)
    mg.extend(generated)
    # "0 1 2" is the longest match; its more recent generated occurrences lose to the prompt's.
    assert mg.continuation(prompt + generated, 1) == [7]


def test_longer_generated_match_beats_shorter_prompt_match():
    prompt = [1, 2, 7, 0]
    generated = [1, 2, 8, 0, 1, 2, 9, 0, 1, 2]
    mg = MaxGram()
    mg.reset(prompt)
    mg.extend(generated)
    # The prompt has "1 2" but the generated text has the longer "0 1 2" (then 8, then 9).
    assert mg.continuation(prompt + generated, 1) == [9]


def test_most_recent_generated_match_wins():
    prompt = [4, 4]
    mg = MaxGram()
    mg.reset(prompt)
    generated = [1, 2, 8, 0, 1, 2, 9, 0, 1, 2]
    mg.extend(generated)
    assert mg.continuation(prompt + generated, 1) == [9]


def test_prompt_continuation_into_generated_text_is_a_generated_match():
    # The only "3" in the prompt is its last token: what followed it was generated.
    prompt = [1, 2, 3]
    mg = MaxGram()
    mg.reset(prompt)
    mg.extend([5, 3, 6, 3])
    assert mg.continuation(prompt + [5, 3, 6, 3], 1) == [6]


def test_no_match_and_no_bigram_proposes_nothing():
    prompt = [1, 2, 3, 4]
    mg = MaxGram()
    mg.reset(prompt)
    assert mg.continuation(prompt, 5) == []
    assert mg.continuation(prompt + [42], 5) == []  # uncommitted context token, never seen


def test_bigram_fallback():
    prompt = [1, 2, 3, 4]
    mg = MaxGram(bigram={4: 10, 10: 11, 11: 2})
    mg.reset(prompt)
    # No match for 4, 10 or 11: the bigram chain proposes them; "2" then matches the prompt.
    assert mg.continuation(prompt, 6) == [10, 11, 2, 3, 4, 10]
    assert mg.continuation(prompt, 2) == [10, 11]
    assert MaxGram(bigram={7: 8}).continuation([7], 3) == [8]  # works on an empty index too


def test_learn_bigram():
    table = learn_bigram([[1, 2, 1, 2, 1, 3], [3, 4], [5], [], np.array([3, 4, 3, 5, 3, 4])])
    assert table == {1: 2, 2: 1, 3: 4, 4: 3, 5: 3}
    assert learn_bigram([]) == {}
    assert learn_bigram([[9]]) == {}
    # Counts add up across texts.
    assert learn_bigram([[0, 1], [0, 2], [0, 2]]) == {0: 2}


def test_reset_forgets_the_previous_context():
    mg = MaxGram()
    mg.reset([1, 2, 3, 1, 2, 3])
    mg.extend([1, 2])
    mg.reset([7, 8, 9])
    fresh = MaxGram()
    fresh.reset([7, 8, 9])
    assert mg._index == fresh._index and mg.tokens == fresh.tokens
    assert mg.continuation([7, 8, 9, 1, 2], 3) == []


small_tokens = st.lists(st.integers(0, 5), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    prompt=st.lists(st.integers(0, 5), min_size=1, max_size=25),
    generated=small_tokens,
    max_ngram=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 40), max_size=5),
)
def test_incremental_extension_builds_the_same_index(prompt, generated, max_ngram, cuts):
    whole = MaxGram(max_ngram=max_ngram)
    whole.reset(prompt)
    whole.extend(generated)
    pieces = MaxGram(max_ngram=max_ngram)
    pieces.reset(prompt)
    bounds = [0, *sorted(c for c in cuts if c <= len(generated)), len(generated)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        pieces.extend(np.asarray(generated[a:b], dtype=np.int64))  # any iterable of ids
    single = MaxGram(max_ngram=max_ngram)
    single.reset(prompt)
    for t in generated:
        single.extend([t])
    assert whole.tokens == pieces.tokens == single.tokens == prompt + generated
    assert whole._index == pieces._index == single._index
    assert whole._index == oracle_index(prompt + generated, len(prompt), max_ngram)


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.lists(st.integers(0, 5), min_size=1, max_size=25),
    generated=small_tokens,
    pending=st.lists(st.integers(0, 6), max_size=4),
    n=st.integers(0, 12),
    max_ngram=st.integers(1, 5),
    min_ngram=st.integers(1, 5),
    bigram=st.dictionaries(st.integers(0, 6), st.integers(0, 6), max_size=4),
)
def test_propose_matches_the_oracle(prompt, generated, pending, n, max_ngram, min_ngram, bigram):
    min_ngram = min(min_ngram, max_ngram)
    mg = MaxGram(max_ngram=max_ngram, min_ngram=min_ngram, bigram=dict(bigram))
    mg.reset(prompt)
    mg.extend(generated)
    committed = prompt + generated
    context = np.asarray(committed + pending, dtype=np.int64)  # pending: drafted, not committed
    got = mg.continuation(context, n)
    draft = mg.propose(context, n, None)  # the Proposer face gives the same tokens
    assert isinstance(draft, Draft) and draft.tokens == got
    assert len(got) <= n
    assert all(isinstance(t, int) for t in got)
    want = oracle_propose(
        committed, len(prompt), committed + pending, n, max_ngram, min_ngram, bigram
    )
    assert got == want
    # Proposing does not change the index.
    assert mg.tokens == committed
    assert mg.continuation(list(context), n) == got


# ---------------------------------------------------------------------------------------------
# Max-Gram as a proposer


def test_maxgram_is_a_statistical_proposer():
    mg = MaxGram()
    assert isinstance(mg, Proposer)
    assert mg.name == "max-gram"
    assert mg.kind == "statistical" and not mg.neural


def test_propose_gives_a_deterministic_chain_from_its_rung():
    prompt = [1, 2, 3, 4, 5, 1, 2]
    mg = MaxGram()
    mg.index = 3  # the cascade numbers its rungs
    mg.reset(prompt)
    draft = mg.propose(np.asarray(prompt, dtype=np.int64), 4, None)
    assert draft.tokens == [3, 4, 5, 1] == mg.continuation(prompt, 4)
    assert draft.origins == [3] * 4
    assert draft.q == [None] * 4  # one-hot: no probabilities
    assert draft.is_chain and draft.parents is None
    assert all(type(t) is int for t in draft.tokens)
    empty = mg.propose(np.asarray([1, 2, 3, 4, 42]), 4, None)  # no match, no bigram
    assert isinstance(empty, Draft) and len(empty) == 0


def test_commit_extends_the_index_like_extend():
    prompt, generated = [1, 2, 3, 1, 2], [4, 1, 2, 3, 9]
    committed, extended = MaxGram(), MaxGram()
    for mg in (committed, extended):
        mg.reset(prompt)
    for a, b in ((0, 2), (2, 3), (3, 5)):
        committed.commit(generated[a:b])
    extended.extend(generated)
    assert committed.tokens == extended.tokens == prompt + generated
    assert committed._index == extended._index
    committed.release()  # nothing to free; harmless
    ctx = prompt + generated + [1, 2]
    assert committed.propose(ctx, 3, None).tokens == extended.continuation(ctx, 3)


# ---------------------------------------------------------------------------------------------
# Branches: Max-Gram's drafts as token trees

BRANCHY = [1, 2, 3, 1, 2, 4, 1, 2, 5, 9, 1, 2]


def test_branches_add_what_followed_other_matches_as_siblings():
    mg = MaxGram(branches=3)
    mg.reset(BRANCHY)
    draft = mg.propose(np.array(BRANCHY), 4)
    # main: after the prompt's first [1, 2]; siblings of its first token: 4 and 5, which
    # followed the other matches of [1, 2], each with the run copied after its match
    assert draft.tokens == [3, 1, 2, 4, 4, 1, 2, 5, 5, 9, 1, 2]
    assert draft.parents == [-1, 0, 1, 2, -1, 4, 5, 6, -1, 8, 9, 10]
    assert draft.q == [None] * 12 and not draft.is_chain and mg.proposes_trees
    two = MaxGram(branches=2)  # at most 2 tokens after an n-gram: 3 and 4
    two.reset(BRANCHY)
    assert two.propose(np.array(BRANCHY), 2).tokens == [3, 1, 4, 1]
    one = MaxGram()
    one.reset(BRANCHY)
    chain = one.propose(np.array(BRANCHY), 4)
    assert chain.is_chain and chain.tokens == [3, 1, 2, 4] and not one.proposes_trees


def test_branches_need_alternatives():
    mg = MaxGram(branches=3)
    mg.reset([1, 2, 3, 1, 2])  # [1, 2] was followed by 3 only
    assert mg.propose(np.array([1, 2, 3, 1, 2]), 3).is_chain


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 5), min_size=2, max_size=40),
    branches=st.integers(2, 4),
    n=st.integers(1, 6),
)
def test_branch_main_path_is_the_linear_draft(tokens, branches, n):
    """The first path of a branching draft is exactly the linear draft; every sibling of the
    root starts with a different token, one that followed the same n-gram before."""
    mg, linear = MaxGram(branches=branches), MaxGram()
    mg.reset(tokens)
    linear.reset(tokens)
    draft, chain = mg.propose(np.array(tokens), n), linear.propose(np.array(tokens), n)
    assert draft.tokens[: len(chain)] == chain.tokens
    if draft.is_chain:
        return
    roots = [draft.tokens[i] for i, p in enumerate(draft.parents) if p == -1]
    assert len(roots) == len(set(roots)) <= branches
    for i, p in enumerate(draft.parents):
        assert p < i
