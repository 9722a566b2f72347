"""``csdraft bench DATASET --concurrency N[,N...]``: the ladder's csd on the same requests one at a
time, then N at a time for each N given (their passes batched: ``csdraft.engine.batch``), then one
at a time again (the machine's speed drifts: each ratio is over the mean of the two baselines, and
the drift is reported), through one loaded ladder: throughput (all new tokens over the wall time of
all requests), p50/p95 latency per request (from its start to its end), jobs per shared pass by
rung, a check that every output at each N is its output alone, and the crossover: the N with the
most throughput and the next N tried above it, where adding requests stops paying. Each side
starts with the prefix stores holding only the warm-up's prompts (``prefixes``), so no side copies
whole prompts an earlier side computed; the prompt rows each side copied are reported. With
``rounds`` R > 1 the levels and one at a time alternate R times (one at a time first and last):
each round's ratio is over the baselines before and after it, the table's is their median, and
every round's is reported, so a slow spell of the machine shows as a spread, not as the result."""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.table import Table

from csdraft.bench.data import load_dataset
from csdraft.bench.results import write_results
from csdraft.bench.run import machine_info, plot_path
from csdraft.console import progress_console, report_console
from csdraft.errors import UsageError
from csdraft.ladder import get_ladder
from csdraft.outputs import check_writable
from csdraft.trace import tokens_per_second

if TYPE_CHECKING:
    from csdraft.engine.batch import BatchCounts


class LevelRun(NamedTuple):
    """One run of a level: its results, wall time, prompt rows copied and what the scheduler
    did."""

    results: list[Any]
    wall_s: float
    rows_copied: int
    counts: BatchCounts


def parse_concurrency(value: str | int | Sequence[int]) -> list[int]:
    """``--concurrency``'s value: one N or a comma list (``2,4,8``) of whole numbers >= 1; the
    distinct levels, ascending. Anything else is a one-line UsageError."""
    if isinstance(value, str):
        items = value.split(",")
    else:
        items = [value] if isinstance(value, int) else list(value)
    texts = [str(item).strip() for item in items]
    if not all(re.fullmatch(r"[0-9]+", t) and int(t) >= 1 for t in texts):
        raise UsageError(
            f"--concurrency takes N or a comma list of N >= 1 (e.g. 2,4,8), got {value!r}"
        )
    return sorted({int(t) for t in texts})


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    lo = int(at)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


def _side(results: list[Any], wall_s: float, counts: BatchCounts | None = None) -> dict[str, Any]:
    latencies = [r.stats.wall_s for r in results]
    tokens = sum(len(r.token_ids) for r in results)
    side = {
        "wall_s": wall_s,
        "new_tokens": tokens,
        "tokens_per_s": tokens_per_second(tokens, wall_s) or 0.0,
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p95_s": percentile(latencies, 0.95),
        "latency_mean_s": statistics.fmean(latencies),
    }
    if (c := counts) is not None:
        side |= {"steps": c.steps, "passes": c.passes, "jobs": c.jobs, "widest": c.widest}
        side["shared_by_rung"] = {
            str(k): {"passes": p, "jobs": j, "jobs_per_pass": j / p}
            for k, (p, j) in sorted(c.shared.items())
        }
    return side


def _differing(reference: list[Any], results: list[Any]) -> list[int]:
    """The requests whose output in ``results`` is not their ``reference`` output."""
    return [
        i
        for i, (a, b) in enumerate(zip(reference, results, strict=True))
        if a.token_ids != b.token_ids
    ]


def drift_line(one: dict[str, Any]) -> str:
    """How much the machine drifted while the levels ran: the two one-at-a-time runs."""
    if one["wall_s_after"] is None:
        return "one at a time ran once (its second run was interrupted): drift not measured"
    if len(walls := one.get("wall_s_rounds", [])) > 2:
        each = ", ".join(f"{w:.1f}" for w in walls)
        return (
            f"one at a time took {each} s, before, between and after the rounds "
            f"({one['drift']:+.0%} first to last): each round's ratio is over the two around it"
        )
    return (
        f"one at a time took {one['wall_s_before']:.1f} s before the levels and "
        f"{one['wall_s_after']:.1f} s after ({one['drift']:+.0%}): ratios are over their mean"
    )


