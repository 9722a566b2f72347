"""The search: the candidate grid of k-matrices, their neighbours, the settings (k-matrix,
lenience, min_confidence) tune compares, the search itself (analytic ranking, replay,
refinement), and which candidates to run for real."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from csdraft.engine import kmatrix
from csdraft.engine.kmatrix import KMatrix
from csdraft.engine.tree import TreeSettings
from csdraft.runs import Outcome
from csdraft.spec import LadderSpec
from csdraft.tune import settings
from csdraft.tune.analytic import AnalyticModel, Prediction
from csdraft.tune.calibration import Calibration
from csdraft.tune.replay import Replay
from csdraft.tune.settings import Lenience, PerDrafter

if TYPE_CHECKING:
    from rich.progress import Progress

GRID = (0, 1, 2, 3, 4, 6, 8, 10, 12)
"""Values each k-matrix entry takes in the search grid."""
SMALL_GRID = (0, 1, 2, 4, 8)
"""The grid for ladders with many drafting rungs, where the full grid is too large."""
LENIENCES = (1.0, 1.5, 2.0, 3.0, 5.0)
"""Lenience values tried for the best k-matrices with inner reviews."""
MIN_CONFIDENCES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""min_confidence values tried for the best k-matrices that use a neural drafter."""
GRID_LIMIT = 20000
"""Most grid points the analytic model ranks."""
REFINE_REPLAYS = 120
"""Replays spent refining around the best by hill climbing."""
TREES = tuple(
    TreeSettings(budget, 1, p, extend)
    for budget in (12, 16, 24)
    for p in (0.3, 0.5, 0.7, 0.9)
    for extend in (0, 3)
)
"""Token trees tried at the target's review of the best linear settings: one sibling (the
drafter's second choice; calibration records each rung's top two) where the drafter's best
token has less than ``min_prob``, within ``budget`` nodes, left as leaves or extended by the
drafter by up to 3 tokens each."""


@dataclass
class Candidate:
    """One setting: k-matrix (over the full ladder; unused rungs have zero columns), lenience,
    min_confidence (``floor``), token trees at the target's review (``tree``, None: linear),
    its predictions and, if it ran for real, its measurements:
    ``outcomes`` (one per prompt run, the fastest of its rounds), how many of its ``runs``
    gave output ``identical`` to ar's, and where the others diverged. ``order``: the neural
    drafters' names top to bottom when the setting restacks them (``arranged``; a ladder with
    a drafter of another family, ``csdraft.tune.placements``), None for the ladder's order;
    ``k`` and per-drafter tuples are then over the ladder so arranged."""

    k: KMatrix
    lenience: Lenience = 1.0
    floor: PerDrafter = 0.0
    tree: TreeSettings | None = None
    label: str = ""
    analytic: float | None = None
    pred: Prediction | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    runs: int = 0
    identical: int = 0
    divergences: list[str] = field(default_factory=list)
    order: tuple[str, ...] | None = None

    @property
    def key(self) -> tuple:
        """(k, lenience, floor, tree), and the order when the setting restacks the drafters."""
        key = (self.k, self.lenience, self.floor, self.tree)
        return key if self.order is None else (*key, self.order)

    def names_in(self, names: Sequence[str]) -> list[str]:
        """The ladder's rung names (``names``, in ladder order) as this setting stacks them."""
        if self.order is None:
            return list(names)
        return [names[0], *self.order, *names[1 + len(self.order) :]]

    def spec_of(self, ladder: LadderSpec, name: str = "", description: str = "") -> LadderSpec:
        """The ladder this setting runs, validated: the rungs its k-matrix uses (with their
        own settings), its k-matrix over them, its lenience and min_confidence on the neural
        drafters it keeps and its tree at the target's review; renamed when ``name`` is given."""
        ladder = arranged(ladder, self.order, self.k)
        kept, sub = kmatrix.sub_ladder(self.k)
        neural = [r for r in kept if ladder.rungs[r].reviews]
        spec = ladder.keep([ladder.rungs[r].name for r in kept], sub)
        spec = spec.with_settings(
            "tune",
            lenience=settings.for_rungs(self.lenience, neural) if neural else None,
            min_confidence=settings.for_rungs(self.floor, neural) if neural else None,
        )
        spec = spec.with_rung(spec.target.name, "tune", tree=self.tree)
        return spec.replace(
            "tune", name=name or spec.name, description=description or spec.description
        )

    @property
    def speedup(self) -> float:
        """The replay's predicted speedup (0 when not predicted)."""
        return self.pred.speedup if self.pred else 0.0

    @property
    def measured(self) -> bool:
        """Whether it ran for real."""
        return bool(self.outcomes)

    def measured_speedup(self, ar: Sequence[Outcome]) -> float | None:
        """Measured wall-time speedup over ``ar``'s outcomes on the prompts both ran."""
        n = min(len(self.outcomes), len(ar))
        mine = sum(o.wall_s for o in self.outcomes[:n])
        return sum(o.wall_s for o in ar[:n]) / mine if n and mine > 0 else None


