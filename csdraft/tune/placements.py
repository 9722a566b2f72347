"""Tune of a ladder the replay cannot model: one with a drafter of another family (a model rung
with its own tokenizer; the replay works in the target's tokens) or a statistical rung that
learns from the run itself (token recycling). Such a ladder is judged by real runs alone. The
candidates are placements of its neural drafters: every order of every subset of them, its
statistical rung (Max-Gram or recycling) staying at the bottom, each with a few k-matrices (its
own block lengths, shorter and longer) and min_confidence values, every one a spec transform of
the loaded ladder (a restacked one is ``Candidate.order``; no model is loaded twice). They run
for real, interleaved prompt by prompt with ar and the current settings through ``verify``
(noise checks, exactness against ar's output), and the report says what each placement measured
and whether each foreign drafter pays, and where: the best placement with it against the best
without it."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csdraft.console import fx, num, pct, task_progress
from csdraft.engine import kmatrix
from csdraft.engine.kmatrix import KMatrix
from csdraft.errors import UsageError
from csdraft.runs import Outcome
from csdraft.spec import LadderSpec
from csdraft.tune import noise, partial, settings
from csdraft.tune.calibration import Calibration, calibrate
from csdraft.tune.report import costs_table, rungs_text
from csdraft.tune.search import Candidate, setting_key
from csdraft.tune.verify import AR, RealRuns, measure, tokens_per_forward, tokens_per_s
from csdraft.tune.winner import declare, noticer, report_runs

if TYPE_CHECKING:
    from rich.console import Console

    from csdraft.api import Ladder

Placement = tuple[str, ...]
"""Neural drafters by name, top to bottom (the statistical rung, when the ladder has one, below
them)."""

SCALES = (1.0, 0.5, 1.5)
"""Each placement's k-matrices: its reviewers' own block lengths (``own_blocks``) scaled."""
FLOORS = (0.0, 0.4, 0.7)
"""min_confidence values tried (on every neural drafter) besides the ladder's own."""
DEFAULT_BLOCK = 4
"""A reviewer's block length in a placement when the ladder gives it none."""
PROMPTS_IN_BUDGET = 2
"""The settings run are as many as let this many prompts run within ``--budget`` (each
setting estimated at ar's time), and at least the current one and each placement's own."""


def unreplayable(spec: LadderSpec, foreign: Sequence[str]) -> str | None:
    """Why the replay cannot model ``spec`` (its ``foreign`` rungs have their own tokenizer, or
    a statistical rung learns from the run itself), or None."""
    if foreign:
        return f"{', '.join(foreign)} has its own tokenizer (the replay works in the target's)"
    learns = [r.name for r in spec.rungs if not r.reviews and r.kind != "max-gram"]
    if learns:
        return f"{', '.join(learns)} learns from the run itself (the replay cannot model it)"
    return None


def bottom(spec: LadderSpec) -> bool:
    """Whether the ladder has a statistical rung (Max-Gram or recycling) at its bottom."""
    return not spec.rungs[-1].reviews


def placements(drafters: Sequence[str], maxgram: bool) -> list[Placement]:
    """Every order of every subset of ``drafters``, deepest first, the ladder's own order first
    among equals: (a, b) -> (a, b), (b, a), (a,), (b,), and () (the statistical rung alone)
    with ``maxgram`` (a statistical rung at the bottom; without it, () is ar)."""
    out = [
        p
        for n in range(len(drafters), -1, -1)
        for subset in itertools.combinations(drafters, n)
        for p in itertools.permutations(subset)
    ]
    return out if maxgram else [p for p in out if p]


def own_blocks(spec: LadderSpec) -> dict[str, int]:
    """Each model rung's block length as a reviewer in the ladder (its k-matrix row's sum), by
    name; ``DEFAULT_BLOCK`` for one that reviews nothing there."""
    k = spec.k_matrix
    return {
        r.name: kmatrix.block_length(k, i) or DEFAULT_BLOCK
        for i, r in enumerate(spec.rungs)
        if r.reviews
    }


def full_order(spec: LadderSpec, placement: Placement) -> tuple[str, ...]:
    """Every neural drafter, the placement's first (in its order), then the rest in ladder
    order (unused: zero columns)."""
    return (*placement, *(d.name for d in spec.drafters if d.name not in placement))


