"""Running and checking generations: one outcome record, and the interleaved runner that bench
and tune share (every method on each prompt in turn, the order rotated per prompt, so drift on
a shared machine hits all methods alike)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from csdraft.engine import Cascade
from csdraft.engine.cascade import StopCheck
from csdraft.trace import Commit, Event, Review, Stats, tokens_per_second


@dataclass
class Outcome:
    """One generation: its token ids, wall time and the counters bench and tune need.

    ``prefill_s`` is the prompt phase: for the engine, the time to the first ``Commit`` (every
    neural rung's first forward over the prompt included); for transformers, to the first new
    token. ``prefill_tokens``: the tokens that first commit or step made final (a drafting
    method's first block can hold several). ``prompt_pass_s``: each neural rung's first
    forward (its pass over the prompt)."""

    ids: list[int]
    wall_s: float
    target_forwards: int
    forwards: dict[str, int]
    forward_s: dict[str, float] = field(default_factory=dict)
    reviews: dict[str, list[int]] = field(default_factory=dict)
    by_position: list[list[int]] = field(default_factory=list)
    finish: str = ""
    prefill_s: float | None = None
    prefill_tokens: int | None = None
    prompt_pass_s: dict[str, float] = field(default_factory=dict)

    @property
    def decode_s(self) -> float | None:
        """Seconds after the prompt phase (None when it was not timed)."""
        return None if self.prefill_s is None else self.wall_s - self.prefill_s

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per wall-clock second (0 when no time was measured)."""
        return tokens_per_second(len(self.ids), self.wall_s) or 0.0

    @classmethod
    def of(cls, events: Sequence[Event], wall_s: float) -> Outcome:
        """The outcome a generation's events describe (forwards and reviews by rung name)."""
        stats = Stats.of(events)
        name = stats.rungs.__getitem__
        first_commit = next((e for e in events if isinstance(e, Commit)), None)
        first_review: dict[int, float] = {}
        for e in events:
            if isinstance(e, Review):
                first_review.setdefault(e.reviewer, e.forward_s)
        return cls(
            ids=[t for e in events if isinstance(e, Commit) for t in e.tokens],
            wall_s=wall_s,
            target_forwards=stats.target_forwards,
            forwards={name(r): n for r, n in sorted(stats.forwards.items())},
            forward_s={name(r): s for r, s in sorted(stats.forward_s.items())},
            reviews={
                name(r): [stats.proposed.get(r, 0), stats.accepted.get(r, 0)]
                for r in sorted(stats.proposed)
                if stats.proposed[r]
            },
            by_position=[list(p) for p in stats.by_position],
            finish=stats.finish,
            prefill_s=wall_s if first_commit is None else min(first_commit.t, wall_s),
            prefill_tokens=0 if first_commit is None else len(first_commit.tokens),
            prompt_pass_s={name(r): s for r, s in sorted(first_review.items())},
        )

    def record(self) -> dict[str, Any]:
        """The JSON-ready per-prompt record (without ids, answers or mismatch)."""
        return {
            "new_tokens": len(self.ids),
            "wall_s": self.wall_s,
            "target_forwards": self.target_forwards,
            "forwards": self.forwards,
            "forward_s": self.forward_s,
            "reviews": self.reviews,
            "by_position": self.by_position,
            "finish": self.finish,
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "prefill_tokens": self.prefill_tokens,
            "prompt_pass_s": self.prompt_pass_s,
        }


Runner = Callable[[list[int], int], Outcome]
"""Prompt ids and max_new_tokens -> outcome."""


def cascade_runner(
    cascade: Cascade,
    eos_ids: Sequence[int],
    seed: int | None = None,
    stop: Callable[[], StopCheck] | None = None,
) -> Runner:
    """A runner that generates with ``cascade`` (seeded the same for every prompt); ``stop``
    makes a fresh stop check for each generation."""

    def run(prompt_ids: list[int], max_new_tokens: int) -> Outcome:
        start = time.perf_counter()
        check = stop() if stop is not None else None
        events = list(cascade.generate(prompt_ids, max_new_tokens, eos_ids, check, seed=seed))
        return Outcome.of(events, time.perf_counter() - start)

    return run


def rotated(names: Sequence[str], i: int) -> list[str]:
    """``names`` starting at position ``i`` (mod its length): prompt i's running order."""
    k = i % len(names)
    return [*names[k:], *names[:k]]


def interleaved(
    prompts: Sequence[list[int]],
    runners: Mapping[str, Runner],
    max_new_tokens: int,
    before: Callable[[int, str], None] | None = None,
    start: int = 0,
) -> Iterator[tuple[int, dict[str, Outcome]]]:
    """For each prompt from index ``start`` on, run every runner in a rotated order; yield
    (prompt index, outcomes in the runners' order). ``before(i, name)`` is called before each
    run (progress)."""
    names = list(runners)
    for i in range(start, len(prompts)):
        outcomes: dict[str, Outcome] = {}
        for name in rotated(names, i):
            if before is not None:
                before(i, name)
            outcomes[name] = runners[name](prompts[i], max_new_tokens)
        yield i, {n: outcomes[n] for n in names}


def relative_spread(values: Sequence[float]) -> float | None:
    """(max - min) / median of repeated measurements of the same thing: how far this machine's
    timing moved while measuring (None with fewer than two)."""
    if len(values) < 2:
        return None
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid > 0 else None