def arranged(spec: LadderSpec, order: Sequence[str] | None, k: KMatrix) -> LadderSpec:
    """``spec`` with its neural drafters stacked in ``order`` (every one of them, by name, top
    to bottom) and the k-matrix ``k`` over them, Max-Gram staying at the bottom, the target's
    tree left to the caller (``Candidate.spec_of`` sets it); ``spec`` itself for None or the
    ladder's own order."""
    if order is None or tuple(order) == tuple(d.name for d in spec.drafters):
        return spec
    rest = [r for r in spec.rungs[1:] if not r.reviews]
    rungs = (dataclasses.replace(spec.target, tree=None), *(spec.rung(n) for n in order), *rest)
    return spec.replace("tune", rungs=rungs, k_matrix=[list(row) for row in k])


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
        can = kmatrix.canonical(k)
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
                    can = kmatrix.canonical(rows)
                    if can is not None and can != k:
                        out.add(can)
    return sorted(out)


def has_inner_reviews(k: KMatrix, n_neural: int) -> bool:
    """Whether some neural drafter (rungs 1..n_neural - 1) reviews drafts (where lenience
    acts)."""
    return any(any(k[r]) for r in range(1, min(len(k), n_neural)))


def uses_neural_drafter(k: KMatrix, n_neural: int) -> bool:
    """Whether some neural drafter drafts (where min_confidence acts)."""
    return any(d < n_neural for d in kmatrix.used_rungs(k))


def setting_key(
    k: KMatrix,
    lenience: Lenience,
    floor: PerDrafter,
    n_neural: int,
    tree: TreeSettings | None = None,
) -> tuple:
    """(k, lenience, floor, tree) with the settings that cannot act on ``k`` made neutral:
    lenience without inner reviews, min_confidence and trees without a neural drafter (trees
    branch on its probabilities). ``n_neural`` counts the ladder's neural rungs, target
    included (``len(spec.drafters) + 1``)."""
    if not has_inner_reviews(k, n_neural):
        lenience = 1.0
    if not uses_neural_drafter(k, n_neural):
        floor, tree = 0.0, None
    return (k, lenience, floor, tree)


