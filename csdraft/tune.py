"""``csdraft tune k-matrix``: choose a ladder's k-matrix, min_confidence and lenience for this
machine.

Four steps, one function each:

1. **Calibrate** (``calibrate``). Time each neural rung's forward pass as a function of how many
   new tokens it feeds (``measure_cost``: a cost curve, not a constant). Run the target greedily
   through the engine (the ``ar`` cascade) on the calibration prompts to get reference
   continuations. Score each reference once per neural rung with teacher forcing
   (``teacher_force``: fed as the engine feeds it, a few tokens a pass), keeping the rung's
   top-K next tokens and probabilities at every position, and replay Max-Gram along each
   continuation (its proposal from every position, ``maxgram_along``). From these come the
   agreement statistics (``agreement``): how often two rungs' greedy tokens match by
   position, run lengths, and Max-Gram's accepted-prefix lengths.
2. **Predict**. Two models:

   - ``AnalyticModel``: the paper's expected walltime improvement factor (``ewif``) extended
     to the cascade as a recursive expected-cost model. Per-position acceptance comes from the
     measured run-length survival curves, costs from the measured curves. Fast; used to rank
     the whole grid of k-matrices.
   - ``Replay`` (the predictor whose numbers tune reports and acts on): the real engine
     (``Cascade``) run over the recorded continuations with every neural rung replaced by a
     ``ReplayRung`` that answers from its teacher-forced logits at the same position, and
     with the real Max-Gram. Greedy review is deterministic, so this is an exact replay of
     everything the target accepts (all on the reference path); where a drafter's own draft
     leaves the reference path (tokens the target rejects anyway) the recorded statistics at
     the same position stand in. Every forward pass costs the measured curve at the number
     of tokens the rung really feeds (block plus catch-up after rejections, the prompt on the
     first pass); the engine's own work (blocks, reviews, Max-Gram, events) costs what it
     costs in the replay itself, which runs that very code, timed; and each review adds the
     measured full-vocabulary argmax (lenient settings: and softmax) that the replay's compact
     vocabulary skips. A drafter's confidence in its own token (what min_confidence acts on)
     is its recorded probability at that position. With greedy decoding a Monte Carlo over
     the recorded match sequences has no randomness left to sample, so one replay per prompt
     is the whole simulation.

3. **Verify** (``measure_candidates``): run the most promising candidates for real through
   ``LoadedLadder.cascade``, interleaved per prompt with the ladder's current settings and
   plain ``ar``, within a time budget; compare predicted and measured speedups and check that
   every output equals ``ar``'s.
4. **Write** (``write_winner``): store the winner as a new ladder with
   ``csdraft.ladder.add_ladder``; never overwrite one.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from csdraft.engine import Cascade, HFRung, MaxGram, Sampling
from csdraft.engine.rung import common_prefix
from csdraft.errors import CsdraftError, UsageError
from csdraft.ladder import (
    LadderSpec,
    MaxGramSpec,
    add_ladder,
    check_k_matrix,
    check_lenience,
    check_min_confidence,
    load_ladders,
    parse_config,
    user_config_path,
)
from csdraft.models import near_tie
from csdraft.trace import Commit, Finish, Review, Stats

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from csdraft.generation import LoadedLadder

KMatrix = tuple[tuple[int, ...], ...]
PerDrafter = float | tuple[float, ...]
"""A per-drafter setting (lenience, min_confidence): one value for every drafter, or one each."""
Lenience = PerDrafter

K_TOP = 8
"""Top tokens kept per position and rung from the teacher-forced pass (for lenient reviews)."""
TEACHER_BLOCK = 4
"""Tokens per forward pass when teacher forcing, about what the engine feeds a drafter: a
model whose numbers depend on the pass (int8's per-pass activation scale) is scored as the
engine runs it. One pass over a whole continuation made the int8 0.5B agree with its target
on 85% of positions instead of the engine's 89%."""
MAX_RUN = 32
"""Longest run (and Max-Gram proposal) the statistics follow."""
GRID = (0, 1, 2, 3, 4, 6, 8, 10, 12)
"""Values each k-matrix entry takes in the search grid."""
SMALL_GRID = (0, 1, 2, 4, 8)
"""The grid for ladders with many drafting rungs, where the full grid is too large."""
LENIENCES = (1.0, 1.5, 2.0, 3.0, 5.0)
"""Lenience values tried for the best k-matrices with inner reviews."""
MIN_CONFIDENCES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""min_confidence values tried for the best k-matrices that use a neural drafter."""
COST_LENGTHS = (1, 2, 4, 8, 12, 16, 24)
"""Block lengths (new tokens fed in one forward pass) whose cost ``calibrate`` measures."""
GRID_LIMIT = 20000
"""Most grid points the analytic model ranks."""


# ---------------------------------------------------------------------------- cost curves


@dataclass
class CostCurve:
    """Seconds one forward pass of a rung takes, by the number of new tokens it feeds.

    Linear interpolation between the measured points, flat below the first, linear
    extrapolation (with the last slope, never negative) past the last.
    """

    lengths: list[int]
    seconds: list[float]
    prefill: int | None = None
    """The point that is a whole prompt's first pass, if measured."""
    _memo: dict[int, float] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        pairs = sorted(zip(self.lengths, self.seconds, strict=True))
        self.lengths = [int(n) for n, _ in pairs]
        self.seconds = [float(s) for _, s in pairs]

    @classmethod
    def constant(cls, seconds: float) -> CostCurve:
        """The same cost whatever the block length."""
        return cls([1], [seconds])

    def __call__(self, n: int) -> float:
        """Seconds for a forward pass feeding ``n`` new tokens."""
        got = self._memo.get(n)
        if got is not None:
            return got
        xs, ys = self.lengths, self.seconds
        if len(xs) == 1 or n <= xs[0]:
            value = ys[0]
        elif n >= xs[-1]:
            slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
            value = ys[-1] + slope * (n - xs[-1])
        else:
            i = bisect.bisect_right(xs, n)
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            value = y0 + (y1 - y0) * (n - x0) / (x1 - x0)
        self._memo[n] = value
        return value

    def review(self, m: int) -> float:
        """Seconds for a review of ``m`` proposals: the engine feeds them plus the last token."""
        return self(m + 1)


def _median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_cost(
    model: torch.nn.Module,
    context: Sequence[int],
    continuation: Sequence[int],
    lengths: Sequence[int] = COST_LENGTHS,
    repeats: int = 3,
    prefill: bool = True,
) -> CostCurve:
    """Time a model's forward pass over 1..n new tokens after ``context``, exactly as the engine
    calls it (``HFRung.score``: cache cropped back to the context, the block fed in one pass),
    median of ``repeats`` after a warm-up, made non-decreasing (``monotone``); with
    ``prefill``, the first pass over the whole context too (a generation's first review)."""
    rung = HFRung(model, "cost")
    ctx = np.asarray(context, dtype=np.int64)
    pad = [int(t) for t in continuation] or [int(t) for t in context]
    while len(pad) < max(lengths):
        pad = pad + pad
    points: dict[int, float] = {}
    prefill = prefill and len(ctx) > max(lengths)
    if prefill:

        def fill() -> None:
            rung.reset()
            rung.score(ctx, len(ctx))

        points[len(ctx)] = _median_time(fill, min(repeats, 2), warmup=0)
    rung.reset()
    rung.score(ctx, len(ctx))
    for n in lengths:
        seq = np.concatenate([ctx, np.asarray(pad[: n - 1], dtype=np.int64)])
        points[n] = _median_time(lambda seq=seq: rung.score(seq, len(ctx)), repeats)
    rung.reset()
    return monotone(CostCurve(list(points), list(points.values()), len(ctx) if prefill else None))


def monotone(curve: CostCurve) -> CostCurve:
    """The curve made non-decreasing by a running minimum from the longest block down: feeding
    fewer tokens never costs more, and timing noise (other processes) only ever adds time."""
    seconds = list(curve.seconds)
    for i in range(len(seconds) - 2, -1, -1):
        seconds[i] = min(seconds[i], seconds[i + 1])
    return CostCurve(list(curve.lengths), seconds, curve.prefill)


def measure_vocab_op(
    op: Callable[[torch.Tensor], object],
    vocab: int,
    lengths: Sequence[int] = (1, 8, 16),
    repeats: int = 3,
) -> CostCurve:
    """Time ``op`` over ``n`` rows of full-vocabulary logits (a review's argmax, a lenient
    review's softmax): what a review costs beyond the forward pass and the replay's own."""
    points = {}
    for n in lengths:
        logits = torch.randn(n, vocab)
        points[n] = _median_time(lambda x=logits: op(x), repeats)
    return monotone(CostCurve(list(points), list(points.values())))


def _argmax(x: torch.Tensor) -> object:
    return x.argmax(-1)


def _softmax(x: torch.Tensor) -> object:
    return torch.softmax(x.float(), -1)


# ---------------------------------------------------------------------------- calibration


@dataclass
class PromptRecord:
    """One calibration prompt: the target's greedy continuation (through the engine) and, for
    every neural rung, its top-K next tokens and probabilities at each position of it.

    ``top_ids[r][t]`` is rung r's top-K after prompt + ``ref[:t]`` (t = 0..T); ``margin[t]`` is
    the gap between the target's two best logits there; ``mag[s]`` is Max-Gram's proposal from
    position s (index over prompt + ``ref[:s]``), padded with -1.
    """

    prompt: list[int]
    ref: list[int]
    finish: str
    ar_wall_s: float
    ar_forward_s: float
    ar_reviews: int
    top_ids: list[np.ndarray] = field(default_factory=list)
    top_p: list[np.ndarray] = field(default_factory=list)
    margin: np.ndarray | None = None
    mag: np.ndarray | None = None

    def top1(self, rung: int) -> np.ndarray:
        """Rung ``rung``'s greedy token at each reference position (the target's: ``ref``)."""
        if rung == 0:
            return np.asarray(self.ref, dtype=np.int64)
        return self.top_ids[rung][: len(self.ref), 0]


@dataclass
class Calibration:
    """Everything measured on this machine for one ladder: what the predictors need."""

    names: list[str]
    n_neural: int
    maxgram: MaxGramSpec | None
    bigram: dict[int, int] | None
    costs: list[CostCurve]
    argmax: CostCurve
    softmax: CostCurve
    overhead_s: float
    maxgram_s: float
    records: list[PromptRecord]
    max_new_tokens: int
    eos_ids: list[int]

    @property
    def drafting_rungs(self) -> int:
        """D: the k-matrix is D x D."""
        return self.n_neural - 1 + (1 if self.maxgram else 0)


def teacher_force(
    model: torch.nn.Module,
    prompt: Sequence[int],
    ref: Sequence[int],
    k: int = K_TOP,
    block: int = TEACHER_BLOCK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's top-k next tokens [T + 1, k], their probabilities, and the gap between its
    two best logits, at every continuation position: fed as the engine feeds it (``HFRung``),
    the prompt in one pass, then the continuation ``block`` tokens a pass."""
    rung = HFRung(model, "teacher")
    seq = np.asarray([*prompt, *ref], dtype=np.int64)
    n = len(prompt)
    parts = [rung.score(seq[:n], n)]
    for s in range(0, len(ref), block):
        parts.append(rung.score(seq[: n + min(s + block, len(ref))], n + s)[1:])
    logits = torch.cat(parts)
    top = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(logits, dim=-1).gather(-1, top.indices)
    margin = (top.values[:, 0] - top.values[:, 1]) if top.values.shape[1] > 1 else top.values[:, 0]
    return top.indices.numpy(), probs.numpy().astype(np.float32), margin.numpy()


def maxgram_along(
    prompt: Sequence[int],
    ref: Sequence[int],
    spec: MaxGramSpec,
    bigram: dict[int, int] | None = None,
    depth: int = MAX_RUN,
) -> tuple[np.ndarray, float]:
    """Max-Gram's proposal of ``depth`` tokens from every position of the reference (the index
    holding prompt + ``ref[:s]``), padded with -1, and the mean seconds per proposal."""
    mag = MaxGram(spec.max_ngram, spec.min_ngram, bigram)
    mag.reset(prompt)
    ctx = [int(t) for t in prompt]
    out = np.full((len(ref), depth), -1, dtype=np.int64)
    spent = 0.0
    for s, token in enumerate(ref):
        start = time.perf_counter()
        proposal = mag.propose(ctx[-spec.max_ngram :], depth)
        spent += time.perf_counter() - start
        out[s, : len(proposal)] = proposal
        mag.extend([token])
        ctx.append(int(token))
    return out, spent / max(1, len(ref))


def _progress(console: Console | None) -> Progress:
    from rich.console import Console as RichConsole
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = console or RichConsole(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=console.quiet,
    )


def _generate(cascade: Cascade, prompt: Sequence[int], max_new: int, eos: Sequence[int]) -> tuple:
    """Run one generation; (ids, wall seconds, events). Frees the rungs' caches after."""
    start = time.perf_counter()
    events = list(cascade.generate(prompt, max_new, eos))
    wall = time.perf_counter() - start
    for rung in cascade.rungs:
        rung.reset()
    ids = [t for e in events if isinstance(e, Commit) for t in e.tokens]
    return ids, wall, events


def calibrate(
    loaded: LoadedLadder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    lengths: Sequence[int] = COST_LENGTHS,
    repeats: int = 3,
    progress: Progress | None = None,
) -> Calibration:
    """Measure costs and acceptance statistics of ``loaded`` on ``prompts`` (token ids)."""
    spec = loaded.spec
    models = [m.model for m in loaded.models]
    eos = loaded.eos_ids
    records: list[PromptRecord] = []

    def task(description: str, total: int) -> Callable[[], None]:
        if progress is None:
            return lambda: None
        tid = progress.add_task(description, total=total)
        return lambda: progress.advance(tid)

    ar = loaded.cascade(drafters=[], maxgram=False, k_matrix=[], sampling=Sampling())
    if prompts:
        _generate(ar, prompts[0], 2, eos)  # warm-up: first calls are slow
    step = task("reference continuations (target, greedy)", len(prompts))
    for prompt in prompts:
        ids, wall, events = _generate(ar, prompt, max_new_tokens, eos)
        reviews = [e for e in events if isinstance(e, Review)]
        finish = next((e.reason for e in events if isinstance(e, Finish)), "length")
        records.append(
            PromptRecord(
                [int(t) for t in prompt],
                ids,
                finish,
                wall,
                sum(r.forward_s for r in reviews),
                len(reviews),
            )
        )
        step()
    step = task("teacher forcing (each rung along each reference)", len(models) * len(records))
    for model in models:
        for rec in records:
            ids, probs, margin = teacher_force(model, rec.prompt, rec.ref)
            rec.top_ids.append(ids)
            rec.top_p.append(probs)
            if rec.margin is None:
                rec.margin = margin
            step()
    maxgram_s = 0.0
    if spec.maxgram:
        step = task("Max-Gram along the references", len(records))
        spent = []
        for rec in records:
            rec.mag, per_call = maxgram_along(rec.prompt, rec.ref, spec.maxgram, loaded.bigram)
            spent.append(per_call)
            step()
        maxgram_s = statistics.fmean(spent) if spent else 0.0
    step = task("forward cost by block length", len(models) + 1)
    probe = max(records, key=lambda r: len(r.ref)) if records else None
    context = probe.prompt if probe else [0] * 8
    cont = probe.ref if probe else []
    costs = []
    for model in models:
        costs.append(measure_cost(model, context, cont, lengths, repeats))
        step()
    vocab = int(getattr(models[0].config, "vocab_size", 0) or len(loaded.tokenizer))
    argmax = measure_vocab_op(_argmax, vocab, repeats=repeats)
    softmax = measure_vocab_op(_softmax, vocab, repeats=repeats)
    step()
    outside = sum(r.ar_wall_s - r.ar_forward_s for r in records)
    n_reviews = sum(r.ar_reviews for r in records)
    return Calibration(
        names=spec.rung_names,
        n_neural=len(models),
        maxgram=spec.maxgram,
        bigram=loaded.bigram,
        costs=costs,
        argmax=argmax,
        softmax=softmax,
        overhead_s=max(0.0, outside / n_reviews) if n_reviews else 0.0,
        maxgram_s=maxgram_s,
        records=records,
        max_new_tokens=max_new_tokens,
        eos_ids=list(eos),
    )


# ---------------------------------------------------------------------------- statistics


def run_lengths(match: np.ndarray) -> np.ndarray:
    """For a boolean vector: how many consecutive Trues start at each index."""
    out = np.zeros(len(match) + 1, dtype=np.int64)
    for i in range(len(match) - 1, -1, -1):
        out[i] = out[i + 1] + 1 if match[i] else 0
    return out[:-1]


def prefix_lengths(proposals: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For proposals [S, depth] made from each position s: how many leading tokens equal
    ``truth[s:]`` (padding -1 never matches)."""
    s, depth = proposals.shape
    if s == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(s)[:, None] + np.arange(depth)[None, :]
    valid = idx < len(truth)
    want = np.asarray(truth)[np.minimum(idx, len(truth) - 1)]
    eq = (proposals == want) & valid & (proposals >= 0)
    return np.cumprod(eq, axis=1).sum(axis=1)


def survival(runs: np.ndarray, depth: int = MAX_RUN) -> np.ndarray:
    """S[j] = P(run >= j) for j = 0..depth + 1 (S[0] = 1)."""
    if len(runs) == 0:
        return np.concatenate([[1.0], np.zeros(depth + 1)])
    return np.array([np.mean(runs >= j) for j in range(depth + 2)])


@dataclass
class Agreement:
    """Greedy agreement between rungs along the reference continuations.

    Keys are (reviewer, drafter) in ladder numbering (Max-Gram last). ``rate``: share of
    positions where the two greedy tokens match (Max-Gram: its first proposed token);
    ``survival[j]``: share of positions from which at least j consecutive tokens match;
    ``mean_run``: mean of those run lengths (Max-Gram: mean accepted prefix of a proposal).
    """

    names: list[str]
    rate: dict[tuple[int, int], float]
    survival: dict[tuple[int, int], np.ndarray]
    mean_run: dict[tuple[int, int], float]
    positions: int


def agreement(cal: Calibration, depth: int = MAX_RUN) -> Agreement:
    """Pairwise agreement of every reviewer with every rung below it (and Max-Gram)."""
    n = cal.n_neural
    mag = n if cal.maxgram else None
    pairs = [(r, d) for r in range(n) for d in range(r + 1, n)]
    if mag is not None:
        pairs += [(r, mag) for r in range(n)]
    runs: dict[tuple[int, int], list[np.ndarray]] = {p: [] for p in pairs}
    firsts: dict[tuple[int, int], list[np.ndarray]] = {p: [] for p in pairs}
    for rec in cal.records:
        if not rec.ref:
            continue
        top1 = [rec.top1(r) for r in range(n)]
        for r, d in pairs:
            if d == mag:
                assert rec.mag is not None
                lens = prefix_lengths(rec.mag[:, :depth], top1[r])
                runs[(r, d)].append(lens)
                firsts[(r, d)].append(lens > 0)
            else:
                match = top1[r] == top1[d]
                runs[(r, d)].append(run_lengths(match))
                firsts[(r, d)].append(match)
    rate, surv, mean_run = {}, {}, {}
    for p in pairs:
        allruns = np.concatenate(runs[p]) if runs[p] else np.zeros(0, dtype=np.int64)
        allfirst = np.concatenate(firsts[p]) if firsts[p] else np.zeros(0, dtype=bool)
        rate[p] = float(allfirst.mean()) if len(allfirst) else 0.0
        surv[p] = survival(np.minimum(allruns, depth + 1), depth)
        mean_run[p] = float(allruns.mean()) if len(allruns) else 0.0
    positions = sum(len(r.ref) for r in cal.records)
    return Agreement(cal.names, rate, surv, mean_run, positions)


# ---------------------------------------------------------------------------- analytic model


def expected_tokens(a: float, g: int) -> float:
    """Expected tokens per target review with g drafted tokens each accepted with probability
    a (independently, stopping at the first rejection): (1 - a^(g+1)) / (1 - a)."""
    if a >= 1.0:
        return float(g + 1)
    return (1.0 - a ** (g + 1)) / (1.0 - a)


def ewif(a: float, g: int, c: float) -> float:
    """Expected walltime improvement factor of one drafter (Leviathan et al. 2023): acceptance
    rate a, block length g, cost coefficient c (drafter forward / target forward):
    (1 - a^(g+1)) / ((1 - a)(g c + 1))."""
    return expected_tokens(a, g) / (g * c + 1.0)


def best_ewif(a: float, c: float, max_g: int = 16) -> tuple[int, float]:
    """The block length g in 1..max_g with the highest EWIF, and that EWIF."""
    return max(((g, ewif(a, g, c)) for g in range(1, max_g + 1)), key=lambda x: x[1])


def block_segments(k: Sequence[Sequence[int]], reviewer: int, limit: int) -> list[tuple[int, int]]:
    """(drafter, tokens) segments of the block ``reviewer`` checks, as ``Cascade._block``
    builds it: cumulative counts along the reviewer's row, at most ``limit`` tokens."""
    if reviewer >= len(k):
        return []
    segments, end, have = [], 0, 0
    for col in range(reviewer, len(k)):
        end = min(end + k[reviewer][col], limit)
        if end - have > 0:
            segments.append((col + 1, end - have))
            have = end
    return segments


@dataclass
class Prediction:
    """A predicted speed: speedup over ``ar``, expected tokens per target review, and (replay
    only) predicted seconds per calibration prompt for the candidate and for ``ar``."""

    speedup: float
    tokens_per_review: float
    seconds: list[float] = field(default_factory=list)
    ar_seconds: list[float] = field(default_factory=list)
    exact: bool = True

    def speedup_on(self, prompts: Iterable[int]) -> float | None:
        """Predicted speedup over a subset of the calibration prompts (replay only)."""
        idx = list(prompts)
        cand = sum(self.seconds[i] for i in idx)
        return sum(self.ar_seconds[i] for i in idx) / cand if idx and cand > 0 else None


class AnalyticModel:
    """EWIF extended to the cascade: a recursive expected-cost model.

    A reviewer's block is a list of segments (drafter, length). The reviewer keeps position j
    of the block, given it kept all before, with probability ``accept(reviewer, drafter, u)``
    where u is j's offset within its drafter's segment: S[u + 1] / S[u] from the measured
    run-length survival S of that (reviewer, drafter) pair (S[u] = a^u gives the i.i.d. case).
    So P(A = a) = prod_{j<a} p_j (1 - p_a), and a review yields E[A] + 1 tokens.

    Time: a review by rung r of m proposals costs ``cost[r](m)`` + ``overhead_s`` + the drafting
    of its block; Max-Gram costs ``maxgram_s`` per segment; a neural drafter d producing n
    tokens costs F_d(n) = T_d(b) + sum_a P(A = a) F_d(n - a - 1), b = its row's block cut to
    n - 1 tokens (as the engine cuts it), T_d(b) that review's time: the expected number of
    its reviews times their cost, recursively down the ladder. The target's steady state gives
    speedup = E[tokens per target review] * (cost[0](0) + overhead) / E[time per review]. With
    one drafter, constant costs and S[u] = a^u this is exactly ``ewif``. Lenience is ignored
    (it equals 1 here), and so are the ends of generations and the prompt's first pass.
    """

    def __init__(
        self,
        costs: Sequence[Callable[[int], float]],
        survival: dict[tuple[int, int], np.ndarray],
        has_maxgram: bool,
        maxgram_s: float = 0.0,
        overhead_s: float = 0.0,
    ) -> None:
        self.costs = list(costs)
        self.n_neural = len(self.costs)
        self.has_maxgram = has_maxgram
        self.maxgram_s = maxgram_s
        self.overhead_s = overhead_s
        self._cond: dict[tuple[int, int], np.ndarray] = {}
        for key, s in survival.items():
            s = np.asarray(s, dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                cond = np.where(s[:-1] > 0, s[1:] / np.where(s[:-1] > 0, s[:-1], 1), 0.0)
            self._cond[key] = np.clip(cond, 0.0, 1.0)

    @classmethod
    def from_calibration(cls, cal: Calibration, agree: Agreement) -> AnalyticModel:
        """The model with this machine's measured costs and acceptance."""
        return cls(
            [c.review for c in cal.costs],
            agree.survival,
            cal.maxgram is not None,
            cal.maxgram_s,
            cal.overhead_s,
        )

    def accept(self, reviewer: int, drafter: int, offset: int) -> float:
        """P(reviewer keeps the token at ``offset`` of drafter's segment | kept the ones before)."""
        cond = self._cond.get((reviewer, drafter))
        if cond is None or len(cond) == 0:
            return 0.0
        return float(cond[min(offset, len(cond) - 1)])

    def _is_maxgram(self, rung: int) -> bool:
        return self.has_maxgram and rung == self.n_neural

    def _distribution(self, reviewer: int, segments: list[tuple[int, int]]) -> list[float]:
        """P(A = a) for a = 0..m accepted proposals."""
        dist, reach = [], 1.0
        for drafter, n in segments:
            for u in range(n):
                p = self.accept(reviewer, drafter, u)
                dist.append(reach * (1.0 - p))
                reach *= p
        dist.append(reach)
        return dist

    def predict(self, k: Sequence[Sequence[int]]) -> Prediction:
        """Predicted steady-state speedup over ``ar`` and tokens per target review of ``k``."""
        memo: dict[tuple[int, int], float] = {}

        def draft_time(segments: list[tuple[int, int]]) -> float:
            return sum(
                self.maxgram_s if self._is_maxgram(d) else produce(d, n) for d, n in segments
            )

        def produce(rung: int, n: int) -> float:
            if n <= 0:
                return 0.0
            key = (rung, n)
            if key in memo:
                return memo[key]
            segments = block_segments(k, rung, n - 1)
            m = sum(c for _, c in segments)
            spent = self.costs[rung](m) + self.overhead_s + draft_time(segments)
            dist = self._distribution(rung, segments)
            spent += sum(p * produce(rung, n - a - 1) for a, p in enumerate(dist) if p > 0)
            memo[key] = spent
            return spent

        segments = block_segments(k, 0, 10**9)
        m = sum(c for _, c in segments)
        dist = self._distribution(0, segments)
        tokens = sum(a * p for a, p in enumerate(dist)) + 1.0
        spent = self.costs[0](m) + self.overhead_s + draft_time(segments)
        ar = self.costs[0](0) + self.overhead_s
        return Prediction(tokens * ar / spent, tokens)


# ---------------------------------------------------------------------------- replay model


class ReplayRung:
    """A neural rung replayed from its teacher-forced record.

    ``score`` answers, for each position asked, the logits recorded at that position of the
    reference continuation (top-K tokens at their log-probabilities, the rest of a compact
    vocabulary spread thin below them; past the record, a dummy token nobody proposes), and
    logs how many tokens the real rung would have fed (the same cache arithmetic as
    ``HFRung``), which is what its forward pass costs.
    """

    def __init__(self, name: str, table: torch.Tensor, prompt_len: int) -> None:
        self.name = name
        self.table = table
        self.prompt_len = prompt_len
        self.fed: list[int] = []
        self.seconds = 0.0  # spent in ``score`` itself (not part of the engine's overhead)
        self.tokens = np.empty(0, dtype=np.int64)
        self._fresh = True

    def reset(self) -> None:
        self.tokens = np.empty(0, dtype=np.int64)
        self._fresh = True
        self.fed = []
        self.seconds = 0.0

    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        began = time.perf_counter()
        keep = 0 if self._fresh else min(common_prefix(self.tokens, seq), start - 1)
        self._fresh = False
        self.fed.append(len(seq) - keep)
        self.tokens = seq
        first = start - self.prompt_len
        out = self.table[first : len(seq) - self.prompt_len + 1]
        self.seconds += time.perf_counter() - began
        return out


def _replay_table(
    ids: np.ndarray,
    probs: np.ndarray,
    rows: int,
    vocab: int,
    dummy: int,
    force: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits [rows, vocab] whose softmax puts each recorded top-K token at its recorded
    probability, the remaining mass thinly on the rest, and (``force``) the given token first."""
    table = np.full((rows, vocab), -60.0, dtype=np.float32)
    n = min(len(ids), rows)
    p = probs[:n].astype(np.float64)
    kk = p.shape[1]
    rest = np.clip(1.0 - p.sum(1), 1e-12, None) / max(vocab - kk, 1)
    floor = np.log(np.minimum(rest, p[:, -1] * 0.5).clip(1e-30))
    table[:n] = floor[:, None]
    np.put_along_axis(table[:n], ids[:n], np.log(p.clip(1e-30)).astype(np.float32), axis=1)
    if force is not None:
        for t, token in enumerate(force[:n]):
            if table[t].argmax() != token:
                table[t, token] = table[t].max() + 1.0
    table[n:, dummy] = 0.0
    return torch.from_numpy(table)


@dataclass
class _ReplayPrompt:
    rungs: list[ReplayRung]
    maxgram: MaxGram | None
    prompt: list[int]
    ref: list[int]
    eos: list[int]


class Replay:
    """Predicts any k-matrix and lenience by running the engine over the recorded prompts
    (see the module docstring): exact for what the target accepts, measured costs for every
    forward pass the engine would make."""

    def __init__(self, cal: Calibration) -> None:
        self.cal = cal
        self.prompts = [self._build(rec) for rec in cal.records]
        self._ar: list[float] | None = None

    def _build(self, rec: PromptRecord) -> _ReplayPrompt:
        cal = self.cal
        n = cal.n_neural
        real: set[int] = set(rec.prompt) | set(rec.ref) | set(cal.eos_ids)
        for ids in rec.top_ids:
            real.update(int(t) for t in ids.ravel())
        bigram = cal.bigram or {}
        frontier = [t for t in real if t in bigram]
        while frontier:  # Max-Gram's fallback chains through the bigram table
            nxt = [bigram[t] for t in frontier if bigram[t] not in real]
            real.update(nxt)
            frontier = [t for t in nxt if t in bigram]
        order = sorted(real)
        index = {t: i for i, t in enumerate(order)}
        vocab = len(order) + n
        rows = max(cal.max_new_tokens, len(rec.ref)) + 2
        rungs = []
        for r in range(n):
            ids = np.vectorize(index.__getitem__, otypes=[np.int64])(rec.top_ids[r])
            force = [index[t] for t in rec.ref] if r == 0 else None
            table = _replay_table(ids, rec.top_p[r], rows, vocab, len(order) + r, force)
            rungs.append(ReplayRung(cal.names[r], table, len(rec.prompt)))
        mag = None
        if cal.maxgram:
            compact = {index[a]: index[b] for a, b in bigram.items() if a in index and b in index}
            mag = MaxGram(cal.maxgram.max_ngram, cal.maxgram.min_ngram, compact)
        return _ReplayPrompt(
            rungs,
            mag,
            [index[t] for t in rec.prompt],
            [index[t] for t in rec.ref],
            [index[t] for t in cal.eos_ids if t in index],
        )

    def _run(
        self, p: _ReplayPrompt, k: Sequence[Sequence[int]], lenience: Lenience, floor: PerDrafter
    ) -> tuple:
        """Replay one prompt: (predicted seconds, target reviews, output equals reference).

        Predicted seconds = the measured forward cost of every pass at the tokens it feeds +
        the replay's own wall time outside the replayed forwards (the engine's Python: blocks,
        reviews, Max-Gram, events) + the full-vocabulary argmax (and, lenient, softmax) that a
        real review adds over the replay's compact vocabulary.
        """
        cal = self.cal
        full = len(k) > 0
        rungs = p.rungs if full else p.rungs[:1]
        mag = p.maxgram if full else None
        inner = len(rungs) - 1
        len_ = lenience if isinstance(lenience, int | float) else tuple(lenience)[:inner]
        floor_ = floor if isinstance(floor, int | float) else tuple(floor)[:inner]
        cascade = Cascade(rungs, mag, k, len_, Sampling(), 0, floor_)
        lenient = any(v > 1 for v in cascade.lenience)
        out: list[int] = []
        target_reviews, vocab_s = 0, 0.0
        began = time.perf_counter()
        for event in cascade.generate(p.prompt, cal.max_new_tokens, p.eos):
            if isinstance(event, Review):
                target_reviews += event.reviewer == 0
                rows = len(event.proposed) + 1
                vocab_s += cal.argmax(rows) + (cal.softmax(rows) if lenient else 0.0)
            elif isinstance(event, Commit):
                out += event.tokens
        engine_s = time.perf_counter() - began - sum(r.seconds for r in rungs)
        seconds = sum(cal.costs[r](n) for r, rung in enumerate(rungs) for n in rung.fed)
        return seconds + max(0.0, engine_s) + vocab_s, target_reviews, out == p.ref

    def ar_seconds(self) -> list[float]:
        """Predicted seconds of plain autoregressive decoding per prompt."""
        if self._ar is None:
            self._ar = [self._run(p, [], 1.0, 0.0)[0] for p in self.prompts]
        return self._ar

    def predict(
        self, k: Sequence[Sequence[int]], lenience: Lenience = 1.0, floor: PerDrafter = 0.0
    ) -> Prediction:
        """Predicted speedup over ``ar`` (ratio of summed seconds) and tokens per target
        review of ``k`` with ``lenience`` and min_confidence ``floor``, over all calibration
        prompts."""
        ar = self.ar_seconds()
        runs = [self._run(p, k, lenience, floor) for p in self.prompts]
        seconds = [r[0] for r in runs]
        tokens = sum(len(p.ref) for p in self.prompts)
        reviews = sum(r[1] for r in runs)
        total = sum(seconds)
        return Prediction(
            speedup=sum(ar) / total if total > 0 else 0.0,
            tokens_per_review=tokens / reviews if reviews else 0.0,
            seconds=seconds,
            ar_seconds=list(ar),
            exact=all(r[2] for r in runs),
        )


# ---------------------------------------------------------------------------- candidates


def used_rungs(k: Sequence[Sequence[int]]) -> set[int]:
    """The drafting rungs a k-matrix ever calls (reachable from the target's row)."""
    used: set[int] = set()
    stack = [0]
    while stack:
        r = stack.pop()
        if r >= len(k):
            continue
        for c in range(r, len(k)):
            if k[r][c] > 0 and c + 1 not in used:
                used.add(c + 1)
                stack.append(c + 1)
    return used


def canonical(k: Sequence[Sequence[int]]) -> KMatrix | None:
    """``k`` with the rows of rungs it never calls zeroed (same cascade), or None when the
    target's row is empty (that is plain ``ar``)."""
    used = used_rungs(k)
    if not used:
        return None
    return tuple(
        tuple(int(v) if (r == 0 or r in used) else 0 for v in row) for r, row in enumerate(k)
    )


def reduce(
    k: Sequence[Sequence[int]], n_drafters: int, has_maxgram: bool
) -> tuple[list[int], bool, list[list[int]]]:
    """The sub-ladder a k-matrix really uses: the neural drafters it calls (1-based), whether
    it calls Max-Gram, and the k-matrix over just those rungs."""
    used = used_rungs(k)
    kept = [d for d in range(1, n_drafters + 1) if d in used]
    use_mag = has_maxgram and (n_drafters + 1) in used
    old = [0, *kept] + ([n_drafters + 1] if use_mag else [])
    size = len(old) - 1
    sub = [[int(k[old[i]][old[j + 1] - 1]) for j in range(size)] for i in range(size)]
    return kept, use_mag, sub


def family(k: Sequence[Sequence[int]]) -> str:
    """'vertical' (all entries on the diagonal, some inner row used), 'horizontal' (only the
    target's row, mixing drafters), 'single' (one drafter for the target, nothing below) or
    'combined'."""
    cells = [(r, c) for r, row in enumerate(k) for c, v in enumerate(row) if v > 0]
    diagonal = all(r == c for r, c in cells)
    top_only = all(r == 0 for r, _ in cells)
    if diagonal and top_only:
        return "single"
    if diagonal:
        return "vertical"
    if top_only:
        return "horizontal"
    return "combined"


def is_vertical(k: Sequence[Sequence[int]]) -> bool:
    """Only diagonal entries (each reviewer's block from the rung right below it)."""
    return all(v == 0 for r, row in enumerate(k) for c, v in enumerate(row) if c != r)


def is_horizontal(k: Sequence[Sequence[int]]) -> bool:
    """Only the target's row (every neural drafter decodes autoregressively)."""
    return all(v == 0 for row in k[1:] for v in row)


def candidate_grid(
    d: int, grid: Sequence[int] = GRID, limit: int = GRID_LIMIT, seed: int = 0
) -> list[KMatrix]:
    """Every distinct (canonical) D x D upper-triangular k-matrix with entries from ``grid``
    (for D = 1, every block length 1..16); a coarser grid, then a seeded random sample of
    ``limit``, when there are too many."""
    if d == 0:
        return []
    if d == 1:
        return [((g,),) for g in range(1, 17)]
    cells = [(r, c) for r in range(d) for c in range(r, d)]
    if len(grid) ** len(cells) > limit:
        grid = SMALL_GRID
    total = len(grid) ** len(cells)
    if total > limit:
        rng = random.Random(seed)
        assignments: Iterable[tuple[int, ...]] = (
            tuple(rng.choice(grid) for _ in cells) for _ in range(limit)
        )
    else:
        assignments = itertools.product(grid, repeat=len(cells))
    seen: set[KMatrix] = set()
    out = []
    for values in assignments:
        k = [[0] * d for _ in range(d)]
        for (r, c), v in zip(cells, values, strict=True):
            k[r][c] = v
        can = canonical(k)
        if can is not None and can not in seen:
            seen.add(can)
            out.append(can)
    return out


def neighbours(k: KMatrix, grid: Sequence[int] = GRID) -> list[KMatrix]:
    """k-matrices one step away: each upper-triangular entry moved by +-1 or to the adjacent
    grid value (entries kept within 0..16)."""
    out: set[KMatrix] = set()
    d = len(k)
    for r in range(d):
        for c in range(r, d):
            v = k[r][c]
            above = [g for g in grid if g > v]
            below = [g for g in grid if g < v]
            steps = {v - 1, v + 1} | set(above[:1]) | set(below[-1:])
            for w in steps:
                if 0 <= w <= 16:
                    rows = [list(row) for row in k]
                    rows[r][c] = w
                    can = canonical(rows)
                    if can is not None and can != k:
                        out.add(can)
    return sorted(out)


def k_text(k: Sequence[Sequence[int]]) -> str:
    """'4,2;0,6' (the form ``--k-matrix`` reads)."""
    return ";".join(",".join(str(v) for v in row) for row in k) or "-"


@dataclass
class Measured:
    """What the real runs of one setting gave, prompt by prompt."""

    walls: list[float] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    tokens: int = 0
    target_forwards: int = 0
    identical: int = 0
    divergences: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return sum(self.walls)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.target_forwards if self.target_forwards else 0.0


@dataclass
class Candidate:
    """One setting: k-matrix (over the full ladder; unused rungs have zero columns), lenience,
    min_confidence (``floor``), its predictions and, if it ran, its measurements."""

    k: KMatrix
    lenience: Lenience = 1.0
    floor: PerDrafter = 0.0
    label: str = ""
    analytic: float | None = None
    pred: Prediction | None = None
    measured: Measured | None = None

    @property
    def key(self) -> tuple:
        return (self.k, self.lenience, self.floor)

    @property
    def speedup(self) -> float:
        """The replay's predicted speedup (0 when not predicted)."""
        return self.pred.speedup if self.pred else 0.0

    def measured_speedup(self, ar: Measured) -> float | None:
        """Measured wall-time speedup over ``ar`` on the prompts both ran."""
        if not self.measured or not self.measured.walls:
            return None
        n = min(len(self.measured.walls), len(ar.walls))
        mine = sum(self.measured.walls[:n])
        return sum(ar.walls[:n]) / mine if mine > 0 else None


def _per_drafter_text(value: PerDrafter) -> str:
    if isinstance(value, int | float):
        return f"{value:g}"
    values = set(value)
    return f"{next(iter(values)):g}" if len(values) == 1 else ",".join(f"{v:g}" for v in value)


def _kept(value: PerDrafter, kept: Sequence[int]) -> PerDrafter | list[float]:
    """A full-ladder per-drafter setting for the sub-ladder of drafters ``kept`` (1-based)."""
    return value if isinstance(value, int | float) else [value[d - 1] for d in kept]


def _spec_value(values: Sequence[float], neutral: float) -> PerDrafter:
    """A ladder's per-drafter setting as a candidate holds it: one number when all agree."""
    if not values or len(set(values)) == 1:
        return float(values[0]) if values else neutral
    return tuple(float(v) for v in values)


def _has_inner_reviews(k: KMatrix, n_neural: int) -> bool:
    """Whether some neural drafter reviews drafts (where lenience acts)."""
    return any(any(k[r]) for r in range(1, min(len(k), n_neural)))


def _uses_neural_drafter(k: KMatrix, n_neural: int) -> bool:
    """Whether some neural drafter drafts (where min_confidence acts)."""
    return any(d < n_neural for d in used_rungs(k))


def setting_key(k: KMatrix, lenience: Lenience, floor: PerDrafter, n_neural: int) -> tuple:
    """(k, lenience, floor) with the settings that cannot act on ``k`` made neutral: lenience
    without inner reviews, min_confidence without a neural drafter."""
    if not _has_inner_reviews(k, n_neural):
        lenience = 1.0
    if not _uses_neural_drafter(k, n_neural):
        floor = 0.0
    return (k, lenience, floor)


def current_setting(spec: LadderSpec) -> tuple:
    """The ladder's own (k-matrix, lenience, min_confidence), as ``setting_key`` keys it."""
    k = canonical(spec.k_matrix)
    lenience, floor = _spec_value(spec.lenience, 1.0), _spec_value(spec.min_confidence, 0.0)
    return setting_key(k, lenience, floor, len(spec.drafters) + 1) if k else (None, 1.0, 0.0)


def search(
    cal: Calibration,
    spec: LadderSpec,
    replay: Replay,
    model: AnalyticModel,
    seed: int = 0,
    pool_size: int = 40,
    progress: Progress | None = None,
) -> list[Candidate]:
    """Rank the grid with the analytic model and replay the best of it (and the best of each
    family and rung subset, and the ladder's current setting); try min_confidence values on
    the best; refine around the replay's best by hill climbing over k-matrix entries and
    min_confidence; try lenience values. Return candidates, best predicted first."""
    d = spec.drafting_rungs
    grid = candidate_grid(d, seed=seed)
    tid = (
        progress.add_task("ranking k-matrices (analytic model)", total=len(grid))
        if progress
        else None
    )
    scored: list[tuple[float, KMatrix]] = []
    for k in grid:
        scored.append((model.predict(k).speedup, k))
        if progress is not None:
            progress.advance(tid)
    scored.sort(key=lambda x: -x[0])
    analytic = {k: s for s, k in scored}
    pool: list[KMatrix] = [k for _, k in scored[:pool_size]]
    groups: dict[Any, list[KMatrix]] = {}
    for _, k in scored:
        for g in (("vertical", is_vertical(k)), ("horizontal", is_horizontal(k))):
            if g[1]:
                groups.setdefault(g[0], []).append(k)
        groups.setdefault(frozenset(used_rungs(k)), []).append(k)
    for ks in groups.values():
        pool += ks[:3]
    current = canonical(spec.k_matrix)
    if current is not None:
        pool.append(current)
    pool = list(dict.fromkeys(pool))

    out: dict[tuple, Candidate] = {}
    n = cal.n_neural

    def evaluate(k: KMatrix, lenience: Lenience = 1.0, floor: PerDrafter = 0.0) -> Candidate:
        key = setting_key(k, lenience, floor, n)
        k, lenience, floor = key
        if key not in out:
            if k not in analytic:
                analytic[k] = model.predict(k).speedup
            pred = replay.predict(k, lenience, floor)
            out[key] = Candidate(k, lenience, floor, analytic=analytic[k], pred=pred)
        return out[key]

    def best(count: int, keep: Callable[[Candidate], bool] = lambda c: True) -> list[Candidate]:
        return [c for c in sorted(out.values(), key=lambda c: -c.speedup) if keep(c)][:count]

    def stage(label: str, settings: Sequence[tuple]) -> None:
        tid = progress.add_task(label, total=len(settings)) if progress else None
        for setting in settings:
            evaluate(*setting)
            if progress is not None:
                progress.advance(tid)

    stage("replaying candidates", [(k,) for k in pool])
    if current is not None:
        evaluate(*current_setting(spec))
    neural = best(6, lambda c: _uses_neural_drafter(c.k, n))
    stage("trying min_confidence", [(c.k, 1.0, f) for c in neural for f in MIN_CONFIDENCES])

    budget = 120  # replays spent refining
    tid = progress.add_task("refining around the best", total=budget) if progress else None
    frontier = best(3)
    while frontier and budget > 0:
        improved = []
        for cand in frontier:
            for setting in _nearby(cand):
                if budget <= 0:
                    break
                if setting_key(*setting, n) in out:
                    continue
                budget -= 1
                new = evaluate(*setting)
                if progress is not None:
                    progress.advance(tid)
                if new.speedup > cand.speedup:
                    improved.append(new)
        frontier = sorted(improved, key=lambda c: -c.speedup)[:3]
    if progress is not None:
        progress.update(tid, completed=120)

    lenient = best(4, lambda c: _has_inner_reviews(c.k, n) and c.lenience == 1.0)
    stage("trying lenience", [(c.k, v, c.floor) for c in lenient for v in LENIENCES[1:]])
    return sorted(out.values(), key=lambda c: (-c.speedup, _lenience_rank(c.lenience)))


def _nearby(cand: Candidate) -> list[tuple]:
    """Settings one step from ``cand``: a k-matrix neighbour, or the next min_confidence up or
    down (when it is one of ``MIN_CONFIDENCES``)."""
    out = [(k, cand.lenience, cand.floor) for k in neighbours(cand.k)]
    if isinstance(cand.floor, int | float) and cand.floor in MIN_CONFIDENCES:
        i = MIN_CONFIDENCES.index(cand.floor)
        for j in (i - 1, i + 1):
            if 0 <= j < len(MIN_CONFIDENCES):
                out.append((cand.k, cand.lenience, MIN_CONFIDENCES[j]))
    return out


def _lenience_rank(lenience: Lenience) -> float:
    return lenience if isinstance(lenience, int | float) else max(lenience)


# ---------------------------------------------------------------------------- real runs


def pick_for_measurement(
    ranked: Sequence[Candidate],
    current: Candidate | None,
    n_neural: int,
    has_maxgram: bool,
    budget_s: float,
    ar_round_s: float,
    most: int = 7,
) -> list[Candidate]:
    """The settings to run for real, in priority order: the best predicted, the current one,
    the best with the current k-matrix (what min_confidence and lenience alone bring), the
    best lenient one (its outputs checked like every other's), the best vertical-only and
    horizontal-only, the best without the smallest neural drafter or without Max-Gram; as many
    as one round over one prompt fits in the budget (at least the best and the current)."""
    by_speed = [c for c in ranked if c.pred]
    wanted: list[Candidate] = []

    def add(c: Candidate | None) -> None:
        if c is not None and all(c.key != w.key for w in wanted):
            wanted.append(c)

    def best(pred: Callable[[Candidate], bool]) -> Candidate | None:
        return next((c for c in by_speed if pred(c)), None)

    add(by_speed[0] if by_speed else None)
    add(current)
    add(best(lambda c: current is not None and c.k == current.k))
    add(best(lambda c: c.lenience != 1.0))
    add(best(lambda c: is_vertical(c.k) and family(c.k) != "single"))
    add(best(lambda c: is_horizontal(c.k) and family(c.k) != "single"))
    d = len(by_speed[0].k) if by_speed else 0
    if n_neural > 1:
        smallest = n_neural - 1
        add(best(lambda c: smallest not in used_rungs(c.k)))
    if has_maxgram:
        add(best(lambda c: d not in used_rungs(c.k)))
    wanted = wanted[:most]
    keep = min(2, len(wanted))
    while len(wanted) > keep:
        round_s = ar_round_s + sum(c.pred.seconds[0] for c in wanted if c.pred)
        if round_s <= budget_s:
            break
        wanted.pop()
    return wanted


def divergence(got: list[int], want: list[int], rec: PromptRecord | None, tie: float = 1e-3) -> str:
    """Where ``got`` parts from ``want`` (ar's), with the target's top-2 logit margin there
    (from the teacher-forced pass) and whether that is a near-tie or a bug."""
    i = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if i is None:
        return f"lengths differ ({len(got)} vs {len(want)} tokens)"
    note = ""
    if (
        rec is not None
        and rec.margin is not None
        and rec.ref[:i] == want[:i]
        and i < len(rec.margin)
    ):
        margin = float(rec.margin[i])
        kind = (
            "a near-tie: rounding, not an algorithmic error"
            if margin <= tie
            else "NOT a near-tie: a bug"
        )
        note = f", target top-2 logit margin there {margin:.3g} ({kind})"
    return f"token {i}: {got[i]} vs ar's {want[i]}{note}"


def measure_candidates(
    loaded: LoadedLadder,
    cal: Calibration,
    chosen: Sequence[Candidate],
    ar: Measured,
    current: Candidate | None,
    budget_s: float,
    progress: Progress | None = None,
) -> int:
    """Run ``ar`` and each chosen setting for real, interleaved prompt by prompt (the order
    rotating), until the budget would be exceeded; fill in each ``measured``; return how many
    prompts ran. Every output is compared with ``ar``'s on the same prompt."""
    spec = loaded.spec
    eos = loaded.eos_ids
    tie = near_tie(next(loaded.models[0].model.parameters()).dtype)
    runners: list[tuple[Measured, Cascade, Candidate | None]] = [
        (ar, loaded.cascade(drafters=[], maxgram=False, k_matrix=[], sampling=Sampling()), None)
    ]
    for cand in chosen:
        kept, use_mag, sub = reduce(cand.k, len(spec.drafters), spec.maxgram is not None)
        cascade = loaded.cascade(
            drafters=kept,
            maxgram=use_mag,
            k_matrix=sub,
            lenience=_kept(cand.lenience, kept),
            min_confidence=_kept(cand.floor, kept),
            sampling=Sampling(),
        )
        cand.measured = Measured()
        runners.append((cand.measured, cascade, cand))
    start = time.perf_counter()
    last_round = 0.0
    done = 0
    tid = progress.add_task("real runs, interleaved", total=len(cal.records)) if progress else None
    for i, rec in enumerate(cal.records):
        elapsed = time.perf_counter() - start
        if i > 0 and elapsed + last_round > budget_s:
            break
        round_start = time.perf_counter()
        order = runners[i % len(runners) :] + runners[: i % len(runners)]
        outputs: dict[int, list[int]] = {}
        for measured, cascade, _ in order:
            ids, _, events = _generate(cascade, rec.prompt, cal.max_new_tokens, eos)
            stats = Stats.of(events)
            measured.walls.append(stats.wall_s)
            measured.ids.append(ids)
            measured.tokens += len(ids)
            measured.target_forwards += stats.target_forwards
            outputs[id(measured)] = ids
        want = outputs[id(ar)]
        for measured, _, _cand in runners[1:]:
            got = outputs[id(measured)]
            if got == want:
                measured.identical += 1
            else:
                measured.divergences.append(f"prompt {i}: " + divergence(got, want, rec, tie))
        ar.identical += want == rec.ref
        done += 1
        last_round = time.perf_counter() - round_start
        if progress is not None:
            progress.advance(tid)
    return done


# ---------------------------------------------------------------------------- writing


def unique_name(base: str, taken: Iterable[str]) -> str:
    """``base``, or ``base-2``, ``base-3``, ... : the first name not taken."""
    taken = set(taken)
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def tuned_spec(spec: LadderSpec, cand: Candidate, name: str, description: str = "") -> LadderSpec:
    """The ladder a candidate describes: only the rungs its k-matrix uses, its k-matrix over
    them, its lenience and min_confidence, under a new name."""
    kept, use_mag, sub = reduce(cand.k, len(spec.drafters), spec.maxgram is not None)
    new = replace(
        spec,
        name=name,
        drafters=tuple(spec.drafters[d - 1] for d in kept),
        maxgram=spec.maxgram if use_mag else None,
        k_matrix=(),
        lenience=(),
        min_confidence=(),
        description=description or spec.description,
    )
    where = f"ladder '{name}'"
    return replace(
        new,
        k_matrix=check_k_matrix(sub, new, where),
        lenience=check_lenience(_kept(cand.lenience, kept), len(kept), where),
        min_confidence=check_min_confidence(_kept(cand.floor, kept), len(kept), where),
    )


def write_winner(
    spec: LadderSpec,
    cand: Candidate,
    name: str | None,
    config: Path | None,
    description: str = "",
) -> tuple[Path, str]:
    """Append the winner as a new ladder to ``config`` (or the user config); the name is
    ``name`` or ``<ladder>-tuned``, suffixed -2, -3, ... if taken. Never overwrites."""
    path = Path(config) if config is not None else user_config_path()
    taken: set[str] = set()
    with contextlib.suppress(CsdraftError):
        taken |= set(load_ladders(config))
    if path.is_file():
        taken |= set(parse_config(path.read_text(), str(path)))
    final = unique_name(name or f"{spec.name}-tuned", taken)
    add_ladder(path, tuned_spec(spec, cand, final, description))
    return path, final


# ---------------------------------------------------------------------------- data


def load_calibration_prompts(data: str, limit: int, seed: int = 0) -> tuple[list[str], str]:
    """``limit`` prompt texts drawn (seeded) from gsm8k, mmlu or a file, and where they came
    from. Uses ``csdraft.bench.data.load_dataset``; a file that is not JSON lines is read as
    one prompt per line."""
    from csdraft.bench.data import load_dataset

    path = Path(data).expanduser()
    try:
        dataset = load_dataset(data)
        texts, source = [e.prompt for e in dataset.examples], dataset.source
    except UsageError:
        if not path.is_file():
            raise
        texts = [ln for ln in path.read_text().splitlines() if ln.strip()]
        source = str(path)
    if not texts:
        raise UsageError(f"--data {data}: holds no prompts")
    if limit < len(texts):
        texts = random.Random(seed).sample(texts, limit)
    return texts, source


# ---------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def costs_table(cal: Calibration) -> Any:
    """Measured forward cost by block length, per neural rung (ms)."""
    from rich.table import Table

    lengths = sorted({n for c in cal.costs for n in c.lengths if n != c.prefill})
    table = Table(title="forward pass cost on this machine (ms, median)", title_style="bold")
    table.add_column("rung")
    for n in lengths:
        table.add_column(f"{n} tok", justify="right")
    table.add_column("prefill", justify="right")
    for r, curve in enumerate(cal.costs):
        pre = curve.prefill
        table.add_row(
            cal.names[r],
            *[f"{1000 * curve(n):.1f}" for n in lengths],
            f"{1000 * curve(pre):.0f} ({pre} tok)" if pre else "-",
        )
    table.caption = (
        f"engine overhead {1000 * cal.overhead_s:.2f} ms per review; Max-Gram "
        f"{1e6 * cal.maxgram_s:.0f} us per proposal"
    )
    return table


def agreement_table(agree: Agreement, title: str = "greedy agreement along the reference") -> Any:
    """Reviewer x drafter: share of positions where greedy tokens match, mean run length."""
    from rich.table import Table

    drafters = sorted({d for _, d in agree.rate})
    reviewers = sorted({r for r, _ in agree.rate})
    table = Table(title=title, title_style="bold")
    table.add_column("reviewer \\ drafter")
    for d in drafters:
        table.add_column(agree.names[d], justify="right")
    for r in reviewers:
        cells = []
        for d in drafters:
            if (r, d) in agree.rate:
                cells.append(f"{_pct(agree.rate[(r, d)])} (run {agree.mean_run[(r, d)]:.1f})")
            else:
                cells.append("")
        table.add_row(agree.names[r], *cells)
    table.caption = (
        f"{agree.positions} positions. Neural: share of positions where both greedy tokens "
        "match, and the mean number of consecutive matches from a position. Max-Gram: share "
        "of positions where its first proposed token matches, and its mean accepted prefix."
    )
    return table


def _rungs_text(k: KMatrix, names: Sequence[str]) -> str:
    used = sorted(used_rungs(k))
    return "+".join(names[d] for d in used)


def candidates_table(
    ranked: Sequence[Candidate], shown: Sequence[Candidate], ar: Measured, names: Sequence[str]
) -> Any:
    """The rich comparison: predictions (analytic and replay) and measurements side by side."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="candidates: predicted vs measured", title_style="bold", box=box.SIMPLE_HEAD
    )
    for col, just in (
        ("#", "right"),
        ("setting", "left"),
        ("rungs", "left"),
        ("k-matrix", "left"),
        ("l", "right"),
        ("conf", "right"),
        ("EWIF", "right"),
        ("replay", "right"),
        ("tok/rev", "right"),
        ("measured", "right"),
        ("error", "right"),
        ("tok/s", "right"),
        ("tok/fwd", "right"),
        ("same", "right"),
    ):
        table.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    rank = {c.key: i + 1 for i, c in enumerate(ranked)}
    n_ar = len(ar.walls)
    table.add_row(
        "",
        "ar",
        names[0],
        "-",
        "",
        "",
        "1.00x",
        "1.00x",
        "1.00",
        "1.00x" if n_ar else "-",
        "",
        f"{ar.tokens_per_s:.2f}" if n_ar else "-",
        f"{ar.tokens_per_forward:.2f}" if n_ar else "-",
        "",
    )
    for c in shown:
        m = c.measured
        got = c.measured_speedup(ar) if m else None
        pred = c.pred.speedup_on(range(len(m.walls))) if (m and c.pred and m.walls) else None
        err = (pred - got) / got if (got and pred) else None
        table.add_row(
            str(rank.get(c.key, "")),
            f"{c.label} ({family(c.k)})" if c.label else family(c.k),
            _rungs_text(c.k, names),
            k_text(c.k),
            _per_drafter_text(c.lenience),
            _per_drafter_text(c.floor),
            _x(c.analytic),
            _x(c.speedup if c.pred else None),
            f"{c.pred.tokens_per_review:.2f}" if c.pred else "-",
            _x(got),
            "-" if err is None else f"{100 * err:+.0f}%",
            f"{m.tokens_per_s:.2f}" if m and m.walls else "-",
            f"{m.tokens_per_forward:.2f}" if m and m.walls else "-",
            f"{m.identical}/{len(m.walls)}" if m and m.walls else "-",
        )
    table.caption = (
        "#: rank by replay prediction. l: lenience. conf: min_confidence. EWIF: the analytic "
        "cascade model (which ignores lenience and min_confidence). replay: "
        "the engine replayed over the recorded continuations with measured costs (tune's "
        "predictor), tok/rev its tokens per target review. measured: wall-time speedup over "
        "ar on the prompts run (tok/fwd: tokens per target forward); error: the replay's "
        "prediction on those prompts vs measured; same: outputs identical to ar's."
    )
    return table


def answers(
    ranked: Sequence[Candidate],
    ar: Measured,
    cal: Calibration,
    agree: Agreement,
) -> list[str]:
    """Short answers to the paper reviewers' questions for this ladder, from the replay's
    predictions (and measurements where they exist)."""
    names = cal.names
    plain = [c for c in ranked if c.pred and c.lenience == 1.0]

    def show(c: Candidate | None) -> str:
        if c is None:
            return "none in the search"
        got = c.measured_speedup(ar)
        measured = f", measured {_x(got)}" if got else ""
        return f"[{k_text(c.k)}] ({_rungs_text(c.k, names)}) predicted {_x(c.speedup)}{measured}"

    def best(pred: Callable[[Candidate], bool]) -> Candidate | None:
        return next((c for c in plain if pred(c)), None)

    lines = []
    top = ranked[0] if ranked else None
    lenience = f", lenience {_per_drafter_text(top.lenience)}" if top else ""
    lines.append(f"best overall: {show(top)}{lenience}")
    n = cal.n_neural
    d = cal.drafting_rungs
    if d == 1:
        lines.append(
            f"one drafting rung ({names[1]}): only the block length is tuned; without it the "
            "target decodes alone (ar, 1.00x)"
        )
        return lines
    v = best(lambda c: family(c.k) == "vertical")
    h = best(lambda c: family(c.k) == "horizontal")
    comb = best(lambda c: family(c.k) == "combined")
    lines.append(f"vertical only (diagonal k-matrix): {show(v)}")
    lines.append(f"horizontal only (target's row; drafters autoregressive): {show(h)}")
    lines.append(f"combined (both at once): {show(comb)}")
    full = set(range(1, d + 1))
    subsets: dict[frozenset[int], Candidate] = {}
    for c in plain:
        subsets.setdefault(frozenset(used_rungs(c.k)), c)
    lines.append("rungs used -> best predicted (is dropping a rung faster?):")
    for used, c in sorted(subsets.items(), key=lambda kv: -kv[1].speedup):
        tag = " (all rungs)" if used == full else ""
        lines.append(f"  {len(used) + 1} levels, {_rungs_text(c.k, names)}{tag}: {show(c)}")
    all_best = subsets.get(frozenset(full))
    if n > 1:
        smallest = n - 1
        no_small = best(lambda c: smallest not in used_rungs(c.k))
        lines.append(
            f"without {names[smallest]} (smallest neural drafter): {show(no_small)}"
            + _versus(no_small, all_best, top)
        )
    if cal.maxgram:
        no_mag = best(lambda c: d not in used_rungs(c.k))
        lines.append(f"without max-gram: {show(no_mag)}" + _versus(no_mag, all_best, top))
    for r in range(1, n):
        a = agree.rate.get((0, r), 0.0)
        c_ratio = cal.costs[r].review(0) / cal.costs[0].review(0)
        g, e = best_ewif(a, c_ratio)
        lines.append(
            f"classic EWIF for {names[r]} alone (a={a:.3f}, c={c_ratio:.2f}): best g={g}, "
            f"{e:.2f}x (constant c, i.i.d. acceptance, no overhead)"
        )
    floored = [c for c in plain if c.floor != 0.0]
    if floored:
        fb = floored[0]
        base = next((c for c in plain if c.k == fb.k and c.floor == 0.0), None)
        lines.append(
            f"min_confidence: best [{k_text(fb.k)}] with {_per_drafter_text(fb.floor)} predicted "
            f"{_x(fb.speedup)} vs {_x(base.speedup if base else None)} without (drafts end "
            "after a token the drafter doubts; output unchanged)"
        )
    lenient = [c for c in ranked if c.pred and c.lenience != 1.0]
    if lenient:
        lb = lenient[0]
        base = next((c for c in plain if c.k == lb.k), None)
        lines.append(
            f"lenience: best lenient setting [{k_text(lb.k)}] l={_per_drafter_text(lb.lenience)} "
            f"predicted {_x(lb.speedup)} vs {_x(base.speedup if base else None)} at l=1 "
            "(greedy output stays identical: lenience only acts on inner reviews)"
        )
    return lines


def _versus(c: Candidate | None, with_all: Candidate | None, top: Candidate | None) -> str:
    ref = with_all or top
    if c is None or ref is None or ref.k == c.k:
        return ""
    verdict = "faster" if c.speedup > ref.speedup else "slower"
    return f" -> {verdict} than the best with every rung ({_x(ref.speedup)})"


# ---------------------------------------------------------------------------- entry point


def run_tune(
    ladder: str | None,
    data: str,
    limit: int,
    budget: float,
    write: bool,
    write_name: str | None,
    seed: int,
    max_new_tokens: int,
    config: Path | None,
) -> int:
    """``csdraft tune k-matrix``: calibrate, search, verify, report, and optionally write."""
    from rich.console import Console

    from csdraft.generation import LoadedLadder
    from csdraft.ladder import get_ladder
    from csdraft.viz import report_console

    if write_name is not None and not write:
        raise UsageError(f"the name {write_name!r} is only used with --write; add --write")
    out = report_console()
    err = Console(stderr=True)
    spec = get_ladder(ladder, config)
    if spec.drafting_rungs == 0:
        raise UsageError(f"ladder '{spec.name}' has no drafters: there is no k-matrix to tune")
    texts, source = load_calibration_prompts(data, limit, seed)
    err.print(f"[bold]csdraft tune[/]: ladder {spec.name}, {len(texts)} prompts from {source}")
    loaded = LoadedLadder.load(spec)
    prompts = [loaded.encode(t) for t in texts]
    for p in prompts:
        loaded.check_length(p, max_new_tokens)
    with _progress(err) as progress:
        cal = calibrate(loaded, prompts, max_new_tokens, progress=progress)
        agree = agreement(cal)
        model = AnalyticModel.from_calibration(cal, agree)
        replay = Replay(cal)
        ranked = search(cal, spec, replay, model, seed=seed, progress=progress)
    if not ranked:
        raise CsdraftError("no candidate k-matrix could be evaluated")
    current = next((c for c in ranked if c.key == current_setting(spec)), None)
    for i, c in enumerate(ranked[:3]):
        c.label = f"tuned #{i + 1}"
    if current is not None:
        current.label = "current" + (f" / {current.label}" if current.label else "")
    ar = Measured()
    chosen: list[Candidate] = []
    if budget > 0:
        ar_round = replay.ar_seconds()[0] if cal.records else 0.0
        chosen = pick_for_measurement(
            ranked, current, cal.n_neural, cal.maxgram is not None, budget, ar_round
        )
        for c in chosen:
            if not c.label:
                c.label = family(c.k)
        with _progress(err) as progress:
            measure_candidates(loaded, cal, chosen, ar, current, budget, progress)

    out.print(costs_table(cal))
    out.print(agreement_table(agree))
    shown = list(chosen) + [c for c in ranked[:8] if all(c.key != s.key for s in chosen)]
    out.print(candidates_table(ranked, shown, ar, cal.names))
    measured = [c for c in chosen if c.measured and c.measured.walls]
    runs = sum(len(c.measured.walls) for c in measured if c.measured)
    same = sum(c.measured.identical for c in measured if c.measured)
    errors = []
    for c in measured:
        got = c.measured_speedup(ar)
        pred = c.pred.speedup_on(range(len(c.measured.walls))) if c.pred and c.measured else None
        if got and pred:
            errors.append(abs(pred - got) / got)
    out.print()
    out.print("[bold]calibration[/]")
    exact = all(c.pred.exact for c in ranked if c.pred)
    out.print(
        f"  {len(cal.records)} prompts, {sum(len(r.ref) for r in cal.records)} reference tokens "
        f"(max {max_new_tokens} new each); replay reproduced the reference outputs: "
        f"{'yes' if exact else 'NO (report this)'}"
    )
    ar_pred, ar_real = sum(replay.ar_seconds()), sum(r.ar_wall_s for r in cal.records)
    out.print(
        f"  ar replayed: {ar_pred:.2f} s predicted vs {ar_real:.2f} s measured on the reference "
        f"runs ({100 * (ar_pred - ar_real) / ar_real:+.1f}%)"
        if ar_real > 0
        else ""
    )
    if budget > 0:
        out.print(
            f"  real runs: {len(ar.walls)} prompts x {len(measured) + 1} settings, interleaved; "
            f"identical outputs: {same}/{runs}"
        )
        for c in measured:
            for d in c.measured.divergences if c.measured else []:
                out.print(f"  [yellow]divergence[/] [{k_text(c.k)}]: {d}")
        if errors:
            out.print(
                f"  replay prediction error: mean {100 * statistics.fmean(errors):.1f}%, "
                f"max {100 * max(errors):.1f}% (|predicted - measured| / measured)"
            )
    else:
        out.print("  --budget 0: predictions only, nothing measured")
    out.print()
    out.print("[bold]answers[/]")
    for line in answers(ranked, ar, cal, agree):
        out.print("  " + line, highlight=False)

    # the winner: best measured when anything was measured, else best predicted
    pool = [c for c in measured if c.measured_speedup(ar)] or ranked
    winner = max(pool, key=lambda c: c.measured_speedup(ar) or 0.0) if measured else ranked[0]
    got = winner.measured_speedup(ar)
    out.print()
    kept, use_mag, sub = reduce(winner.k, len(spec.drafters), spec.maxgram is not None)
    out.print(
        f"[bold green]winner[/]: k-matrix {[list(r) for r in sub]} over "
        f"{_rungs_text(winner.k, cal.names)}, lenience {_per_drafter_text(winner.lenience)}, "
        f"min_confidence {_per_drafter_text(winner.floor)}: predicted {_x(winner.speedup)}"
        + (f", measured {_x(got)}" if got else ""),
        highlight=False,
    )
    if got is not None and got < 1.0:
        out.print("[yellow]  slower than ar on these prompts[/]")
    mine = current.measured_speedup(ar) if current is not None else None
    if got and mine and winner is not current:
        out.print(
            f"  vs the current settings, measured {_x(mine)} on the same prompts: "
            f"{100 * (got / mine - 1):+.1f}%",
            highlight=False,
        )
    for line in tuned_spec(spec, winner, spec.name).explain_k_matrix():
        out.print(f"  {line}", highlight=False)
    if write:
        desc = (
            f"tuned by csdraft tune on {len(cal.records)} prompts of {data}: predicted "
            f"{winner.speedup:.2f}x" + (f", measured {got:.2f}x" if got else "") + " over ar"
        )
        path, name = write_winner(spec, winner, write_name, config, desc)
        note = "" if write_name in (None, name) else f" ('{write_name}' was taken)"
        out.print(f"wrote ladder [bold]{name}[/] to {path}{note}; use it with --ladder {name}")
    else:
        out.print(
            f"  (not written; add --write to store it as '{spec.name}-tuned')", highlight=False
        )
    return 0
