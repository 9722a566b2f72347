"""``csdraft tune k-matrix`` end to end (``run_tune``): calibrate, search, verify (re-measuring
while the machine looks busy), report, and name a winner only by a margin over the current
settings larger than the measured noise; with ``--write``, store it as a new ladder."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from csdraft.console import fx, pct, progress_console, report_console, task_progress
from csdraft.engine import kmatrix
from csdraft.errors import CsdraftError, UsageError
from csdraft.outputs import check_writable
from csdraft.tune import noise, partial, settings
from csdraft.tune.agreement import agreement
from csdraft.tune.analytic import AnalyticModel
from csdraft.tune.calibration import Calibration, calibrate
from csdraft.tune.data import load_calibration_prompts
from csdraft.tune.replay import Replay
from csdraft.tune.report import agreement_table, answers, candidates_table, costs_table, rungs_text
from csdraft.tune.search import Candidate, current_setting, pick_for_measurement, search
from csdraft.tune.verify import AR, RealRuns, measure, wall
from csdraft.tune.write import tuned_spec, write_winner

if TYPE_CHECKING:
    from rich.console import Console

    from csdraft.spec import LadderSpec


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
    from csdraft.api import Ladder
    from csdraft.ladder import get_ladder, user_config_path

    if write_name is not None and not write:
        raise UsageError(f"the name {write_name!r} is only used with --write; add --write")
    out = report_console()
    err = progress_console()
    spec = get_ladder(ladder, config)
    if spec.drafting_rungs == 0:
        raise UsageError(f"ladder '{spec.name}' has no drafters: there is no k-matrix to tune")
    if others := [r.name for r in spec.rungs if not r.reviews and r.kind != "max-gram"]:
        raise UsageError(
            f"ladder '{spec.name}': tune replays models and Max-Gram only, not {', '.join(others)}"
            " (token recycling learns from the run itself): set its k-matrix by hand"
        )
    if write:
        check_writable(Path(config) if config is not None else user_config_path(), "--write")
    texts, source = load_calibration_prompts(data, limit, seed)
    err.print(f"[bold]csdraft tune[/]: ladder {spec.name}, {len(texts)} prompts from {source}")
    loaded = Ladder.load(spec)
    prompts = [loaded.encode(t) for t in texts]
    for p in prompts:
        loaded.check_length(p, max_new_tokens)

    cal = ranked = runs = timings = None
    chosen: list[Candidate] = []
    widened = False
    notices: list[str] = []
    try:
        with task_progress(err) as progress:
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
        if budget > 0:
            ar_round = replay.ar_seconds()[0] if cal.records else 0.0
            chosen = pick_for_measurement(
                ranked, current, cal.n_neural, cal.maxgram is not None, budget, ar_round
            )
            for c in chosen:
                if not c.label:
                    c.label = kmatrix.family(c.k)

            def say(line: str) -> None:
                notices.append(line)
                err.print(f"[yellow]{line}[/]", highlight=False)

            runs = RealRuns()
            with task_progress(err) as progress:
                runs, timings, widened = measure(
                    loaded, cal, replay, chosen, budget, progress, say, runs
                )
    except KeyboardInterrupt:
        if cal is None:  # nothing measured yet to keep
            raise
        asked = {
            "ladder": spec.name,
            "data": data,
            "source": source,
            "limit": limit,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "budget_s": budget,
        }
        kept = partial.report(asked, cal, ranked, chosen, runs)
        path = partial.save(kept, spec.name)
        parts = ["the calibration"]
        if ranked is not None:
            parts.append(f"{min(len(ranked), partial.PREDICTIONS)} predictions")
        if n := partial.finished_prompts(kept):
            parts.append(f"{n} prompt{'' if n == 1 else 's'} of real runs")
        what = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        err.print(f"csdraft: interrupted; kept {what} in {path}", highlight=False, soft_wrap=True)
        return 130
    ar = runs.best(AR) if runs else []

    out.print(costs_table(cal))
    out.print(agreement_table(agree))
    shown = list(chosen) + [c for c in ranked[:8] if all(c.key != s.key for s in chosen)]
    out.print(candidates_table(ranked, shown, ar, cal.names))
    out.print()
    out.print("[bold]calibration[/]")
    exact = all(c.pred.exact for c in ranked if c.pred)
    out.print(
        f"  {len(cal.records)} prompts, {sum(len(r.ref) for r in cal.records)} reference tokens "
        f"(max {max_new_tokens} new each); replay reproduced the reference outputs: "
        f"{'yes' if exact else 'NO (report this)'}"
    )
    ar_pred, ar_real = sum(replay.ar_seconds()), sum(r.ar_wall_s for r in cal.records)
    if ar_real > 0:
        out.print(
            f"  ar replayed: {ar_pred:.2f} s predicted vs {ar_real:.2f} s measured on the "
            f"reference runs ({100 * (ar_pred - ar_real) / ar_real:+.1f}%)"
        )
    if runs is not None and timings is not None:
        _report_runs(out, runs, timings, chosen, widened, notices)
    else:
        out.print("  --budget 0: predictions only, nothing measured")
    out.print()
    out.print("[bold]answers[/]")
    for line in answers(ranked, ar, cal, agree):
        out.print("  " + line, highlight=False)
    out.print()

    if runs is None or timings is None:
        best = ranked[0]
        return _predicted_winner(out, spec, best, current, cal, data, write, write_name, config)
    measured = [c for c in chosen if c.measured_speedup(ar)]
    if not measured:
        raise CsdraftError("no setting could be measured")
    winner = max(measured, key=lambda c: c.measured_speedup(ar) or 0.0)
    names = {c.key: str(i + 1) for i, c in enumerate(chosen)}
    baseline = current if current is not None and current.measured else None
    base_s = wall(baseline.outcomes) if baseline else wall(ar)
    others = [runs.totals(names[winner.key])]
    if baseline is not None:
        others.append(runs.totals(names[baseline.key]))
    band = noise.noise_band(timings, others if len(runs.rounds) > 1 else (), widen=widened)
    verdict = noise.verdict(base_s, wall(winner.outcomes), band)
    got = winner.measured_speedup(ar)
    against = "the current settings" if baseline is not None else "the current settings (ar)"
    mine = baseline.measured_speedup(ar) if baseline is not None else 1.0
    setting = _setting_text(winner, cal.names)
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
                f"  best measured: {setting}: predicted {fx(winner.speedup)}, measured "
                f"{fx(got)}; {verdict.text()} over {against} (measured {fx(mine)} on the same "
                "prompts)",
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
    out.print(
        f"[bold green]winner[/]: {setting}: predicted {fx(winner.speedup)}, measured {fx(got)}",
        highlight=False,
    )
    if got is not None and got < 1.0:
        out.print("[yellow]  slower than ar on these prompts[/]")
    out.print(
        f"  {verdict.text()} over {against} (measured {fx(mine)} on the same prompts; the "
        "interval is the measured timing noise)",
        highlight=False,
    )
    desc = (
        f"tuned by csdraft tune on {len(runs.prompts)} prompts of {data}: predicted "
        f"{winner.speedup:.2f}x, measured {got:.2f}x over ar, {verdict.text()} over "
        f"{spec.name}'s settings"
    )
    return _finish(out, spec, winner, write, write_name, config, desc)


def _setting_text(c: Candidate, names: list[str]) -> str:
    """'k-matrix [[4, 2], [0, 6]] over d1+max-gram, lenience 1, min_confidence 0.3'."""
    _, sub = kmatrix.sub_ladder(c.k)
    tree = "" if c.tree is None else f", {c.tree.short}"
    return (
        f"k-matrix {[list(r) for r in sub]} over {rungs_text(c.k, names)}, lenience "
        f"{settings.text(c.lenience)}, min_confidence {settings.text(c.floor)}{tree}"
    )


def _report_runs(
    out: Console,
    runs: RealRuns,
    timings: noise.ArTimings,
    chosen: list[Candidate],
    widened: bool,
    notices: list[str],
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
    out.print(
        f"  ar on those prompts: {timings.calibration_s:.2f} s in calibration, {rounds_s} s in "
        f"the real runs, {timings.predicted_s:.2f} s predicted by the replay"
        + (f"; spread {pct(spread, 1)}" if spread is not None else ""),
        highlight=False,
    )
    for line in notices:
        out.print(f"  [yellow]{line}[/]", highlight=False)
    if widened:
        gap = timings.replay_gap or 0.0
        why = "still after re-measuring" if rounds > 1 else "no budget left to re-measure"
        out.print(
            f"  [yellow]the machine looks busy: {timings.describe()}; {why}, so the noise "
            f"interval is widened to at least the replay's gap (±{pct(gap, 1)})[/]",
            highlight=False,
        )
    elif notices:
        out.print("  timings steadied after re-measuring", highlight=False)


def _predicted_winner(
    out: Console,
    spec: LadderSpec,
    winner: Candidate,
    current: Candidate | None,
    cal: Calibration,
    data: str,
    write: bool,
    write_name: str | None,
    config: Path | None,
) -> int:
    """--budget 0: the best predicted setting, unverified."""
    out.print(
        f"[bold green]winner[/] (predicted only; --budget 0 measured nothing): "
        f"{_setting_text(winner, cal.names)}: predicted {fx(winner.speedup)}",
        highlight=False,
    )
    if current is not None and current.pred and winner is not current:
        gain = winner.speedup / current.speedup - 1 if current.speedup else None
        out.print(
            f"  predicted {pct(gain, 1)} over the current settings (predicted "
            f"{fx(current.speedup)}); unverified: run with --budget to measure it against "
            "the noise on this machine",
            highlight=False,
        )
    desc = (
        f"tuned by csdraft tune on {len(cal.records)} prompts of {data}: predicted "
        f"{winner.speedup:.2f}x over ar (not measured)"
    )
    return _finish(out, spec, winner, write, write_name, config, desc)


def _finish(
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