def current_setting(spec: LadderSpec) -> tuple:
    """The ladder's own (k-matrix, lenience, min_confidence, target's tree), as
    ``setting_key`` keys it."""
    k = kmatrix.canonical(spec.k_matrix)
    lenience = settings.from_spec([d.lenience for d in spec.drafters], 1.0)
    floor = settings.from_spec([d.min_confidence for d in spec.drafters], 0.0)
    n = len(spec.drafters) + 1
    return setting_key(k, lenience, floor, n, spec.target.tree) if k else (None, 1.0, 0.0, None)


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
    min_confidence; try lenience values; try token trees at the target's review of the best
    linear settings (``TREES``) when the target's tree cost was measured. Return candidates,
    best predicted first."""
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
        for g in (("vertical", kmatrix.is_vertical(k)), ("horizontal", kmatrix.is_horizontal(k))):
            if g[1]:
                groups.setdefault(g[0], []).append(k)
        groups.setdefault(frozenset(kmatrix.used_rungs(k)), []).append(k)
    for ks in groups.values():
        pool += ks[:3]
    current = kmatrix.canonical(spec.k_matrix)
    if current is not None:
        pool.append(current)
    pool = list(dict.fromkeys(pool))

    out: dict[tuple, Candidate] = {}
    n = cal.n_neural

    def evaluate(
        k: KMatrix,
        lenience: Lenience = 1.0,
        floor: PerDrafter = 0.0,
        tree: TreeSettings | None = None,
    ) -> Candidate:
        key = setting_key(k, lenience, floor, n, tree)
        k, lenience, floor, tree = key
        if key not in out:
            if k not in analytic:
                analytic[k] = model.predict(k).speedup
            pred = replay.predict(k, lenience, floor, tree)
            out[key] = Candidate(k, lenience, floor, tree, analytic=analytic[k], pred=pred)
        return out[key]

    def best(count: int, keep: Callable[[Candidate], bool] = lambda c: True) -> list[Candidate]:
        return [c for c in sorted(out.values(), key=lambda c: -c.speedup) if keep(c)][:count]

    def stage(label: str, settings_: Sequence[tuple]) -> None:
        tid = progress.add_task(label, total=len(settings_)) if progress else None
        for setting in settings_:
            evaluate(*setting)
            if progress is not None:
                progress.advance(tid)

    stage("replaying candidates", [(k,) for k in pool])
    if current is not None:
        evaluate(*current_setting(spec))
    neural = best(6, lambda c: uses_neural_drafter(c.k, n))
    stage("trying min_confidence", [(c.k, 1.0, f) for c in neural for f in MIN_CONFIDENCES])

    budget = REFINE_REPLAYS
    tid = progress.add_task("refining around the best", total=budget) if progress else None
    frontier = best(3)
    while frontier and budget > 0:
        improved = []
        for cand in frontier:
            for setting in nearby(cand):
                if budget <= 0:
                    break
                k, lenience, floor, tree = setting
                if setting_key(k, lenience, floor, n, tree) in out:
                    continue
                budget -= 1
                new = evaluate(*setting)
                if progress is not None:
                    progress.advance(tid)
                if new.speedup > cand.speedup:
                    improved.append(new)
        frontier = sorted(improved, key=lambda c: -c.speedup)[:3]
    if progress is not None:
        progress.update(tid, completed=REFINE_REPLAYS)

    lenient = best(4, lambda c: has_inner_reviews(c.k, n) and c.lenience == 1.0)
    stage("trying lenience", [(c.k, v, c.floor) for c in lenient for v in LENIENCES[1:]])
    if cal.tree_cost is not None:
        linear = best(3, lambda c: uses_neural_drafter(c.k, n) and c.lenience == 1.0)
        stage("trying token trees", [(c.k, 1.0, c.floor, t) for c in linear for t in TREES])
    return sorted(out.values(), key=lambda c: (-c.speedup, settings.largest(c.lenience)))


def nearby(cand: Candidate) -> list[tuple]:
    """Settings one step from ``cand``: a k-matrix neighbour, or the next min_confidence up or
    down (when it is one of ``MIN_CONFIDENCES``)."""
    out = [(k, cand.lenience, cand.floor, cand.tree) for k in neighbours(cand.k)]
    if isinstance(cand.floor, int | float) and cand.floor in MIN_CONFIDENCES:
        i = MIN_CONFIDENCES.index(cand.floor)
        for j in (i - 1, i + 1):
            if 0 <= j < len(MIN_CONFIDENCES):
                out.append((cand.k, cand.lenience, MIN_CONFIDENCES[j], cand.tree))
    return out


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
    horizontal-only, the best without the smallest neural drafter (rung ``n_neural - 1``) or
    without Max-Gram (the last drafting rung, when ``has_maxgram``); as many as one round
    over one prompt fits in the budget (at least the best and the current). The best with a
    token tree comes after the best lenient one."""
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
    add(best(lambda c: c.tree is not None))
    add(best(lambda c: kmatrix.is_vertical(c.k) and kmatrix.family(c.k) != "single"))
    add(best(lambda c: kmatrix.is_horizontal(c.k) and kmatrix.family(c.k) != "single"))
    d = len(by_speed[0].k) if by_speed else 0
    if n_neural > 1:
        smallest = n_neural - 1
        add(best(lambda c: smallest not in kmatrix.used_rungs(c.k)))
    if has_maxgram:
        add(best(lambda c: d not in kmatrix.used_rungs(c.k)))
    wanted = wanted[:most]
    keep = min(2, len(wanted))
    while len(wanted) > keep:
        round_s = ar_round_s + sum(c.pred.seconds[0] for c in wanted if c.pred)
        if round_s <= budget_s:
            break
        wanted.pop()
    return wanted
