"""The analytic model: the paper's expected walltime improvement factor (``ewif``) extended to
the cascade as a recursive expected-cost model (``AnalyticModel``), and the ``Prediction``
both predictors return. Fast: tune ranks the whole grid of k-matrices with it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from csdraft.engine import kmatrix

if TYPE_CHECKING:
    from csdraft.tune.agreement import Agreement
    from csdraft.tune.calibration import Calibration


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

    A reviewer's block is a list of segments (drafter, length) (``kmatrix.segments``). The
    reviewer keeps position j of the block, given it kept all before, with probability
    ``accept(reviewer, drafter, u)`` where u is j's offset within its drafter's segment:
    S[u + 1] / S[u] from the measured run-length survival S of that (reviewer, drafter) pair
    (S[u] = a^u gives the i.i.d. case). So P(A = a) = prod_{j<a} p_j (1 - p_a), and a review
    yields E[A] + 1 tokens.

    Rungs are in ladder order: ``costs`` holds the neural rungs' review costs (target first);
    every rung after them is a cheap drafter (Max-Gram) whose proposal costs ``draft_s[i]``
    seconds per segment, whatever its length.

    Time: a review by rung r of m proposals costs ``costs[r](m)`` + ``overhead_s`` + the
    drafting of its block; a neural drafter d producing n tokens costs
    F_d(n) = T_d(b) + sum_a P(A = a) F_d(n - a - 1), b = its row's block cut to n - 1 tokens
    (as the engine cuts it), T_d(b) that review's time: the expected number of its reviews
    times their cost, recursively down the ladder. The target's steady state gives
    speedup = E[tokens per target review] * (costs[0](0) + overhead) / E[time per review].
    With one drafter, constant costs and S[u] = a^u this is exactly ``ewif``. Lenience is
    ignored (it equals 1 here), and so are the ends of generations and the prompt's first pass.
    """

    def __init__(
        self,
        costs: Sequence[Callable[[int], float]],
        survival: dict[tuple[int, int], np.ndarray],
        draft_s: Sequence[float] = (),
        overhead_s: float = 0.0,
    ) -> None:
        self.costs = list(costs)
        self.n_neural = len(self.costs)
        self.draft_s = [float(s) for s in draft_s]
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
            [cal.maxgram_s] if cal.maxgram else [],
            cal.overhead_s,
        )

    def accept(self, reviewer: int, drafter: int, offset: int) -> float:
        """P(reviewer keeps the token at ``offset`` of drafter's segment | kept the ones before)."""
        cond = self._cond.get((reviewer, drafter))
        if cond is None or len(cond) == 0:
            return 0.0
        return float(cond[min(offset, len(cond) - 1)])

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
                produce(d, n) if d < self.n_neural else self.draft_s[d - self.n_neural]
                for d, n in segments
            )

        def produce(rung: int, n: int) -> float:
            if n <= 0:
                return 0.0
            key = (rung, n)
            if key in memo:
                return memo[key]
            segments = kmatrix.segments(k, rung, n - 1)
            m = sum(c for _, c in segments)
            spent = self.costs[rung](m) + self.overhead_s + draft_time(segments)
            dist = self._distribution(rung, segments)
            spent += sum(p * produce(rung, n - a - 1) for a, p in enumerate(dist) if p > 0)
            memo[key] = spent
            return spent

        segments = kmatrix.segments(k, 0, 10**9)
        m = sum(c for _, c in segments)
        dist = self._distribution(0, segments)
        tokens = sum(a * p for a, p in enumerate(dist)) + 1.0
        spent = self.costs[0](m) + self.overhead_s + draft_time(segments)
        ar = self.costs[0](0) + self.overhead_s
        return Prediction(tokens * ar / spent, tokens)
