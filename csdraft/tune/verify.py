"""Verify: the real runs. ``ar`` and the chosen settings run for real through
``csdraft.runs.interleaved`` (every setting on each prompt in turn, the order rotated per
prompt), in rounds over the same prompts while the machine looks busy and the budget allows;
every output is checked against ar's with ``csdraft.exactness``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from csdraft import exactness
from csdraft.engine import Sampling
from csdraft.runs import Outcome, Runner, cascade_runner, interleaved
from csdraft.trace import tokens_per_second
from csdraft.tune import noise
from csdraft.tune.calibration import Calibration, PromptRecord
from csdraft.tune.replay import Replay
from csdraft.tune.search import Candidate

if TYPE_CHECKING:
    from rich.progress import Progress

    from csdraft.api import Ladder

AR = "ar"
"""The runner name of plain autoregressive decoding (the chosen settings are '1', '2', ...)."""


@dataclass
class RealRuns:
    """What the real runs gave: ``rounds[j][name]`` holds runner ``name``'s outcomes in round
    j, one per prompt of ``prompts`` (calibration prompt indices), in order; ``seconds[j]`` is
    round j's wall time. Round 0 covers as many prompts as the budget allowed; later rounds
    (re-measurements) cover the same prompts."""

    prompts: list[int] = field(default_factory=list)
    rounds: list[dict[str, list[Outcome]]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    ar_same_as_reference: int = 0

    def best(self, name: str) -> list[Outcome]:
        """``name``'s outcome on each prompt from its fastest round (noise only adds time)."""
        per_prompt = zip(*(r[name] for r in self.rounds), strict=True)
        return [min(outs, key=lambda o: o.wall_s) for outs in per_prompt]

    def totals(self, name: str) -> list[float]:
        """``name``'s seconds over all the prompts, one total per round."""
        return [wall(r[name]) for r in self.rounds]


def wall(outcomes: Sequence[Outcome]) -> float:
    """Seconds over some generations."""
    return sum(o.wall_s for o in outcomes)


def tokens_per_s(outcomes: Sequence[Outcome]) -> float | None:
    """New tokens per second over some generations (None when there are none)."""
    return tokens_per_second(sum(len(o.ids) for o in outcomes), wall(outcomes))


def tokens_per_forward(outcomes: Sequence[Outcome]) -> float | None:
    """New tokens per target forward pass over some generations."""
    forwards = sum(o.target_forwards for o in outcomes)
    return sum(len(o.ids) for o in outcomes) / forwards if forwards else None


def runners(ladder: Ladder, chosen: Sequence[Candidate]) -> dict[str, Runner]:
    """``ar``, then each chosen setting (named '1', '2', ... in order), each a cascade over the
    sub-ladder its k-matrix uses (``kmatrix.sub_ladder``) with its lenience and
    min_confidence for the neural drafters it keeps and its tree at the target's review."""
    spec, eos = ladder.spec, ladder.eos_ids
    out = {AR: cascade_runner(ladder.cascade(spec.keep([], []), Sampling()), eos)}
    for i, cand in enumerate(chosen):
        out[str(i + 1)] = cascade_runner(ladder.cascade(cand.spec_of(spec), Sampling()), eos)
    return out


def run_round(
    runs: RealRuns,
    table: dict[str, Runner],
    cal: Calibration,
    budget_s: float | None = None,
    progress: Progress | None = None,
    description: str = "real runs, interleaved",
) -> None:
    """One round of real runs, appended to ``runs`` as its prompts finish (a round cut short
    keeps them). The first covers the calibration prompts in order until the next prompt would
    likely overrun ``budget_s`` (at least one runs) and sets ``runs.prompts``; a later one
    covers the same prompts."""
    first = not runs.rounds
    indices = list(range(len(cal.records))) if first else list(runs.prompts)
    tid = progress.add_task(description, total=len(indices)) if progress else None
    outcomes: dict[str, list[Outcome]] = {name: [] for name in table}
    runs.rounds.append(outcomes)
    covered: list[int] = []
    start = last = time.perf_counter()
    rounds = interleaved([cal.records[i].prompt for i in indices], table, cal.max_new_tokens)
    for j, outs in rounds:
        for name, outcome in outs.items():
            outcomes[name].append(outcome)
        covered.append(indices[j])
        now = time.perf_counter()
        one, last = now - last, now
        if progress is not None:
            progress.advance(tid)
        if first and budget_s is not None and (now - start) + one > budget_s:
            break
    rounds.close()
    if progress is not None:
        progress.remove_task(tid)
    if first:
        runs.prompts = covered
    runs.seconds.append(time.perf_counter() - start)