def placement_k(spec: LadderSpec, placement: Placement, scale: float = 1.0) -> KMatrix | None:
    """The vertical k-matrix of ``placement`` over the ladder arranged by ``full_order``: each
    reviewer (the target, then the placement's drafters) reviews blocks from the rung right
    below it (the deepest drafter from the statistical rung, or none without it), of its
    ``own_blocks`` length times ``scale`` (at least 1). None: nothing drafts (ar)."""
    blocks = own_blocks(spec)
    d = spec.drafting_rungs
    k = [[0] * d for _ in range(d)]
    reviewers = [spec.target.name, *placement]
    for i, name in enumerate(reviewers):
        if i < len(placement):
            col = i  # the next drafter of the placement (ladder index i + 1)
        elif bottom(spec):
            col = d - 1  # the statistical rung, at the bottom
        else:
            break
        k[i][col] = max(1, round(blocks[name] * scale))
    return kmatrix.canonical(k)


def own_setting(spec: LadderSpec, order: Sequence[str], field: str, neutral: float) -> Any:
    """The ladder's per-drafter ``field`` (lenience, min_confidence) in ``order``, as a
    candidate holds it (one number when all agree)."""
    return settings.from_spec([getattr(spec.rung(n), field) for n in order], neutral)


def candidates(spec: LadderSpec) -> list[Candidate]:
    """The current settings first, then every placement's settings in rounds (its own block
    lengths with the ladder's min_confidence, shorter, longer, then ``FLOORS``), so that the
    first ``1 + len(placements)`` hold the current one and each placement's own. Duplicates
    (a placement that is the current ladder) are dropped."""
    ladder_order = tuple(d.name for d in spec.drafters)
    n = len(spec.drafters) + 1
    current = Candidate(
        *setting_key(
            kmatrix.canonical(spec.k_matrix) or (),
            own_setting(spec, ladder_order, "lenience", 1.0),
            own_setting(spec, ladder_order, "min_confidence", 0.0),
            n,
            spec.target.tree,
        ),
        label="current",
    )
    out = {current.key: current}
    rounds: list[list[Candidate]] = [[] for _ in range(len(SCALES) + len(FLOORS))]
    for placement in placements(ladder_order, bottom(spec)):
        order = full_order(spec, placement)
        lenience = own_setting(spec, order, "lenience", 1.0)
        own_floor = own_setting(spec, order, "min_confidence", 0.0)
        variants = [(scale, own_floor) for scale in SCALES] + [(1.0, f) for f in FLOORS]
        for j, (scale, floor) in enumerate(variants):
            k = placement_k(spec, placement, scale)
            if k is None:
                continue
            key = setting_key(k, lenience, floor, n)
            keep = None if order == ladder_order else order
            rounds[j].append(Candidate(*key, order=keep))
    for c in itertools.chain.from_iterable(rounds):
        out.setdefault(c.key, c)
    return list(out.values())


def pick(
    pool: Sequence[Candidate], n_placements: int, budget_s: float, ar_s: float
) -> list[Candidate]:
    """The first of ``pool`` (in its priority order) that let ``PROMPTS_IN_BUDGET`` prompts run
    within ``budget_s``, each setting estimated at ``ar_s`` a prompt (ar itself runs too); at
    least the current settings and each placement's own (``1 + n_placements``)."""
    fits = int(budget_s / (PROMPTS_IN_BUDGET * ar_s)) - 1 if ar_s > 0 else len(pool)
    return list(pool[: max(1 + n_placements, fits)])


def placement_of(c: Candidate, names: Sequence[str], n_neural: int) -> Placement:
    """The neural drafters a setting uses, top to bottom."""
    stacked = c.names_in(names)
    return tuple(stacked[r] for r in sorted(kmatrix.used_rungs(c.k)) if r < n_neural)


def acceptance(outcomes: Sequence[Outcome]) -> dict[str, tuple[int, int]]:
    """(proposed, accepted) by reviewer name over some generations."""
    total: dict[str, tuple[int, int]] = {}
    for o in outcomes:
        for name, (proposed, accepted) in o.reviews.items():
            p, a = total.get(name, (0, 0))
            total[name] = (p + proposed, a + accepted)
    return total


def acceptance_text(outcomes: Sequence[Outcome]) -> str:
    """'qwen-1.5b 62%, smollm-135m 81%': the share of proposals each reviewer kept."""
    parts = [f"{name} {pct(a / p, 0)}" for name, (p, a) in acceptance(outcomes).items() if p]
    return ", ".join(parts) or "-"


