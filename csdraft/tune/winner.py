"""The end of a tune run, whatever judged the candidates (the replay or real runs alone): the real
runs' lines, the winner by a margin over the current settings larger than the measured noise
(or none), the winner's k-matrix in words, and writing it with ``--write``."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from csdraft.console import fx, pct
from csdraft.engine import kmatrix
from csdraft.errors import CsdraftError
from csdraft.tune import noise, settings
from csdraft.tune.report import rungs_text
from csdraft.tune.search import Candidate
from csdraft.tune.verify import AR, RealRuns, wall
from csdraft.tune.write import tuned_spec, write_winner

if TYPE_CHECKING:
    from rich.console import Console

    from csdraft.spec import LadderSpec


def noticer(err: Console, notices: list[str]) -> Callable[[str], None]:
    """The real runs' ``say``: each notice printed (yellow) and kept in ``notices`` for the
    report."""

    def say(line: str) -> None:
        notices.append(line)
        err.print(f"[yellow]{line}[/]", highlight=False)

    return say


def setting_text(c: Candidate, names: Sequence[str]) -> str:
    """'k-matrix [[4, 2], [0, 6]] over d1+max-gram, lenience 1, min_confidence 0.3'."""
    used, sub = kmatrix.sub_ladder(c.k)
    tree = "" if c.tree is None else f", {c.tree.short}"
    lenience, floor = (settings.text(settings.shown(v, used)) for v in (c.lenience, c.floor))
    return (
        f"k-matrix {[list(r) for r in sub]} over {rungs_text(c.k, c.names_in(names))}, "
        f"lenience {lenience}, min_confidence {floor}{tree}"
    )


def speeds(c: Candidate, got: float | None) -> str:
    """'predicted 2.10x, measured 2.31x' ('measured 2.31x' for a setting not predicted)."""
    return (f"predicted {fx(c.speedup)}, " if c.pred else "") + f"measured {fx(got)}"


def report_runs(
    out: Console,
    runs: RealRuns,
    timings: noise.ArTimings,
    chosen: Sequence[Candidate],
    widened: bool,
    notices: Sequence[str],
) -> None:
    """The real runs' lines of the calibration section: coverage, exactness, divergences,
    prediction error, ar's timings and what the noise check concluded."""
    total = sum(c.runs for c in chosen)
    same = sum(c.identical for c in chosen)
    rounds = len(runs.rounds)
    prompts = len(runs.prompts)
    again = f", {rounds} rounds" if rounds > 1 else ""
    out.print(
        f"  real runs: {prompts} prompts x {len(chosen) + 1} settings, interleaved{again}; "
        f"identical outputs: {same}/{total}"
    )
    out.print(
        f"  ar repeated its calibration output: {runs.ar_same_as_reference}/{prompts * rounds}",
        highlight=False,
    )
    for c in chosen:
        for d in c.divergences:
            out.print(f"  [yellow]divergence[/] [{kmatrix.text(c.k)}]: {d}")
    errors = []
    ar = runs.best(AR)
    for c in chosen:
        got = c.measured_speedup(ar)
        pred = c.pred.speedup_on(runs.prompts) if c.pred else None
        if got and pred:
            errors.append(abs(pred - got) / got)
    if errors:
        out.print(
            f"  replay prediction error: mean {pct(statistics.fmean(errors), 1)}, "
            f"max {pct(max(errors), 1)} (|predicted - measured| / measured)"
        )
    rounds_s = " / ".join(f"{s:.2f}" for s in timings.rounds_s)
    spread = timings.spread
    predicted = (
        ""
        if timings.predicted_s is None
        else f", {timings.predicted_s:.2f} s predicted by the replay"
    )
    out.print(
        f"  ar on those prompts: {timings.calibration_s:.2f} s in calibration, {rounds_s} s in "
        f"the real runs{predicted}" + (f"; spread {pct(spread, 1)}" if spread is not None else ""),
        highlight=False,
    )
    for line in notices:
        out.print(f"  [yellow]{line}[/]", highlight=False)
    if widened:
        gap = timings.replay_gap
        why = "still after re-measuring" if rounds > 1 else "no budget left to re-measure"
        widen = (
            ""
            if gap is None
            else f", so the noise interval is widened to at least the replay's gap (±{pct(gap, 1)})"
        )
        out.print(
            f"  [yellow]the machine looks busy: {timings.describe()}; {why}{widen}[/]",
            highlight=False,
        )
    elif notices:
        out.print("  timings steadied after re-measuring", highlight=False)


