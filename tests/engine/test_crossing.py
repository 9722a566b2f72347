"""Rungs with their own tokenizer: drafts cross between token spaces as text.

The tokenizers are two byte-level BPEs trained here on one small text with different vocabulary
sizes and extra words (different merges, not a renamed copy); the sampling tests use two
character-level BPEs small enough to enumerate the target's law. Checked:

- a space's incremental re-encoding is the tokenizer's own encoding of the whole text;
- a drafter that knows the text (an oracle in the other tokenizer) gets nearly every crossed
  token accepted, whichever block boundaries split words and multi-byte characters, and a
  crossing without look-behind or without the stable-token rule does measurably worse;
- the drafter's eos and specials end its draft and never cross;
- greedy output through 2- and 3-rung ladders mixing families is the target's own;
- sampled output follows the target's exact law, and the wrong rule (reviewing the crossed
  draft with the drafter's q as if it were over the reviewer's vocabulary) is caught.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from engine_helpers import (
    distribution_check,
    ids_of,
    model_rung,
    passes,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_ladder import FOREIGN_EXTRA, bpe_tokenizer

from csdraft.engine import Cascade, MaxGram, ModelRung, Proposer, Sampling
from csdraft.engine.crossing import Codec, Crossing, Space
from csdraft.engine.draft import Draft
from csdraft.trace import Stats

pytestmark = pytest.mark.usefixtures("one_thread")

DOC = (
    " Naïve café owners serve crème brûlée to the quick brown fox; 你好世界, 数学很有趣!\n"
    "def f(x):\n    return x * 2\n\nThe lazy dog jumps over the café."
)


@cache
def tok_a():
    """The target's tokenizer: 300 tokens."""
    return bpe_tokenizer(300)


@cache
def tok_b():
    """The foreign drafter's: 330 tokens, other merges (extra words shift the statistics)."""
    return bpe_tokenizer(330, FOREIGN_EXTRA)


def _chars(letters: str, merges: list[tuple[str, str]]):
    """A character-level BPE over ``letters`` plus ``merges``, with <eos>, no pre-tokenizer."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(letters)}}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(BPE(vocab, merges))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def test_trained_tokenizers_differ():
    a, b = tok_a(), tok_b()
    assert len(a) != len(b)
    text = "crème brûlée 你好世界 quokka"
    assert a(text)["input_ids"] != b(text)["input_ids"]
    assert Codec.problem(a) is None and Codec.problem(b) is None


# ---------------------------------------------------------------------------------------------
# Spaces


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(1, len(DOC) - 1), max_size=12), look_behind=st.integers(1, 6))
def test_space_reencoding_is_the_whole_encoding(cuts, look_behind):
    """Committed text arriving in any pieces (split inside words and multi-byte characters'
    neighbours) is held as the tokenizer's own encoding of the whole text."""
    tok = tok_b()
    space = Space(Codec(tok), exact=False, look_behind=look_behind)
    bounds = [0, *sorted(set(cuts)), len(DOC)]
    finals = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        space.add_text(DOC[lo:hi])
        finals.append(space.tokens[: space.stable])
        assert space.text == DOC[:hi]
        assert space.tokens == tok(DOC[:hi], add_special_tokens=False)["input_ids"]
    for before, after in zip(finals, finals[1:], strict=False):
        assert after[: len(before)] == before  # stable tokens never change


def test_space_without_lookbehind_is_caught():
    """The teeth of the test above: re-encoding only the new text splits words."""

    class NoLookBehind(Space):
        def start(self) -> int:
            return len(self.tokens)

    tok = tok_b()
    space = NoLookBehind(Codec(tok), exact=False)
    for lo in range(0, len(DOC), 5):
        space.add_text(DOC[lo : lo + 5])
    assert space.tokens != tok(DOC, add_special_tokens=False)["input_ids"]