def margin_source(
    rec: PromptRecord, want: Sequence[int], target: object | None = None
) -> Callable[[int], float | None]:
    """``margin_at`` for ``exactness.compare`` on ``rec``'s prompt, where ``want`` is ar's
    output: the target's top-2 logit margin at a position, from the teacher-forced pass when
    ar followed the reference up to there, else from one forward pass of the loaded
    ``target`` (None without one)."""

    def margin_at(pos: int) -> float | None:
        known = rec.margin is not None and pos < len(rec.margin)
        if known and list(rec.ref[:pos]) == list(want[:pos]):
            return float(rec.margin[pos])
        if target is None:
            return None
        return exactness.top2_margin(target, [*rec.prompt, *want[:pos]], len(rec.prompt))

    return margin_at


def check_outputs(
    runs: RealRuns, chosen: Sequence[Candidate], cal: Calibration, target: object, tie: float
) -> None:
    """Compare the last round's outputs with ar's on each prompt: count each chosen setting's
    runs and identical outputs and note where the others diverged (once per prompt)."""
    last = runs.rounds[-1]
    for j, p in enumerate(runs.prompts):
        rec = cal.records[p]
        want = last[AR][j].ids
        runs.ar_same_as_reference += want == rec.ref
        for i, cand in enumerate(chosen):
            got = last[str(i + 1)][j].ids
            cand.runs += 1
            found = exactness.compare(got, want, margin_source(rec, want, target), tie)
            if found is None:
                cand.identical += 1
                continue
            text = f"prompt {p}: {found.describe()}"
            if text not in cand.divergences:
                cand.divergences.append(text)


def ar_timings(runs: RealRuns, cal: Calibration, replay: Replay | None) -> noise.ArTimings:
    """ar's seconds over the prompts the real runs covered: predicted (without a ``replay``:
    None), in calibration, per round, and as the speedups use them."""
    return noise.ArTimings(
        predicted_s=None if replay is None else sum(replay.ar_seconds()[p] for p in runs.prompts),
        calibration_s=sum(cal.records[p].ar_wall_s for p in runs.prompts),
        rounds_s=runs.totals(AR),
        measured_s=wall(runs.best(AR)),
    )


def measure(
    ladder: Ladder,
    cal: Calibration,
    replay: Replay | None,
    chosen: Sequence[Candidate],
    budget_s: float,
    progress: Progress | None = None,
    say: Callable[[str], None] = lambda line: None,
    runs: RealRuns | None = None,
) -> tuple[RealRuns, noise.ArTimings, bool]:
    """Run ``ar`` and each chosen setting for real within ``budget_s``; when ar's timings say
    the machine looks busy (``noise.ArTimings.busy``), run the same prompts again while the
    budget allows (``noise.should_remeasure``), telling ``say`` why. Fill in each candidate's
    outcomes (each prompt's fastest round) and output checks. Returns the runs, ar's timings,
    and whether the machine still looked busy with nothing left to re-measure (then the
    interval must be widened). ``runs``: where the rounds go as they finish (the caller's, so
    that what finished is kept when the runs are interrupted). Without a ``replay`` (a ladder
    tune cannot replay), ar's timings are judged against each other only."""
    tie = exactness.target_near_tie(ladder.target)
    table = runners(ladder, chosen)
    runs = RealRuns() if runs is None else runs
    began = time.perf_counter()
    run_round(runs, table, cal, budget_s, progress)
    check_outputs(runs, chosen, cal, ladder.target, tie)
    ar = ar_timings(runs, cal, replay)
    while ar.busy:
        left = budget_s - (time.perf_counter() - began)
        if not noise.should_remeasure(ar, len(runs.rounds), left, runs.seconds[0]):
            break
        say(
            f"the machine looks busy: {ar.describe()}; re-measuring "
            f"(round {len(runs.rounds) + 1}, {len(runs.prompts)} prompts)"
        )
        run_round(runs, table, cal, None, progress, f"re-measuring (round {len(runs.rounds) + 1})")
        check_outputs(runs, chosen, cal, ladder.target, tie)
        ar = ar_timings(runs, cal, replay)
    for i, cand in enumerate(chosen):
        cand.outcomes = runs.best(str(i + 1))
    return runs, ar, ar.busy