def placements_table(
    chosen: Sequence[Candidate], ar: Sequence[Outcome], names: Sequence[str]
) -> Any:
    """Every setting run, fastest first: its rungs (top to bottom), k-matrix, min_confidence,
    measured speed over ar, tokens per target forward and each reviewer's acceptance."""
    from rich import box
    from rich.table import Table

    table = Table(title="placements: measured", title_style="bold", box=box.SIMPLE_HEAD)
    for col, just in (
        ("setting", "left"),
        ("rungs (top to bottom)", "left"),
        ("k-matrix", "left"),
        ("conf", "right"),
        ("measured", "right"),
        ("tok/s", "right"),
        ("tok/fwd", "right"),
        ("accepted by reviewer", "left"),
        ("same", "right"),
    ):
        table.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    table.add_row(
        "ar", names[0], "-", "", fx(1.0), num(tokens_per_s(ar)), num(tokens_per_forward(ar)), "", ""
    )
    for c in sorted(chosen, key=lambda c: -(c.measured_speedup(ar) or 0.0)):
        used, sub = kmatrix.sub_ladder(c.k)
        table.add_row(
            c.label,
            rungs_text(c.k, c.names_in(names)),
            kmatrix.text(sub),
            settings.text(settings.shown(c.floor, used)),
            fx(c.measured_speedup(ar)),
            num(tokens_per_s(c.outcomes)) if c.measured else "-",
            num(tokens_per_forward(c.outcomes)) if c.measured else "-",
            acceptance_text(c.outcomes),
            f"{c.identical}/{c.runs}" if c.runs else "-",
        )
    table.caption = (
        "measured: wall-time speedup over ar on the prompts run (each prompt's fastest round); "
        "tok/fwd: tokens per target forward; accepted: each reviewer's share of the proposals "
        "it scored; same: outputs identical to ar's. Costs per pass: the table above (each "
        "model timed in its own tokens)."
    )
    return table


def answers(
    chosen: Sequence[Candidate],
    ar: Sequence[Outcome],
    cal: Calibration,
    foreign: Sequence[str],
    band: float,
) -> list[str]:
    """Each placement's best measured setting, then for each foreign drafter: its cost per pass
    against the target's, how often its reviewers accepted its drafts, and whether it pays
    (its best placement against the best without it, with the noise interval ``band``)."""
    names, n = cal.names, cal.n_neural
    measured = sorted(
        (c for c in chosen if c.measured_speedup(ar)), key=lambda c: -(c.measured_speedup(ar) or 0)
    )
    best: dict[Placement, Candidate] = {}
    for c in measured:
        best.setdefault(placement_of(c, names, n), c)

    def show(c: Candidate | None) -> str:
        if c is None:
            return "ar, 1.00x (nothing else measured without it)"
        used, sub = kmatrix.sub_ladder(c.k)
        return (
            f"{rungs_text(c.k, c.names_in(names))} [{kmatrix.text(sub)}], min_confidence "
            f"{settings.text(settings.shown(c.floor, used))}: {fx(c.measured_speedup(ar))}, "
            f"{num(tokens_per_forward(c.outcomes))} tokens per target forward"
        )

    lines = ["best measured setting of each placement:"]
    lines += [f"  {show(c)}" for c in best.values()]
    target = cal.costs[0]
    for name in foreign:
        r = names.index(name)
        curve = cal.costs[r]
        ratios = ", ".join(f"{curve(g) / target(g):.2f} at {g}" for g in (1, 8))
        lines.append(
            f"{name} (its own tokenizer): a pass costs {1000 * curve(1):.1f} ms against the "
            f"target's {1000 * target(1):.1f} ms (ratio by block length: {ratios})"
        )
        for reviewer, (p, a) in _reviewed(measured, name, names, n).items():
            lines.append(
                f"  its drafts as {reviewer} reviewed them: {a}/{p} accepted ({pct(a / p, 1)})"
            )
        with_it = next((c for c in measured if name in placement_of(c, names, n)), None)
        without = next((c for c in measured if name not in placement_of(c, names, n)), None)
        where = rungs_text(with_it.k, with_it.names_in(names)) if with_it else ""
        lines.append("  " + _pays(name, with_it, without, ar, band, where))
        lines.append(f"    with it: {show(with_it)}" if with_it else "    with it: not measured")
        lines.append(f"    without it: {show(without)}")
    return lines