def rounds_line(results: dict[str, Any]) -> str:
    """Each level's ratio in every round (``--rounds``), the table's being their median."""
    each = "; ".join(
        f"{lv['concurrency']} at once "
        + ", ".join(_x(r) for r in lv["round_ratios"])
        + f" (median {_x(lv['throughput_ratio'])})"
        for lv in results["levels"]
    )
    return f"ratio by round, each over the baselines before and after it: {each}"


def copied_line(results: dict[str, Any]) -> str:
    """How much of the prompts the target copied from stored prompts (``prefixes``) per side."""
    sides = [("one at a time", results["one_at_a_time"])] + [
        (f"{lv['concurrency']} at once", lv) for lv in results["levels"]
    ]
    each = ", ".join(f"{name} {side['prompt_rows_copied']:,}" for name, side in sides)
    return (
        f"prompt rows copied from earlier prompts' cache rows (of {results['prompt_tokens']:,} "
        f"prompt tokens; each side starts from the warm-up's): {each}"
    )


def crossover(one_tps: float, levels: list[dict[str, Any]]) -> dict[str, Any]:
    """Where batching pays, from the throughput one at a time (N = 1) and at each level
    (ascending N): ``best_concurrency``, the N with the highest throughput ratio over one at a
    time (the table's: with ``rounds``, the median of its rounds; 1: one at a time is fastest),
    that ratio, and ``stops_paying_at``, the next N tried above it (None: the best is the
    largest N tried)."""
    points = [(1, one_tps, 1.0)] + [
        (lv["concurrency"], lv["tokens_per_s"], lv["throughput_ratio"] or 0.0) for lv in levels
    ]
    best_n, best_tps, best_ratio = max(points, key=lambda p: p[2])  # of equals, the fewest
    above = [n for n, _, _ in points if n > best_n]
    return {
        "best_concurrency": best_n,
        "best_tokens_per_s": best_tps,
        "best_throughput_ratio": best_ratio if one_tps else None,
        "stops_paying_at": above[0] if above else None,
    }


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def crossover_line(results: dict[str, Any]) -> str:
    """The crossover in words (see ``crossover``)."""
    best, stop = results["best_concurrency"], results["stops_paying_at"]
    ratio = _x(results["best_throughput_ratio"])
    by_n = {lv["concurrency"]: lv for lv in results["levels"]}
    if stop is None:
        return f"most throughput at the largest N tried, {best} at once ({ratio}): still paying"
    if best == 1:
        best_tps = results["best_tokens_per_s"]
        of_best = _x(by_n[stop]["tokens_per_s"] / best_tps if best_tps else None)
        return (
            f"batching does not pay here: 1 at a time is fastest ({stop} at once gives {of_best} "
            "its throughput)"
        )
    drop = _x(by_n[stop]["throughput_ratio"])
    return (
        f"most throughput at {best} at once ({ratio}); adding requests stops paying at "
        f"{stop} ({drop})"
    )