def declare(
    out: Console,
    spec: LadderSpec,
    chosen: Sequence[Candidate],
    current: Candidate | None,
    runs: RealRuns,
    timings: noise.ArTimings,
    widened: bool,
    names: Sequence[str],
    data: str,
    write: bool = False,
    write_name: str | None = None,
    config: Path | None = None,
) -> int:
    """Name the fastest measured setting the winner when it beats the current settings (or
    ar) by more than the measured noise, else say none does; explain it and, with ``write``,
    store it (``finish``). ``names``: the ladder's rung names."""
    ar = runs.best(AR)
    measured = [c for c in chosen if c.measured_speedup(ar)]
    if not measured:
        raise CsdraftError("no setting could be measured")
    winner = max(measured, key=lambda c: c.measured_speedup(ar) or 0.0)
    runner = {c.key: str(i + 1) for i, c in enumerate(chosen)}
    baseline = current if current is not None and current.measured else None
    base_s = wall(baseline.outcomes) if baseline else wall(ar)
    others = [runs.totals(runner[winner.key])]
    if baseline is not None:
        others.append(runs.totals(runner[baseline.key]))
    band = noise.noise_band(timings, others if len(runs.rounds) > 1 else (), widen=widened)
    verdict = noise.verdict(base_s, wall(winner.outcomes), band)
    got = winner.measured_speedup(ar)
    against = "the current settings" if baseline is not None else "the current settings (ar)"
    mine = baseline.measured_speedup(ar) if baseline is not None else 1.0
    setting = setting_text(winner, names)
    if not verdict.declared:
        out.print(
            f"[bold yellow]no setting beats the current one by more than the measured noise "
            f"(±{100 * band:.1f}%)[/]",
            highlight=False,
        )
        if winner is baseline:
            out.print(
                f"  best measured: the current settings themselves ({setting}), measured {fx(got)}",
                highlight=False,
            )
        else:
            out.print(
                f"  best measured: {setting}: {speeds(winner, got)}; {verdict.text()} over "
                f"{against} (measured {fx(mine)} on the same prompts)",
                highlight=False,
            )
        if write:
            out.print(
                "  nothing written: --write stores a winner only when it beats the current "
                "settings by more than the noise; keep the current settings, or run again on "
                "a quieter machine or with a larger --budget",
                highlight=False,
            )
        return 0
    out.print(f"[bold green]winner[/]: {setting}: {speeds(winner, got)}", highlight=False)
    if got is not None and got < 1.0:
        out.print("[yellow]  slower than ar on these prompts[/]")
    out.print(
        f"  {verdict.text()} over {against} (measured {fx(mine)} on the same prompts; the "
        "interval is the measured timing noise)",
        highlight=False,
    )
    predicted = f"predicted {winner.speedup:.2f}x, " if winner.pred else ""
    desc = (
        f"tuned by csdraft tune on {len(runs.prompts)} prompts of {data}: {predicted}"
        f"measured {got:.2f}x over ar, {verdict.text()} over {spec.name}'s settings"
    )
    return finish(out, spec, winner, write, write_name, config, desc)


def finish(
    out: Console,
    spec: LadderSpec,
    winner: Candidate,
    write: bool,
    write_name: str | None,
    config: Path | None,
    description: str,
) -> int:
    """Explain the winner's k-matrix and write it (with --write)."""
    for line in tuned_spec(spec, winner, spec.name).explain_k_matrix():
        out.print(f"  {line}", highlight=False)
    if write:
        path, name = write_winner(spec, winner, write_name, config, description)
        note = "" if write_name in (None, name) else f" ('{write_name}' was taken)"
        out.print(f"wrote ladder [bold]{name}[/] to {path}{note}; use it with --ladder {name}")
    else:
        out.print(
            f"  (not written; add --write to store it as '{spec.name}-tuned')",
            highlight=False,
        )
    return 0
