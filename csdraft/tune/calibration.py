"""Calibration: the target's reference continuations (through the engine), every neural rung's
teacher-forced top-K along them, Max-Gram's proposals along them, and the measured costs:
everything the predictors need, measured once per tune on this machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from csdraft.engine import MaxGram, Sampling
from csdraft.errors import UsageError
from csdraft.runs import cascade_runner
from csdraft.spec import RungSpec
from csdraft.tune.costs import (
    COST_LENGTHS,
    CostCurve,
    argmax_op,
    measure_cost,
    measure_vocab_op,
    softmax_op,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from csdraft.api import Ladder

K_TOP = 8
"""Top tokens kept per position and rung from the teacher-forced pass (for lenient reviews)."""
TEACHER_BLOCK = 4
"""Tokens per forward pass when teacher forcing, about what the engine feeds a drafter: a
model whose numbers depend on the pass (int8's per-pass activation scale) is scored as the
engine runs it. One pass over a whole continuation made the int8 0.5B agree with its target
on 85% of positions instead of the engine's 89%."""
MAX_RUN = 32
"""Longest run (and Max-Gram proposal) the statistics follow."""


@dataclass
class PromptRecord:
    """One calibration prompt: the target's greedy continuation (through the engine) and, for
    every neural rung, its top-K next tokens and probabilities at each position of it.

    ``top_ids[r][t]`` is rung r's top-K after prompt + ``ref[:t]`` (t = 0..T); ``margin[t]`` is
    the gap between the target's two best logits there; ``mag[s]`` is Max-Gram's proposal from
    position s (index over prompt + ``ref[:s]``), padded with -1. ``ar_wall_s`` is the
    reference run's wall time: the calibration's own measurement of ``ar`` on this prompt.
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
    """Everything measured on this machine for one ladder: what the predictors need.

    Rungs are in ladder order: the ``n_neural`` neural rungs (target first, then the neural
    drafters, as the ladder lists them), then Max-Gram when ``maxgram`` is set."""

    names: list[str]
    n_neural: int
    maxgram: RungSpec | None
    bigram: dict[int, int] | None
    costs: list[CostCurve]
    argmax: CostCurve
    softmax: CostCurve
    overhead_s: float
    maxgram_s: float
    records: list[PromptRecord]
    max_new_tokens: int
    eos_ids: list[int]
    tree_cost: CostCurve | None = None
    """The target's forward pass by new tokens when they form a token tree (``score_tree``,
    mask included), when its backend scores trees: what the replay charges a tree pass."""

    @property
    def drafting_rungs(self) -> int:
        """D: the k-matrix is D x D."""
        return self.n_neural - 1 + (1 if self.maxgram else 0)

    @property
    def maxgram_rung(self) -> int | None:
        """Max-Gram's ladder index (after every neural rung), or None."""
        return self.n_neural if self.maxgram else None

    def neural(self, rung: int) -> bool:
        """Whether ladder rung ``rung`` runs a model."""
        return rung < self.n_neural