def run_concurrency(
    dataset: str,
    concurrency: str | int | Sequence[int],
    *,
    data: Path | None = None,
    field: str = "prompt",
    limit: int | None = None,
    ladder: str | None = None,
    config: Path | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    warmup: int = 1,
    rounds: int = 1,
    out: Path | None = None,
    plot: Path | None = None,
    no_plot: bool = False,
    as_json: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Measure (see the module) at every N of ``concurrency`` (``parse_concurrency``), print
    the table, write ``out`` and the chart (``plot``: default next to ``out``); return the
    results."""
    from csdraft.api import Ladder
    from csdraft.engine.batch import BatchCounts

    ns = parse_concurrency(concurrency)
    if type(rounds) is not int or rounds < 1:
        raise UsageError(f"--rounds takes a whole number >= 1, got {rounds!r}")
    png = None if no_plot else (plot or plot_path(out))
    check_writable(out, "--out")
    check_writable(png, "--plot")
    ds = load_dataset(dataset, data=data, field=field, limit=limit)
    spec = get_ladder(ladder, config)
    loaded = Ladder.load(spec, progress=not quiet)
    prompts = [loaded.encode(e.prompt) for e in ds.examples]
    for ids in prompts:
        loaded.check_length(ids, max_new_tokens)
    options = {"temperature": temperature}
    say = progress_console(not quiet).print
    listed = ", ".join(map(str, ns))
    say(
        f"warm-up ({warmup}); {len(prompts)} requests one at a time, then {listed} at once"
        + (f", then one at a time again; {rounds} rounds" if rounds > 1 else "")
    )

    def warm() -> None:
        """Start a side as a server that has seen only the warm-up: the prefix stores hold
        the warm-up's prompts, not the rest from an earlier side."""
        loaded.forget_prompts()
        for ids in prompts[:warmup]:
            loaded.generate(ids, min(16, max_new_tokens), **options)

    store = loaded.prefix_stores.get(spec.target.name)

    def copied() -> int:
        """Prompt rows the target has copied from stored prompts so far."""
        return store.counts.rows if store is not None else 0

    def one_at_a_time() -> tuple[list[Any], float, int]:
        warm()
        start, rows = time.perf_counter(), copied()
        results = [loaded.generate(ids, max_new_tokens, **options) for ids in prompts]
        return results, time.perf_counter() - start, copied() - rows

    def level(n: int) -> LevelRun:
        warm()
        counts = loaded.batcher.counts = BatchCounts()
        start, rows = time.perf_counter(), copied()
        together = loaded.generate_many(prompts, max_new_tokens, concurrency=n, **options)
        wall = time.perf_counter() - start
        loaded.batcher.counts = BatchCounts()  # what runs next is not this level's
        say(f"{n} at once: {wall:.1f} s")
        return LevelRun(together, wall, copied() - rows, counts)

    alone, before, alone_copied = one_at_a_time()
    say(f"one at a time: {before:.1f} s")
    runs: dict[int, list[LevelRun]] = {n: [] for n in ns}
    walls, differing, interrupted = [before], set(), None
    for _round in range(rounds):
        try:  # the machine drifts: each round's levels sit between two baselines
            done = {n: level(n) for n in ns}
            for n in ns:
                runs[n].append(done[n])
            again, after, _ = one_at_a_time()
            differing.update(_differing(alone, again))
            walls.append(after)
            say(f"one at a time, again: {after:.1f} s")
        except KeyboardInterrupt as e:  # the rounds whose levels all ran are kept (the last one
            if not runs[ns[0]]:  # over the baseline before it alone, if its second was cut)
                raise
            interrupted = e
            break
    one = _side(alone, statistics.fmean(walls)) | {
        "wall_s_before": before,
        "wall_s_after": walls[-1] if len(walls) > 1 else None,
        "drift": walls[-1] / before - 1 if before and len(walls) > 1 else None,
        "outputs_differing": sorted(differing),
        "prompt_rows_copied": alone_copied,
    }
    if rounds > 1:
        one["wall_s_rounds"] = walls
    tokens = one["new_tokens"]
    levels = []
    for n in ns:
        first = runs[n][0]
        level_walls = [run.wall_s for run in runs[n]]
        counts = sum((run.counts for run in runs[n]), BatchCounts())
        every = [r for run in runs[n] for r in run.results]
        side = {"concurrency": n} | _side(every, sum(level_walls), counts)
        side["wall_s"] = statistics.fmean(level_walls)
        side["new_tokens"] = level_tokens = sum(len(r.token_ids) for r in first.results)
        side["prompt_rows_copied"] = first.rows_copied
        side["outputs_differing"] = sorted(
            {i for run in runs[n] for i in _differing(alone, run.results)}
        )
        ratios = [  # each round over the mean of the baselines around it
            (level_tokens / wall) / (tokens / statistics.fmean(walls[r : r + 2]))
            for r, wall in enumerate(level_walls)
            if tokens and wall
        ]
        side["throughput_ratio"] = statistics.median(ratios) if ratios else None
        if rounds > 1:
            side |= {"round_ratios": ratios, "wall_s_rounds": level_walls}
        levels.append(side)
    results = {
        "dataset": ds.name,
        "ladder": spec.name,
        "machine": machine_info(),
        "rungs": list(spec.rung_names),
        "requests": len(prompts),
        "prompt_tokens": sum(map(len, prompts)),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "concurrency": ns,
        "one_at_a_time": one,
        "levels": levels,
        **crossover(one["tokens_per_s"], levels),
        "outputs_differing": sorted(
            {i for side in (one, *levels) for i in side["outputs_differing"]}
        ),
        "plot": None if png is None else str(png),
    }
    if out is not None:
        write_results(results, out)
    if png is not None:
        write_png(results, png)
    console = report_console(stderr=as_json)
    console.print(table(results, ds.name))
    console.print(crossover_line(results))
    if rounds > 1:
        console.print(rounds_line(results))
    console.print(drift_line(one))
    console.print(copied_line(results))
    differ = results["outputs_differing"]
    console.print(
        "outputs "
        + (f"DIFFERING at {differ}" if differ else "all identical to their outputs alone")
    )
    if as_json:
        sys.stdout.write(json.dumps(results) + "\n")
    if interrupted is not None:
        raise interrupted
    return results


def table(results: dict[str, Any], name: str) -> Table:
    """One row one at a time, one per N: throughput, its ratio, wall time, p50/p95 latency,
    each rung's jobs per shared pass, and whether the outputs equal their outputs alone."""
    rungs = sorted({int(k) for lv in results["levels"] for k in lv["shared_by_rung"]})
    table = Table(
        title=f"{name}: {results['requests']} requests, csd on ladder {results['ladder']}"
    )
    cols = ["", "tok/s", "ratio", "wall s", "p50 latency s", "p95 latency s"]
    cols += [f"{results['rungs'][k]} jobs/pass" for k in rungs] + ["outputs"]
    for col in cols:
        table.add_column(col, justify="right" if col else "left")
    one = results["one_at_a_time"]
    reference = {  # the reference row, unless its second run differed (a fault, shown)
        "throughput_ratio": 1.0,
        "shared_by_rung": {},
        "outputs_differing": one.get("outputs_differing") or None,
    }
    rows = [("one at a time", one | reference)]
    rows += [(f"{lv['concurrency']} at once", lv) for lv in results["levels"]]
    for label, side in rows:
        shared = side["shared_by_rung"]
        differ = side.get("outputs_differing")
        table.add_row(
            label,
            f"{side['tokens_per_s']:.2f}",
            _x(side["throughput_ratio"]),
            f"{side['wall_s']:.1f}",
            f"{side['latency_p50_s']:.2f}",
            f"{side['latency_p95_s']:.2f}",
            *(
                f"{shared[str(k)]['jobs_per_pass']:.2f}" if str(k) in shared else "-"
                for k in rungs
            ),
            "reference" if differ is None else (f"{len(differ)} DIFFER" if differ else "same"),
        )
    return table


def write_png(results: dict[str, Any], path: Path) -> None:
    """Two panels by N: throughput over one at a time, and p50/p95 latency per request. One at
    a time is N = 1 unless 1 was listed (then it is the dashed line, and its latencies a grey
    mark)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    one, levels = results["one_at_a_time"], results["levels"]
    listed_one = any(lv["concurrency"] == 1 for lv in levels)
    sides = levels if listed_one else [one | {"throughput_ratio": 1.0}, *levels]
    ns = [1] * (not listed_one) + [lv["concurrency"] for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ratios = [s["throughput_ratio"] or 0.0 for s in sides]
    left.plot(ns, ratios, marker="o", color="#c05621")
    left.axhline(1.0, color="#444", linestyle="--", linewidth=0.8)
    left.set_ylabel("throughput over one at a time")
    left.set_title("throughput by concurrency", fontsize=10)
    for q, style in (("p50", ":"), ("p95", "-")):
        values = [s[f"latency_{q}_s"] for s in sides]
        right.plot(ns, values, marker="o", linestyle=style, color="#2b6cb0", label=q)
    if listed_one:
        for q, mark in (("p50", "_"), ("p95", "_")):
            right.plot([1], [one[f"latency_{q}_s"]], marker=mark, markersize=14, color="#888")
    right.set_ylabel("latency per request (s)")
    right.set_title("latency by concurrency", fontsize=10)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("requests at once" if listed_one else "requests at once (1: one at a time)")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{results['dataset']}: {results['requests']} requests, ladder {results['ladder']}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