def test_exact_space_holds_back_split_characters():
    a = tok_a()
    ids = a("你好 fox", add_special_tokens=False)["input_ids"]
    space = Space(Codec(a), exact=True)
    pieces = [space.add_tokens([t]) for t in ids]
    assert "".join(pieces) == "你好 fox"
    assert "" in pieces  # some token ended inside a character and waited for the next
    assert space.tokens == ids


# ---------------------------------------------------------------------------------------------
# An oracle drafter and a scripted target: crossings that should nearly always be accepted


class ScriptScorer:
    """A target that writes ``script`` (its tokens) after ``prompt``, then eos, whatever it
    is shown; logits peaked on the next script token."""

    scores_trees = False

    def __init__(self, prompt: list[int], script: list[int], vocab: int, eos: int) -> None:
        self.name, self.prompt, self.script, self.vocab, self.eos = (
            "target",
            prompt,
            script,
            vocab,
            eos,
        )

    def next_of(self, ctx: np.ndarray) -> int:
        gen = [int(t) for t in ctx[len(self.prompt) :]]
        m = len(gen)
        if gen == self.script[:m]:
            return self.script[m] if m < len(self.script) else self.eos
        return (gen[-1] * 7 + 3) % self.vocab

    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        rows = [self.next_of(seq[: i + 1]) for i in range(start - 1, len(seq))]
        return torch.nn.functional.one_hot(torch.tensor(rows), self.vocab).float() * 10

    def reset(self) -> None:
        pass


class Oracle(Proposer):
    """A drafter in tokenizer ``tok`` that knows ``text`` follows the prompt: it proposes its
    own encoding of what comes next (then ``tail`` ids, e.g. its eos)."""

    name = "oracle"

    def __init__(self, tok, prompt_text: str, text: str, tail: tuple[int, ...] = ()) -> None:
        self.tok, self.prompt_text, self.text, self.tail = tok, prompt_text, text, list(tail)

    def propose(self, context, n, engine=None) -> Draft:
        seen = self.tok.decode([int(t) for t in context], skip_special_tokens=False)
        done = seen[len(self.prompt_text) :]
        if not seen.startswith(self.prompt_text) or not self.text.startswith(done):
            return self.draft([])
        rest = self.tok(self.text[len(done) :], add_special_tokens=False)["input_ids"]
        return self.draft((rest + self.tail)[:n])


PROMPT_TEXT = "Q: say it. A:"


def scripted(k: int, crossing: Crossing | None = None, tail=(), look_behind: int = 4):
    a, b = tok_a(), tok_b()
    prompt = a(PROMPT_TEXT, add_special_tokens=False)["input_ids"]
    script = a(DOC, add_special_tokens=False)["input_ids"]
    target = ModelRung(ScriptScorer(prompt, script, len(a), a.eos_token_id), "target")
    oracle = Oracle(b, PROMPT_TEXT, DOC, tail)
    crossing = crossing or Crossing([a, b], look_behind=look_behind)
    cascade = Cascade([target, oracle], [[k]], crossing=crossing)
    return cascade, prompt, script


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13])
def test_oracle_drafts_cross_and_are_accepted(k):
    cascade, prompt, script = scripted(k)
    events = list(cascade.generate(prompt, len(script) + 5, eos_ids=[tok_a().eos_token_id]))
    assert ids_of(events) == [*script, tok_a().eos_token_id]
    stats = Stats.of(events)
    proposed, accepted = stats.proposed[0], stats.accepted[0]
    assert accepted >= 0.97 * proposed, (accepted, proposed)
    if k >= 3:  # measured: 38 forwards at k = 3, 9 at k = 13, for 103 tokens
        assert stats.target_forwards < len(script) / 2, stats.target_forwards


class Unstable(Crossing):
    """Wrong: crosses every re-encoded token, the last word's too (the draft treated as final)."""

    def propose(self, reviewer, drafter, context, n, engine):
        eos = self.spaces[self.space_of[drafter.index]].codec.stops
        wrapped = drafter.propose
        drafter.propose = lambda c, m, e: Draft.deterministic(
            [*wrapped(c, m, e).tokens, min(eos)], drafter.index
        )
        try:
            return super().propose(reviewer, drafter, context, n, engine)
        finally:
            del drafter.propose