def teacher_force(
    model: Any,
    prompt: Sequence[int],
    ref: Sequence[int],
    k: int = K_TOP,
    block: int = TEACHER_BLOCK,
    vocab: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A loaded model's top-k next tokens [T + 1, k], their probabilities, and the gap between
    its two best logits, at every continuation position: fed as the engine feeds it (a
    ``model.session``, with its draft vocabulary ``vocab``), the prompt in one pass, then the
    continuation ``block`` tokens a pass."""
    session = model.session("teacher", vocab)
    seq = np.asarray([*prompt, *ref], dtype=np.int64)
    n = len(prompt)
    parts = [session.score(seq[:n], n)]
    for s in range(0, len(ref), block):
        parts.append(session.score(seq[: n + min(s + block, len(ref))], n + s)[1:])
    session.reset()
    logits = torch.cat(parts).float()
    top = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(logits, dim=-1).gather(-1, top.indices)
    margin = (top.values[:, 0] - top.values[:, 1]) if top.values.shape[1] > 1 else top.values[:, 0]
    return top.indices.numpy(), probs.numpy().astype(np.float32), margin.numpy()


def maxgram_along(
    prompt: Sequence[int],
    ref: Sequence[int],
    spec: RungSpec,
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
        proposal = mag.continuation(ctx[-spec.max_ngram :], depth)
        spent += time.perf_counter() - start
        out[s, : len(proposal)] = proposal
        mag.extend([token])
        ctx.append(int(token))
    return out, spent / max(1, len(ref))


def calibrate(
    ladder: Ladder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    lengths: Sequence[int] = COST_LENGTHS,
    repeats: int = 3,
    progress: Progress | None = None,
    teacher: bool = True,
) -> Calibration:
    """Measure costs and acceptance statistics of a loaded ladder on ``prompts`` (token ids).
    Without ``teacher``: only the reference runs and the costs (each model timed in its own
    tokens), what judging a ladder by real runs needs; with it, every rung must share the
    target's tokenizer."""
    spec = ladder.spec
    models = list(ladder.models.values())
    foreign = foreign_rungs(ladder)
    if foreign and teacher:  # its agreement model teacher-forces every rung on the target's tokens
        raise UsageError(
            f"ladder '{spec.name}': {', '.join(foreign)} has its own tokenizer; inspect's and "
            "tune's replay teacher-force every rung on the target's tokens: tune judges such a "
            "ladder by real runs; compare ladders with bench"
        )
    eos = ladder.eos_ids
    records: list[PromptRecord] = []

    def task(description: str, total: int) -> Callable[[], None]:
        if progress is None:
            return lambda: None
        tid = progress.add_task(description, total=total)
        return lambda: progress.advance(tid)

    ar = cascade_runner(ladder.cascade(spec.keep([], []), Sampling()), eos)
    if prompts:
        ar(list(prompts[0]), max_new_tokens)  # warm-up: first calls (and shapes) are slow
    step = task("reference continuations (target, greedy)", len(prompts))
    for prompt in prompts:
        run = ar([int(t) for t in prompt], max_new_tokens)
        records.append(
            PromptRecord(
                [int(t) for t in prompt],
                run.ids,
                run.finish or "length",
                run.wall_s,
                sum(run.forward_s.values()),
                run.target_forwards,
            )
        )
        step()
    vocabs = [None, *(d.vocab for d in spec.drafters)]  # each drafter's head as it drafts
    if teacher:
        step = task("teacher forcing (each rung along each reference)", len(models) * len(records))
        for model, vocab in zip(models, vocabs, strict=True):
            for rec in records:
                ids, probs, margin = teacher_force(model, rec.prompt, rec.ref, vocab=vocab)
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
            rec.mag, per_call = maxgram_along(rec.prompt, rec.ref, spec.maxgram, ladder.bigram)
            spent.append(per_call)
            step()
        maxgram_s = statistics.fmean(spent) if spent else 0.0
    step = task("forward cost by block length", len(models) + 1)
    probe = max(records, key=lambda r: len(r.ref)) if records else None
    context = probe.prompt if probe else [0] * 8
    cont = probe.ref if probe else []
    costs = []
    for model, vocab in zip(models, vocabs, strict=True):
        mine, more = own_tokens(ladder, model, context), own_tokens(ladder, model, cont)
        costs.append(measure_cost(model, mine, more, lengths, repeats, vocab=vocab))
        step()
    tree_cost = None
    if models[0].scores_trees:
        tree_cost = measure_cost(models[0], context, cont, lengths, repeats, False, tree=True)
    vocab = int(getattr(models[0], "vocab_size", 0) or len(ladder.tokenizer))
    argmax = measure_vocab_op(argmax_op, vocab, repeats=repeats)
    softmax = measure_vocab_op(softmax_op, vocab, repeats=repeats)
    step()
    outside = sum(r.ar_wall_s - r.ar_forward_s for r in records)
    n_reviews = sum(r.ar_reviews for r in records)
    return Calibration(
        names=spec.rung_names,
        n_neural=len(spec.drafters) + 1,  # the ladder's neural rungs: one loaded model each
        maxgram=spec.maxgram,
        bigram=ladder.bigram,
        costs=costs,
        argmax=argmax,
        softmax=softmax,
        overhead_s=max(0.0, outside / n_reviews) if n_reviews else 0.0,
        maxgram_s=maxgram_s,
        records=records,
        max_new_tokens=max_new_tokens,
        eos_ids=list(eos),
        tree_cost=tree_cost,
    )


def foreign_rungs(ladder: Ladder) -> list[str]:
    """The model rungs of a loaded ladder with a tokenizer of their own (another family)."""
    return [n for n, m in ladder.models.items() if m.tokenizer is not ladder.tokenizer]


def own_tokens(ladder: Ladder, model: Any, ids: Sequence[int]) -> list[int]:
    """Target token ids as ``model`` reads them: the same ids, or for a model with its own
    tokenizer, their text encoded in it (what a cost probe in its own tokens needs; never
    empty)."""
    if model.tokenizer is ladder.tokenizer:
        return [int(t) for t in ids]
    text = ladder.tokenizer.decode(list(ids))
    return list(model.tokenizer.encode(text, add_special_tokens=False)) or [0]
