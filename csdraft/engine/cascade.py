"""The one decoding engine: vertical and horizontal cascades driven by the k-matrix.

Rungs are numbered in ladder order: 0 is the target, 1..n the neural drafters (largest first),
and n + 1 is Max-Gram when the ladder has it. With D drafting rungs below the target, the
k-matrix is D x D and upper-triangular: row r belongs to reviewer r, column c to drafter c + 1.
Reviewer r's block is filled by drafter r + 1 up to k[r][r] tokens, then by drafter r + 2 up to
k[r][r] + k[r][r + 1], and so on. A neural drafter writes its segment by reviewing blocks built
the same way from its own row (vertical cascade), so no neural model decodes autoregressively
unless its row is all zeros or missing (the last neural rung of a ladder without Max-Gram).

The degenerate ladders are this same engine: no drafters is autoregressive decoding, one neural
drafter is speculative decoding, Max-Gram alone is prompt lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from csdraft.engine.maxgram import MaxGram
from csdraft.engine.review import Block, GreedyReview, Sampling, SamplingReview
from csdraft.engine.rung import Rung
from csdraft.trace import Commit, Event, Finish, Review, Start

StopCheck = Callable[[list[int]], int | None]
"""Given newly committed tokens, how many of them to keep if generation must stop, else None."""


class Cascade:
    """Generates exactly what ``rungs[0]`` would, drafting with the rungs below it."""

    def __init__(
        self,
        rungs: Sequence[Rung],
        maxgram: MaxGram | None,
        k_matrix: Sequence[Sequence[int]],
        lenience: float | Sequence[float] = 1.0,
        sampling: Sampling | None = None,
        seed: int = 0,
        min_confidence: float | Sequence[float] = 0.0,
    ) -> None:
        self.rungs = list(rungs)
        self.maxgram = maxgram
        self.names = [r.name for r in self.rungs] + (["max-gram"] if maxgram else [])
        drafters = len(self.names) - 1
        k = [list(map(int, row)) for row in k_matrix]
        if len(k) != drafters or any(len(row) != drafters for row in k):
            raise ValueError(f"k-matrix must be {drafters}x{drafters} for this ladder")
        if any(v < 0 for row in k for v in row):
            raise ValueError("k-matrix entries must be non-negative")
        self.k = k
        inner = [lenience] * (len(self.rungs) - 1) if np.isscalar(lenience) else list(lenience)
        if len(inner) != len(self.rungs) - 1 or not all(v >= 1 for v in inner):  # NaN too
            raise ValueError("lenience needs one value >= 1 per neural drafter")
        self.lenience = [1.0, *map(float, inner)]  # the target's review is never lenient
        floors = (
            [min_confidence] * (len(self.rungs) - 1)
            if np.isscalar(min_confidence)
            else list(min_confidence)
        )
        if len(floors) != len(self.rungs) - 1 or not all(0 <= v < 1 for v in floors):
            raise ValueError("min_confidence needs one value in [0, 1) per neural drafter")
        self.min_confidence = [0.0, *map(float, floors)]
        self.sampling = sampling or Sampling()
        self.generator = torch.Generator().manual_seed(seed)
        if self.sampling.greedy:
            self.review = GreedyReview(hand_on_probs=any(v > 1 for v in self.lenience))
        else:
            self.review = SamplingReview(self.sampling, self.generator)
        self._events: list[Event] = []
        self._t0 = 0.0
        self._confidence = 1.0  # the last review's probability of its own token

    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        eos_ids: Sequence[int] = (),
        stop: StopCheck | None = None,
    ) -> Iterator[Event]:
        """Yield the events of one generation; ``Commit`` events carry the final tokens."""
        if len(prompt) == 0:
            raise ValueError("the prompt must hold at least one token")
        self._t0 = time.perf_counter()
        for rung in self.rungs:
            rung.reset()
        if self.maxgram:
            self.maxgram.reset(prompt)
        seq = np.asarray(prompt, dtype=np.int64)
        eos = set(eos_ids)
        yield Start(self.names, len(seq), t=0.0)
        produced = 0
        while produced < max_new_tokens:
            block = self._block(0, seq, max_new_tokens - produced - 1)
            out = self._review(0, seq, block)
            keep = len(out)
            reason = ""
            for i, token in enumerate(out.tokens):
                if token in eos:
                    keep, reason = i + 1, "eos"
                    break
            if stop is not None and (cut := stop(out.tokens[:keep])) is not None:
                keep, reason = min(max(cut, 0), keep), "stop"
            yield from self._flush()
            accepted = len(out) - 1
            yield Commit(
                out.tokens[:keep],
                out.origins[:keep],
                block.tokens[accepted:],
                block.origins[accepted:],
                t=self.elapsed(),
            )
            seq = np.concatenate([seq, np.asarray(out.tokens[:keep], dtype=np.int64)])
            if self.maxgram:
                self.maxgram.extend(out.tokens[:keep])
            produced += keep
            if reason:
                yield Finish(reason, t=self.elapsed())
                return
        yield Finish("length", t=self.elapsed())

    def elapsed(self) -> float:
        """Seconds since the current generation started (the clock events are stamped with)."""
        return time.perf_counter() - self._t0

    def _flush(self) -> Iterator[Event]:
        events, self._events = self._events, []
        yield from events

    def _block(self, reviewer: int, seq: np.ndarray, limit: int) -> Block:
        """The block ``reviewer`` checks next: segments from the drafters below it, as its row
        of the k-matrix says, at most ``limit`` tokens in all."""
        block = Block()
        if reviewer >= len(self.k):
            return block
        end = 0
        for col in range(reviewer, len(self.k)):
            end = min(end + self.k[reviewer][col], limit)
            need = end - len(block)
            if need <= 0:
                continue
            ctx = np.concatenate([seq, np.asarray(block.tokens, dtype=np.int64)])
            drafter = col + 1
            if drafter == len(self.rungs):  # Max-Gram
                tokens = self.maxgram.propose(ctx, need)
                block.extend(Block(tokens, [drafter] * len(tokens), [None] * len(tokens)))
            else:
                segment = self._draft(drafter, ctx, need)
                block.extend(segment)
                if len(segment) < need:
                    break  # the drafter lost confidence: later tokens would be refused too
        return block

    def _draft(self, rung: int, seq: np.ndarray, n: int) -> Block:
        """Rung ``rung`` writes ``n`` tokens by reviewing blocks from the rungs below it; it
        stops early after a token it gave less than its ``min_confidence``."""
        out = Block()
        while len(out) < n:
            ctx = np.concatenate([seq, np.asarray(out.tokens, dtype=np.int64)])
            out.extend(self._review(rung, ctx, self._block(rung, ctx, n - len(out) - 1)))
            if self._confidence < self.min_confidence[rung]:
                break
        return out

    def _review(self, reviewer: int, seq: np.ndarray, block: Block) -> Block:
        """One forward pass of ``reviewer`` over ``block``: kept proposals plus its own token."""
        start = time.perf_counter()
        full = np.concatenate([seq, np.asarray(block.tokens, dtype=np.int64)])
        logits = self.rungs[reviewer].score(full, len(seq))
        forward_s = time.perf_counter() - start
        verdict = self.review(logits, block, self.lenience[reviewer])
        self._confidence = verdict.confidence
        a = verdict.accepted
        self._events.append(
            Review(
                reviewer, block.tokens, block.origins, a, verdict.token, forward_s, self.elapsed()
            )
        )
        return Block(block.tokens[:a] + [verdict.token], block.origins[:a] + [reviewer], verdict.q)