def test_unstable_tokens_are_caught():
    """Crossing the last word's tokens gets some refused (a word's prefix is not always
    encoded as the word's first tokens); the right crossing gets none refused."""
    refused = {}
    for name, crossing in (("right", None), ("wrong", Unstable([tok_a(), tok_b()]))):
        cascade, prompt, script = scripted(5, crossing)
        events = list(cascade.generate(prompt, len(script) + 5, eos_ids=[tok_a().eos_token_id]))
        assert ids_of(events) == [*script, tok_a().eos_token_id]
        stats = Stats.of(events)
        refused[name] = stats.proposed[0] - stats.accepted[0]
    assert refused["right"] == 0 and refused["wrong"] > 0, refused


def test_drafter_eos_ends_the_draft_and_never_crosses():
    a, b = tok_a(), tok_b()
    short = DOC[:40]
    prompt = a(PROMPT_TEXT, add_special_tokens=False)["input_ids"]
    crossing = Crossing([a, b])
    crossing.reset(prompt)
    for tail in ([b.eos_token_id], b("<sep>", add_special_tokens=False)["input_ids"]):
        oracle = Oracle(b, PROMPT_TEXT, short, tuple(tail) + (7, 8, 9))
        oracle.index = 1
        draft = crossing.propose(0, oracle, np.asarray(prompt), 64, None)
        assert a.decode(draft.tokens) == short  # all of it, its last word too (the draft ended)
        assert a.eos_token_id not in draft.tokens
        assert draft.q == [None] * len(draft)


def test_word_split_at_the_boundary_is_reencoded():
    """The target's context ends inside a word (and inside a multi-byte character): the
    crossed tokens continue it as the target's tokenizer would."""
    a, b = tok_a(), tok_b()
    prompt = a(PROMPT_TEXT, add_special_tokens=False)["input_ids"]
    script = a(DOC, add_special_tokens=False)["input_ids"]
    crossing = Crossing([a, b])
    crossing.reset(prompt)
    oracle = Oracle(b, PROMPT_TEXT, DOC)
    oracle.index = 1
    for cut in range(1, 30):
        context = np.asarray(prompt + script[:cut])
        draft = crossing.propose(0, oracle, context, 6, None)
        assert draft.tokens == script[cut : cut + len(draft)], cut
        assert len(draft) >= 1, cut


# ---------------------------------------------------------------------------------------------
# Greedy through ladders mixing families (tiny random models)


@cache
def models():
    from engine_helpers import build_model

    return {
        "target": build_model("llama", len(tok_a()), hidden=16, seed=0),
        "same": build_model("qwen2", len(tok_a()), hidden=16, seed=1),
        "other": build_model("qwen2", len(tok_b()), hidden=16, seed=2),
        "other2": build_model("gpt2", len(tok_b()), hidden=16, seed=3),
    }


def ladder(names: list[str], k, sampling=None, seed=0):
    """Target, then the named drafters (model keys, or 'max-gram'), the crossing over them."""
    rungs, toks = [model_rung(models()["target"], "target")], [tok_a()]
    for name in names:
        if name == "max-gram":
            rungs.append(MaxGram(4))
            toks.append(None)
        else:
            rungs.append(model_rung(models()[name], name))
            toks.append(tok_b() if name.startswith("other") else tok_a())
    widths = [len(tok_a()) if t is tok_a() else None for t in toks]
    return Cascade(rungs, k, sampling=sampling, seed=seed, crossing=Crossing(toks, widths))


LADDERS = [
    (["other"], None),
    (["other", "max-gram"], None),
    (["other", "same"], None),
    (["same", "other"], None),
    (["other", "other2"], None),
]