def _reviewed(
    measured: Sequence[Candidate], drafter: str, names: Sequence[str], n: int
) -> dict[str, tuple[int, int]]:
    """(proposed, accepted) by the reviewer right above ``drafter``, over every setting where
    it is the only drafter of that reviewer's blocks (vertical settings)."""
    total: dict[str, tuple[int, int]] = {}
    for c in measured:
        placed = placement_of(c, names, n)
        if drafter not in placed or not kmatrix.is_vertical(kmatrix.sub_ladder(c.k)[1]):
            continue
        reviewer = names[0] if placed.index(drafter) == 0 else placed[placed.index(drafter) - 1]
        got = acceptance(c.outcomes).get(reviewer)
        if got and got[0]:
            p, a = total.get(reviewer, (0, 0))
            total[reviewer] = (p + got[0], a + got[1])
    return total


def _pays(
    name: str,
    with_it: Candidate | None,
    without: Candidate | None,
    ar: Sequence[Outcome],
    band: float,
    where: str,
) -> str:
    """Whether ``name`` pays: its best placement (``where``) against the best without it."""
    if with_it is None:
        return f"does {name} pay? no setting with it was measured"
    got = with_it.measured_speedup(ar) or 0.0
    base = without.measured_speedup(ar) if without is not None else 1.0
    margin = got / base - 1 if base else 0.0
    gap = f"{100 * margin:+.1f}% ± {100 * band:.1f}%"
    if margin > band:
        return f"{name} pays, placed as {where}: {gap} over the best without it"
    if margin < -band:
        return f"{name} does not pay: at its best ({where}) it is {gap} against the best without it"
    return f"{name} neither pays nor costs beyond the measured noise: {gap}, placed as {where}"


def tune_placements(
    loaded: Ladder,
    prompts: Sequence[Sequence[int]],
    foreign: Sequence[str],
    why: str,
    asked: dict[str, Any],
    write: bool,
    write_name: str | None,
    config: Path | None,
    out: Console,
    err: Console,
) -> int:
    """``tune k-matrix`` of a ladder the replay cannot model (``why``; ``foreign``: its rungs
    with their own tokenizer, each judged): calibrate (reference runs and costs), run the
    placements for real within ``asked['budget_s']``, report, declare."""
    spec = loaded.spec
    budget, max_new = float(asked["budget_s"]), int(asked["max_new_tokens"])
    if budget <= 0:
        raise UsageError(
            f"ladder '{spec.name}': {why}, so tune judges its placements by real runs alone: "
            "give --budget more than 0"
        )
    err.print(f"{why}: every placement of the drafters is judged by real runs", highlight=False)
    cal: Calibration | None = None
    runs: RealRuns | None = None
    chosen: list[Candidate] = []
    notices: list[str] = []

    say = noticer(err, notices)
    try:
        with task_progress(err) as progress:
            cal = calibrate(loaded, prompts, max_new, progress=progress, teacher=False)
        ar_s = statistics.fmean(r.ar_wall_s for r in cal.records) if cal.records else 0.0
        pool = candidates(spec)
        count = len(placements([d.name for d in spec.drafters], bottom(spec)))
        chosen = pick(pool, count, budget, ar_s)
        for i, c in enumerate(chosen):
            c.label = c.label or str(i + 1)
        runs = RealRuns()
        with task_progress(err) as progress:
            runs, timings, widened = measure(loaded, cal, None, chosen, budget, progress, say, runs)
    except KeyboardInterrupt:
        if cal is None:
            raise
        return partial.interrupted(asked, cal, None, chosen, runs, err)
    ar = runs.best(AR)
    out.print(costs_table(cal))
    out.print(placements_table(chosen, ar, cal.names))
    out.print()
    out.print("[bold]calibration[/]")
    out.print(
        f"  {len(cal.records)} prompts, {sum(len(r.ref) for r in cal.records)} reference tokens "
        f"(max {max_new} new each); {len(chosen)} of {len(pool)} settings run (placements of "
        f"the drafters; judged by real runs alone: {why})",
        highlight=False,
    )
    report_runs(out, runs, timings, chosen, widened, notices)
    out.print()
    out.print("[bold]answers[/]")
    band = noise.noise_band(timings, widen=widened)
    for text in answers(chosen, ar, cal, foreign, band):
        out.print("  " + text, highlight=False)
    out.print()
    return declare(
        out, spec, chosen, chosen[0], runs, timings, widened, cal.names, str(asked["data"]),
        write, write_name, config,
    )  # fmt: skip
