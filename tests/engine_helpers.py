"""What the engine tests share: tiny randomly initialised causal LMs and their reference greedy
decoding, cascades built from them, the greedy and sampling exactness harnesses, and tiny
tokenizers. (A module of its own, not conftest.py: tests/bench has a conftest.py too, and
``from conftest import`` would find whichever was imported last.)

Every model here is float32, in eval mode and built from a fixed seed (without touching the
global torch RNG), so the exactness tests compare like with like. ``initializer_range`` is
larger than the transformers default so that logits are spread out: near-ties between the two
best tokens, where a block forward pass and a one-token forward pass may round differently,
become rare. Where a test still sees a divergence, ``greedy_margin`` reports the gap between the
target's two best logits there, so a near-tie is told apart from a bug.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
import torch
from hypothesis import strategies as st
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
    Qwen2Config,
    Qwen2ForCausalLM,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from csdraft.engine import Cascade, MaxGram, ModelRung, Proposer, Sampling, Scorer, learn_bigram
from csdraft.engine.deferral import Deferral
from csdraft.engine.review import SamplingReview
from csdraft.engine.tree import TreeSettings
from csdraft.trace import Commit, Event, Finish, Review, Start, Stats

ARCHS = ("llama", "qwen2", "gpt2")
"""Architectures whose KV cache the transformers scorer crops correctly (GPT-2 checked in
engine/test_cascade.py)."""

SMALL_VOCAB = 48
LARGE_VOCAB = 2048


def build_model(
    arch: str,
    vocab: int,
    hidden: int = 16,
    layers: int = 1,
    *,
    seed: int = 0,
    init_range: float = 0.3,
    **overrides,
) -> torch.nn.Module:
    """A tiny random causal LM of one architecture, with no eos/bos/pad token configured unless
    ``overrides`` (more settings of the architecture's config, e.g. ``eos_token_id``) say so."""
    special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if arch in ("llama", "qwen2"):
        config_cls, cls = {
            "llama": (LlamaConfig, LlamaForCausalLM),
            "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        }[arch]
        settings = {
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "initializer_range": init_range,
        }
    elif arch == "gpt2":
        config_cls, cls = GPT2Config, GPT2LMHeadModel
        settings = {
            "vocab_size": vocab,
            "n_embd": hidden,
            "n_layer": layers,
            "n_head": 2,
            "n_positions": 512,
            "initializer_range": init_range,
        }
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    config = config_cls(**(settings | special | overrides))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.float().eval()


def perturb(model: torch.nn.Module, noise: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with Gaussian noise of standard deviation ``noise`` on every weight:
    a drafter that agrees with the target often, but not always."""
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in twin.parameters():
            param.add_(noise * torch.randn(param.shape, generator=gen))
    return twin.eval()


@torch.inference_mode()
def reference_greedy(
    model: torch.nn.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    eos_id: int | None = None,
) -> list[int]:
    """The target's own greedy decoding through ``model.generate`` (eos disabled by default)."""
    ids = torch.tensor([list(prompt)], dtype=torch.long)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        eos_token_id=eos_id,
        pad_token_id=0 if eos_id is None else eos_id,
    )
    return out[0, len(prompt) :].tolist()


@torch.inference_mode()
def greedy_margin(model: torch.nn.Module, context: Sequence[int]) -> float:
    """Gap between the two best next-token logits of ``model`` after ``context``."""
    logits = model(torch.tensor([list(context)], dtype=torch.long)).logits[0, -1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def divergence_report(
    model: torch.nn.Module, prompt: Sequence[int], got: Sequence[int], want: Sequence[int]
) -> str:
    """Where two generations part, and the target's top-2 logit margin there."""
    i = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if i is None:
        return f"lengths differ: got {len(got)} tokens, want {len(want)}"
    margin = greedy_margin(model, list(prompt) + list(want[:i]))
    return (
        f"diverged at new token {i}: got {got[i]}, want {want[i]}; target top-2 logit margin "
        f"there {margin:.3g} ({'near-tie' if margin < 1e-4 else 'not a near-tie: a bug'})"
    )


class Zoo:
    """Tiny models built once per session, and their reference greedy decodings (cached)."""

    def __init__(self) -> None:
        self._refs: dict[tuple[int, tuple[int, ...], int | None], list[int]] = {}

    @cache  # noqa: B019 - the zoo lives for the whole session
    def model(self, arch: str, vocab: int, *args, **kwargs) -> torch.nn.Module:
        """``build_model(arch, vocab, ...)``, built once per set of arguments."""
        return build_model(arch, vocab, *args, **kwargs)

    @cache  # noqa: B019
    def noisy(self, base: torch.nn.Module, noise: float, seed: int = 1) -> torch.nn.Module:
        return perturb(base, noise, seed)

    def reference(
        self,
        model: torch.nn.Module,
        prompt: Sequence[int],
        max_new_tokens: int,
        eos_id: int | None = None,
    ) -> list[int]:
        """Greedy reference, computed once per (model, prompt, eos) for the longest length
        asked so far (a shorter greedy decoding is a prefix of a longer one)."""
        key = (id(model), tuple(int(t) for t in prompt), eos_id)
        have = self._refs.get(key)
        if have is None or (len(have) < max_new_tokens and not _ended(have, eos_id)):
            have = reference_greedy(model, prompt, max(max_new_tokens, 32), eos_id)
            self._refs[key] = have
        return have[:max_new_tokens]

    divergence = staticmethod(divergence_report)
    margin = staticmethod(greedy_margin)


def _ended(tokens: list[int], eos_id: int | None) -> bool:
    return eos_id is not None and bool(tokens) and tokens[-1] == eos_id


# ---------------------------------------------------------------------------------------------
# Building cascades from models


def scorer(model: torch.nn.Module, name: str) -> Scorer:
    """The transformers KV-cached scorer over ``model`` (an encoder-decoder's own for one)."""
    from csdraft.models import TransformersScorer
    from csdraft.models.seq2seq import Seq2SeqScorer

    if model.config.is_encoder_decoder:
        return Seq2SeqScorer(model, name)
    return TransformersScorer(model, name)


def model_rung(
    model: torch.nn.Module,
    name: str,
    lenience: float = 1.0,
    min_confidence: float = 0.0,
    deferral: Deferral | None = None,
) -> ModelRung:
    """A neural rung (target or drafter) over ``model``."""
    return ModelRung(
        scorer(model, name),
        name,
        lenience=lenience,
        min_confidence=min_confidence,
        deferral=deferral,
    )


def _per_neural(value: float | Sequence[float], n: int) -> list[float]:
    values = [value] * n if isinstance(value, int | float) else list(value)
    assert len(values) == n, f"expected one value per neural drafter ({n}), got {value!r}"
    return values


def cascade_of(
    target: torch.nn.Module,
    drafters: Sequence[torch.nn.Module | Proposer] = (),
    k: Sequence[Sequence[int]] = (),
    *,
    lenience: float | Sequence[float] = 1.0,
    min_confidence: float | Sequence[float] = 0.0,
    sampling: Sampling | None = None,
    seed: int = 0,
    tree: TreeSettings | None = None,
    deferral: Deferral | Sequence[Deferral | None] | None = None,
) -> Cascade:
    """A cascade over ``target`` and ``drafters`` in ladder order: a model becomes a
    ``ModelRung`` named d0, d1, ... (in its place among the drafting rungs), a ``Proposer`` is
    used as it is. ``lenience`` and ``min_confidence``: one value for every neural drafter, or
    one per neural drafter. ``deferral``: the target's rule, or one per model rung (target
    first, then each neural drafter). ``tree``: the target's tree settings (None: linear
    drafts)."""
    neural = sum(isinstance(d, torch.nn.Module) for d in drafters)
    lenient = iter(_per_neural(lenience, neural))
    floors = iter(_per_neural(min_confidence, neural))
    rules = [deferral] if deferral is None or isinstance(deferral, Deferral) else list(deferral)
    rules = iter(rules + [None] * (neural + 1 - len(rules)))
    rungs: list[Proposer] = [model_rung(target, "target", deferral=next(rules))]
    rungs[0].tree = tree
    for i, d in enumerate(drafters):
        if isinstance(d, torch.nn.Module):
            rungs.append(model_rung(d, f"d{i}", next(lenient), next(floors), next(rules)))
        else:
            rungs.append(d)
    return Cascade(rungs, k, sampling=sampling, seed=seed)


def ids_of(events: Iterable[Event]) -> list[int]:
    """The generated ids: every committed token, in order."""
    return [t for e in events if isinstance(e, Commit) for t in e.tokens]


# ---------------------------------------------------------------------------------------------
# Greedy exactness over random ladders
#
# The central property: whatever the ladder (neural drafters, Max-Gram, other proposers), the
# k-matrix (zeros included), inner lenience, min_confidence, eos, a stop callable and the
# prompt, the cascade's ids equal the target's plain greedy decoding
# (``model.generate(do_sample=False)``), token for token, in float32.

# (arch, vocab, hidden, layers): the targets the property tests draw from.
TARGETS = [
    ("llama", SMALL_VOCAB, 16, 1),
    ("qwen2", SMALL_VOCAB, 32, 2),
    ("gpt2", SMALL_VOCAB, 16, 2),
    ("llama", LARGE_VOCAB, 32, 1),
    ("qwen2", LARGE_VOCAB, 16, 1),
]
DRAFTER_KINDS = ("same", "near", "far", "other")
"""How a neural drafter relates to its target: the target itself (everything accepted), a
lightly or heavily perturbed copy, or an unrelated model of another architecture, same vocab."""
MAXGRAM = "maxgram"
TOY = "toy"
"""A drafting rung built by the ``toy`` factory a test passes (``run_greedy_case``)."""


def target_of(zoo: Zoo, key: tuple) -> torch.nn.Module:
    arch, vocab, hidden, layers = key
    return zoo.model(arch, vocab, hidden, layers)


def drafter_of(zoo: Zoo, key: tuple, kind: str) -> torch.nn.Module:
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
    rungs: list[str]  # the drafting rungs in ladder order: DRAFTER_KINDS, MAXGRAM or TOY
    max_ngram: int
    min_ngram: int
    bigram: bool
    k: list[list[int]]
    lenience: list[float]  # per neural drafter
    prompt: list[int]
    max_new_tokens: int
    eos_at: int | None = None  # the token the target emits at this index becomes eos
    stop_at: int | None = None  # a stop callable keeps exactly this many tokens in all
    min_confidence: list[float] | None = None  # per neural drafter; None: never stop early
    echo: bool = False  # prompt + the target's own continuation + prompt: Max-Gram will match
    toy_most: int | None = None  # the toy proposes at most this many tokens a call (None: n)

    @property
    def neural(self) -> list[bool]:
        """For each drafting rung, whether it is a neural drafter."""
        return [r in DRAFTER_KINDS for r in self.rungs]

    @property
    def may_come_short(self) -> bool:
        """Whether a block may hold fewer tokens than the k-matrix asks for."""
        return bool(
            self.min_confidence
            or MAXGRAM in self.rungs
            or (TOY in self.rungs and self.toy_most is not None)
        )


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
def cases(draw, toy: bool = False) -> Case:
    """Random ladders: 0-2 neural drafters, then Max-Gram or not; with ``toy``, a TOY rung
    inserted anywhere among the drafting rungs (above, between or below the others)."""
    target = draw(st.sampled_from(TARGETS))
    neural = draw(st.lists(st.sampled_from(DRAFTER_KINDS + ("near",)), max_size=2))
    rungs = neural + ([MAXGRAM] if draw(st.booleans()) else [])
    if toy:
        rungs.insert(draw(st.integers(0, len(rungs))), TOY)
    max_ngram = draw(st.integers(1, 5))
    return Case(
        target=target,
        rungs=rungs,
        max_ngram=max_ngram,
        min_ngram=draw(st.integers(1, max_ngram)),
        bigram=draw(st.booleans()),
        k=draw(k_matrices(len(rungs))),
        lenience=[draw(st.floats(1.0, 5.0)) for _ in neural],
        prompt=draw(prompts(target[1])),
        max_new_tokens=draw(st.integers(1, 32)),
        eos_at=draw(st.one_of(st.none(), st.integers(0, 31))),
        stop_at=draw(st.one_of(st.none(), st.integers(0, 32))),
        min_confidence=draw(
            st.one_of(
                st.none(),
                st.lists(st.floats(0.0, 0.99), min_size=len(neural), max_size=len(neural)),
            )
        ),  # fmt: skip
        echo=draw(st.booleans()),
        toy_most=draw(st.one_of(st.none(), st.integers(1, 4))) if toy else None,
    )


ToyFactory = Callable[[Case], Proposer]


def build_case_cascade(zoo: Zoo, case: Case, toy: ToyFactory | None = None, seed: int = 0):
    """The cascade a case describes (TOY rungs made by ``toy``)."""
    drafters: list[torch.nn.Module | Proposer] = []
    for kind in case.rungs:
        if kind == MAXGRAM:
            bigram = None
            if case.bigram:
                rng = np.random.default_rng(len(case.prompt))
                bigram = learn_bigram([rng.integers(0, case.target[1], 200).tolist()])
            drafters.append(MaxGram(case.max_ngram, case.min_ngram, bigram))
        elif kind == TOY:
            assert toy is not None, "a case with a toy rung needs a toy factory"
            drafters.append(toy(case))
        else:
            drafters.append(drafter_of(zoo, case.target, kind))
    return cascade_of(
        target_of(zoo, case.target),
        drafters,
        case.k,
        lenience=case.lenience,
        min_confidence=case.min_confidence or 0.0,
        seed=seed,
    )


def check_segments(review: Review, case: Case) -> None:
    """The k-matrix row of the reviewer says which drafter fills which part of its block: in
    ladder order, drafter c + 1 fills positions up to k[r][r] + ... + k[r][c]. A neural
    drafter's segment ends with a token of its own (the last of its own reviews); its other
    tokens come from it or from rungs below it. Any other proposer's segment is all its own. A
    segment may come up short only where the block ends."""
    r = review.reviewer
    start = cumulative = 0
    for col in range(r, len(case.k)):
        cumulative += case.k[r][col]
        end = min(cumulative, len(review.proposed))
        drafter = col + 1
        segment = review.origins[start:end]
        if case.neural[col]:
            assert all(o >= drafter for o in segment), (review, case.k)
            if segment:
                assert segment[-1] == drafter, (review, case.k)
        else:
            assert all(o == drafter for o in segment), (review, case.k)
        start = end
    assert start == len(review.proposed)


def check_stream(events: list[Event], case: Case) -> None:
    """Invariants of the event stream: shape, review structure, commits and the k-matrix."""
    assert isinstance(events[0], Start)
    assert isinstance(events[-1], Finish)
    assert sum(isinstance(e, Finish) for e in events) == 1
    drafting = len(case.rungs)
    neural = [True, *case.neural]  # by ladder index: the target reviews too
    assert events[0].rungs[0] == "target"
    assert len(events[0].rungs) == len(events[0].kinds) == drafting + 1
    assert events[0].kinds[0] == "target"
    assert [kind == "model" for kind in events[0].kinds[1:]] == case.neural
    assert events[0].prompt_tokens == len(case.prompt)
    produced = 0
    last_target = None
    for e in events:
        if isinstance(e, Review):
            # Only neural rungs review, and only proposals drafted by rungs below them.
            assert neural[e.reviewer]
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
                if case.may_come_short:
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
    assert stats.kinds == events[0].kinds
    reviews = [e for e in events if isinstance(e, Review)]
    assert stats.target_forwards == sum(e.reviewer == 0 for e in reviews)
    for r in range(drafting + 1):
        assert stats.forwards.get(r, 0) == sum(e.reviewer == r for e in reviews)
    assert sum(stats.drafted.values()) == stats.new_tokens


def run_greedy_case(zoo: Zoo, case: Case, toy: ToyFactory | None = None) -> list[Event]:
    """Generate with the case's cascade and check the ids against the target's greedy decoding
    (cut at eos and by the stop callable as the target alone would be), the finish reason and
    the event stream."""
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
        stop_at = case.stop_at

        def stop(tokens: list[int]) -> int | None:
            before = total[0]
            total[0] += len(tokens)
            return stop_at - before if total[0] >= stop_at else None

        if stop_at <= length:
            length, reason = stop_at, "stop"
    want = plain[:length]

    cascade = build_case_cascade(zoo, case, toy)
    events = list(cascade.generate(case.prompt, case.max_new_tokens, eos_ids=eos_ids, stop=stop))
    got = ids_of(events)
    assert got == want, f"{zoo.divergence(target, case.prompt, got, want)}\n{case}"
    assert events[-1].reason == reason
    check_stream(events, case)
    return events


# ---------------------------------------------------------------------------------------------
# Sampling exactness: the target's sampling law by enumeration, and a chi-square check
#
# ``distribution_check``: Pearson chi-square goodness of fit of the empirical counts against the
# exact probabilities, with cells whose expected count is below 5 pooled into one cell, and an
# immediate failure if any run produced an outcome of exact probability zero (outside top-k /
# top-p). A check passes when every p-value is above P_THRESHOLD.

P_THRESHOLD = 1e-4
SAMPLING_VOCAB = 12
"""The vocabulary of the sampling tests' models: small enough to enumerate V ** 4 outcomes."""


def hf_warpers(sampling: Sampling) -> LogitsProcessorList:
    """The warpers transformers' generate() builds for these settings, in its order."""
    warpers = LogitsProcessorList()
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


def hf_probs(sampling: Sampling, logits: torch.Tensor) -> torch.Tensor:
    scores = hf_warpers(sampling)(torch.zeros(logits.shape[0], 1, dtype=torch.long), logits)
    return torch.softmax(scores, dim=-1)


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5) -> float:
    """Pearson chi-square goodness-of-fit p-value; cells expected below ``min_expected`` are
    pooled; any count in a cell of probability zero gives 0."""
    counts = counts.flatten().double()
    probs = probs.flatten().double()
    if (counts[probs <= 0] > 0).any():
        return 0.0
    expected = probs / probs.sum() * counts.sum()
    big = expected >= min_expected
    obs, exp = [counts[big]], [expected[big]]
    if (~big).any() and expected[~big].sum() > 0:
        obs.append(counts[~big].sum()[None])
        exp.append(expected[~big].sum()[None])
    obs, exp = torch.cat(obs), torch.cat(exp)
    dof = len(obs) - 1
    if dof < 1:
        return 1.0
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


@torch.inference_mode()
def exact_law(model, prompt, sampling: Sampling, depth: int) -> torch.Tensor:
    """P(x1 .. x_depth) under the model's sampling distribution, as a [V] * depth tensor,
    by enumerating every continuation (full forward passes, transformers' own warpers; an
    encoder-decoder's continuations follow its decoder start token)."""
    v = model.config.vocab_size
    seq2seq = model.config.is_encoder_decoder
    joint = torch.ones((), dtype=torch.float64)
    for d in range(depth):
        n = v**d
        tails = np.stack(np.unravel_index(np.arange(n), (v,) * d), -1) if d else np.zeros((1, 0))
        seqs = torch.cat(
            [torch.tensor([prompt]).expand(n, -1), torch.as_tensor(tails, dtype=torch.long)], 1
        )
        if seq2seq:
            start = torch.full((n, 1), model.config.decoder_start_token_id, dtype=torch.long)
            tails = torch.as_tensor(tails, dtype=torch.long).reshape(n, d)
            encoder = torch.tensor([prompt]).expand(n, -1)
            logits = model(input_ids=encoder, decoder_input_ids=torch.cat([start, tails], 1))
            logits = logits.logits[:, -1].float()
        else:
            logits = model(seqs).logits[:, -1].float()
        step = hf_probs(sampling, logits).double()  # [n, V]
        joint = (joint.reshape(n, 1) * step).reshape((v,) * (d + 1))
    return joint


def spec_cascade(
    models: dict[str, torch.nn.Module],
    spec: dict,
    drafters: Sequence[torch.nn.Module | Proposer],
    seed: int = 0,
) -> Cascade:
    """The sampling cascade over ``models["target"]`` and ``drafters`` with the k-matrix,
    lenience and sampling settings of a ladder ``spec`` (keys k, lenience, sampling)."""
    return cascade_of(
        models["target"],
        drafters,
        spec["k"],
        lenience=spec["lenience"],
        sampling=spec["sampling"],
        seed=seed,
    )


def sample_runs(cascade: Cascade, prompt, max_new_tokens: int, runs: int, seed: int) -> np.ndarray:
    """Generated ids of ``runs`` generations, one row each, generation i seeded ``seed + i``."""
    out = np.empty((runs, max_new_tokens), dtype=np.int64)
    for i in range(runs):
        ids = ids_of(cascade.generate(prompt, max_new_tokens, seed=seed + i))
        assert len(ids) == max_new_tokens
        out[i] = ids
    return out


def distribution_check(cascade, target, sampling, max_new_tokens, runs, prompt, seed=1234):
    """p-values of: the joint law of each pair of neighbours (x1, x2), (x2, x3) ..., the
    marginal law of each token after the second, and the joint law of (x1, x2, x3); and the
    total variation distance of (x1, x2) from its exact law."""
    n = max_new_tokens
    v = target.config.vocab_size
    law = exact_law(target, prompt, sampling, n)
    draws = torch.from_numpy(sample_runs(cascade, prompt, n, runs, seed))

    def law_of(*keep: int) -> torch.Tensor:
        return law.sum(dim=tuple(i for i in range(n) if i not in keep)) if len(keep) < n else law

    def counts_of(*keep: int) -> torch.Tensor:
        cells = sum(draws[:, j] * v ** (len(keep) - 1 - i) for i, j in enumerate(keep))
        return torch.bincount(cells, minlength=v ** len(keep))

    results = {}
    for j in range(n - 1):
        results[f"x{j + 1},x{j + 2}"] = chi_square_pvalue(counts_of(j, j + 1), law_of(j, j + 1))
    for j in range(2, n):
        results[f"x{j + 1}"] = chi_square_pvalue(counts_of(j), law_of(j))
    if n >= 3:
        results["x1,x2,x3"] = chi_square_pvalue(counts_of(0, 1, 2), law_of(0, 1, 2))
    tv = 0.5 * float((counts_of(0, 1) / runs - law_of(0, 1).flatten()).abs().sum())
    return results, tv


def passes(results: dict[str, float]) -> bool:
    return min(results.values()) > P_THRESHOLD


class ResampleFromP(SamplingReview):
    """Wrong: after a rejection draws from p instead of normalise(max(0, p - q)). The sampling
    check must reject it."""

    def __call__(self, logits, draft, lenience):
        verdict = super().__call__(logits, draft, lenience)
        if verdict.accepted < len(draft):
            p = self.sampling.probs(logits)[verdict.accepted]
            verdict.token = int(torch.multinomial(p, 1, generator=self.generator))
        return verdict


def sampling_zoo() -> dict[str, torch.nn.Module]:
    """Tiny models over a vocabulary of SAMPLING_VOCAB: a target, two perturbed copies and two
    models of other architectures."""
    v = SAMPLING_VOCAB
    target = build_model("llama", v, hidden=16, layers=1, seed=0)
    return {
        "target": target,
        "near": perturb(target, 0.03, seed=1),  # accepted most of the time
        "far": perturb(target, 0.15, seed=2),  # TV about 0.5 from the target
        "qwen2": build_model("qwen2", v, seed=3),
        "gpt2": build_model("gpt2", v, seed=4),
    }


# ---------------------------------------------------------------------------------------------
# Tokenizers


def byte_tokenizer(merges: Sequence[tuple[str, str]] = ()):
    """A byte-level BPE tokenizer (GPT-2 style) with one token per byte (plus ``merges``) and
    <eos>: a character of several UTF-8 bytes spans several tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(BPE(vocab, list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    return fast
