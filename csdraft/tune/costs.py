"""Cost curves: what a forward pass of each neural rung costs by the number of new tokens it
feeds, measured through the loaded model's own session (as the engine calls it), and the
full-vocabulary operations a review adds (argmax, a lenient review's softmax)."""

from __future__ import annotations

import bisect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from csdraft.engine.draft import Draft

COST_LENGTHS = (1, 2, 4, 8, 12, 16, 24)
"""Block lengths (new tokens fed in one forward pass) whose cost ``calibrate`` measures."""


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


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_cost(
    model: Any,
    context: Sequence[int],
    continuation: Sequence[int],
    lengths: Sequence[int] = COST_LENGTHS,
    repeats: int = 3,
    prefill: bool = True,
    tree: bool = False,
    vocab: int | None = None,
) -> CostCurve:
    """Time a loaded model's forward pass over 1..n new tokens after ``context``, exactly as the
    engine calls it (a ``model.session``: cache cropped back to the context, the block fed in
    one pass), median of ``repeats`` after a warm-up, made non-decreasing (``monotone``); with
    ``prefill``, the first pass over the whole context too (a generation's first review). With
    ``tree``, the n - 1 proposals form a token tree (``comb``) scored by ``score_tree``: the
    target's cost by node count, mask included. ``vocab``: a drafter's draft vocabulary."""
    session = model.session("cost", vocab)
    ctx = np.asarray(context, dtype=np.int64)
    pad = [int(t) for t in continuation] or [int(t) for t in context]
    while len(pad) < max(lengths):
        pad = pad + pad
    points: dict[int, float] = {}
    prefill = prefill and len(ctx) > max(lengths)
    if prefill:

        def fill() -> None:
            session.reset()
            session.score(ctx, len(ctx))

        points[len(ctx)] = median_time(fill, min(repeats, 2), warmup=0)
    session.reset()
    session.score(ctx, len(ctx))
    for n in lengths:
        if tree:
            draft = comb(pad[: n - 1])
            points[n] = median_time(lambda d=draft: session.score_tree(ctx, d), repeats)
            continue
        seq = np.concatenate([ctx, np.asarray(pad[: n - 1], dtype=np.int64)])
        points[n] = median_time(lambda seq=seq: session.score(seq, len(ctx)), repeats)
    session.reset()
    return monotone(CostCurve(list(points), list(points.values()), len(ctx) if prefill else None))


def comb(tokens: Sequence[int]) -> Draft:
    """A tree of ``tokens``: a chain (even nodes) with one sibling beside each of its nodes (odd
    nodes), the shape trees grown where a drafter is unsure take."""
    parents = [-1 if i < 2 else 2 * (i // 2 - 1) for i in range(len(tokens))]
    return Draft([int(t) for t in tokens], [1] * len(tokens), [None] * len(tokens), parents)


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
        points[n] = median_time(lambda x=logits: op(x), repeats)
    return monotone(CostCurve(list(points), list(points.values())))


def argmax_op(x: torch.Tensor) -> object:
    """What every review does to its logits."""
    return x.argmax(-1)


def softmax_op(x: torch.Tensor) -> object:
    """What a lenient review adds."""
    return torch.softmax(x.float(), -1)
