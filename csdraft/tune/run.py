"""``csdraft tune k-matrix`` end to end (``run_tune``): calibrate, search, verify (re-measuring
while the machine looks busy), report, and name a winner only by a margin over the current
settings larger than the measured noise; with ``--write``, store it as a new ladder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from csdraft.console import fx, pct, progress_console, report_console, task_progress
from csdraft.engine import kmatrix
from csdraft.errors import CsdraftError, UsageError
from csdraft.outputs import check_writable
from csdraft.tune import partial
from csdraft.tune.agreement import agreement
from csdraft.tune.analytic import AnalyticModel
from csdraft.tune.calibration import Calibration, calibrate, foreign_rungs
from csdraft.tune.data import load_calibration_prompts
from csdraft.tune.placements import tune_placements, unreplayable
from csdraft.tune.replay import Replay
from csdraft.tune.report import agreement_table, answers, candidates_table, costs_table
from csdraft.tune.search import Candidate, current_setting, pick_for_measurement, search
from csdraft.tune.verify import AR, RealRuns, measure
from csdraft.tune.winner import declare, finish, noticer, report_runs, setting_text

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
    if write:
        check_writable(Path(config) if config is not None else user_config_path(), "--write")
    texts, source = load_calibration_prompts(data, limit, seed)
    err.print(f"[bold]csdraft tune[/]: ladder {spec.name}, {len(texts)} prompts from {source}")
    loaded = Ladder.load(spec)
    prompts = [loaded.encode(t) for t in texts]
    for p in prompts:
        loaded.check_length(p, max_new_tokens)
    asked = _asked(spec.name, data, source, limit, seed, max_new_tokens, budget)
    foreign = foreign_rungs(loaded)
    if why := unreplayable(spec, foreign):  # judged by real runs alone
        return tune_placements(
            loaded, prompts, foreign, why, asked, write, write_name, config, out, err
        )

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
            runs = RealRuns()
            with task_progress(err) as progress:
                runs, timings, widened = measure(
                    loaded, cal, replay, chosen, budget, progress, noticer(err, notices), runs
                )
    except KeyboardInterrupt:
        if cal is None:  # nothing measured yet to keep
            raise
        return partial.interrupted(asked, cal, ranked, chosen, runs, err)
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
        report_runs(out, runs, timings, chosen, widened, notices)
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
    return declare(
        out, spec, chosen, current, runs, timings, widened, cal.names, data, write, write_name,
        config,
    )  # fmt: skip


def _asked(
    ladder: str,
    data: str,
    source: str,
    limit: int,
    seed: int,
    max_new_tokens: int,
    budget: float,
) -> dict[str, object]:
    """What tune was asked, as an interrupted run's report keeps it."""
    return {
        "ladder": ladder,
        "data": data,
        "source": source,
        "limit": limit,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "budget_s": budget,
    }


def _predicted_winner(
    out: Console,
    spec: LadderSpec,
    best: Candidate,
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
        f"{setting_text(best, cal.names)}: predicted {fx(best.speedup)}",
        highlight=False,
    )
    if current is not None and current.pred and best is not current:
        gain = best.speedup / current.speedup - 1 if current.speedup else None
        out.print(
            f"  predicted {pct(gain, 1)} over the current settings (predicted "
            f"{fx(current.speedup)}); unverified: run with --budget to measure it against "
            "the noise on this machine",
            highlight=False,
        )
    desc = (
        f"tuned by csdraft tune on {len(cal.records)} prompts of {data}: predicted "
        f"{best.speedup:.2f}x over ar (not measured)"
    )
    return finish(out, spec, best, write, write_name, config, desc)