@settings(max_examples=25, deadline=None)
@given(
    which=st.integers(0, len(LADDERS) - 1),
    text=st.text(alphabet="abcé 你好\nfox.", min_size=1, max_size=20),
    k=st.lists(st.integers(0, 5), min_size=4, max_size=4),
    n=st.integers(1, 24),
)
def test_greedy_mixed_ladders_are_the_targets_own(zoo, which, text, k, n):
    names, _ = LADDERS[which]
    size = len(names)
    matrix = [[k[0], *([k[1]] if size > 1 else [])]]
    if size > 1:
        matrix.append([0, max(k[2], 1)])
    prompt = tok_a()(text, add_special_tokens=False)["input_ids"] or [5]
    got = ids_of(ladder(names, matrix).generate(prompt, n))
    want = zoo.reference(models()["target"], prompt, n)
    assert got == want, zoo.divergence(models()["target"], prompt, got, want)


def test_foreign_drafter_is_asked():
    """The crossings run: the foreign drafter's proposals reach the target."""
    prompt = tok_a()("the café fox", add_special_tokens=False)["input_ids"]
    events = list(ladder(["other", "max-gram"], [[4, 0], [0, 3]]).generate(prompt, 30))
    stats = Stats.of(events)
    assert stats.proposed[0] > 0
    assert stats.proposed[1] > 0  # Max-Gram drafts in the drafter's tokens


# ---------------------------------------------------------------------------------------------
# Sampling: exact through a crossing (enumerated law, chi-square as in test_sampling.py)


@cache
def char_world():
    from engine_helpers import build_model

    a = _chars("abc ", [("a", "b"), ("c", " "), ("b", "a"), ("ab", "c")])
    b = _chars("abc ", [("b", "a"), (" ", "a"), ("c", "c")])
    target = build_model("llama", len(a), hidden=16, seed=0, init_range=0.5)
    drafter = build_model("qwen2", len(b), hidden=16, seed=5, init_range=0.5)
    return a, b, target, drafter


class KeepsDrafterQ(Crossing):
    """Wrong: hands the reviewer the drafter's q (over the drafter's vocabulary) as if its ids
    were the reviewer's."""

    def propose(self, reviewer, drafter, context, n, engine):
        seen = []
        wrapped = drafter.propose
        drafter.propose = lambda c, m, e: seen.append(wrapped(c, m, e)) or seen[-1]
        try:
            draft = super().propose(reviewer, drafter, context, n, engine)
        finally:
            del drafter.propose
        width = len(char_world()[0])
        for j in range(min(len(draft), len(seen[0]))):
            q = seen[0].q[j]
            if q is not None:
                q = torch.nn.functional.pad(q, (0, max(0, width - len(q))))[:width]
                draft.q[j] = q / q.sum()
        return draft


def sampled_cascade(crossing_cls, seed=0):
    a, b, target, drafter = char_world()
    rungs = [model_rung(target, "target"), model_rung(drafter, "foreign")]
    sampling = Sampling(temperature=1.0)
    crossing = crossing_cls([a, b], [len(a), None])
    return Cascade(rungs, [[4]], sampling=sampling, seed=seed, crossing=crossing), sampling


PROMPT = [1, 2, 3, 4, 1, 2]


def test_sampling_through_a_crossing_is_exact():
    cascade, sampling = sampled_cascade(Crossing)
    target = char_world()[2]
    results, tv = distribution_check(cascade, target, sampling, 4, 1500, PROMPT)
    assert passes(results), results
    stats = Stats.of(list(cascade.generate(PROMPT, 24, seed=5)))
    assert stats.proposed[0] > 0  # crossed drafts were reviewed


def test_reviewing_with_the_drafters_q_is_caught():
    cascade, sampling = sampled_cascade(KeepsDrafterQ)
    target = char_world()[2]
    results, tv = distribution_check(cascade, target, sampling, 4, 600, PROMPT)
    assert min(results.values()) < 1e-6, results
