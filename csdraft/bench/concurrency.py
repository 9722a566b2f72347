"""``csdraft bench DATASET --concurrency N``: the ladder's csd on the same requests one at a
time and N at a time (their passes batched: ``csdraft.engine.batch``), through one loaded
ladder: throughput (all new tokens over the wall time of all requests), p50/p95 latency per
request (from its start to its end), passes shared per step, and a check that every output at
N is its output alone."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from csdraft.bench.data import load_dataset
from csdraft.bench.results import write_results
from csdraft.bench.run import machine_info
from csdraft.console import progress_console, report_console
from csdraft.errors import UsageError
from csdraft.ladder import get_ladder
from csdraft.outputs import check_writable
from csdraft.trace import tokens_per_second


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    lo = int(at)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


def _side(results: list[Any], wall_s: float, batcher: Any = None) -> dict[str, Any]:
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
    if batcher is not None:
        c = batcher.counts
        side |= {"steps": c.steps, "passes": c.passes, "jobs": c.jobs, "widest": c.widest}
        side["shared_by_rung"] = {
            str(k): {"passes": p, "jobs": j} for k, (p, j) in c.shared.items()
        }
    return side


def run_concurrency(
    dataset: str,
    concurrency: int,
    *,
    data: Path | None = None,
    field: str = "prompt",
    limit: int | None = None,
    ladder: str | None = None,
    config: Path | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    warmup: int = 1,
    out: Path | None = None,
    as_json: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Measure (see the module), print the table, write ``out``; return the results."""
    from csdraft.api import Ladder
    from csdraft.engine.batch import BatchCounts

    if concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
    check_writable(out, "--out")
    ds = load_dataset(dataset, data=data, field=field, limit=limit)
    spec = get_ladder(ladder, config)
    loaded = Ladder.load(spec, progress=not quiet)
    prompts = [loaded.encode(e.prompt) for e in ds.examples]
    for ids in prompts:
        loaded.check_length(ids, max_new_tokens)
    options = {"temperature": temperature}
    say = progress_console(not quiet).print
    say(f"warm-up ({warmup}); {len(prompts)} requests one at a time, then {concurrency} at once")
    for ids in prompts[:warmup]:
        loaded.generate(ids, min(16, max_new_tokens), **options)
    start = time.perf_counter()
    alone = [loaded.generate(ids, max_new_tokens, **options) for ids in prompts]
    alone_s = time.perf_counter() - start
    say(f"one at a time: {alone_s:.1f} s")
    loaded.batcher.counts = BatchCounts()
    start = time.perf_counter()
    together = loaded.generate_many(prompts, max_new_tokens, concurrency=concurrency, **options)
    together_s = time.perf_counter() - start
    differ = [
        i
        for i, (a, b) in enumerate(zip(alone, together, strict=True))
        if a.token_ids != b.token_ids
    ]
    one, many = _side(alone, alone_s), _side(together, together_s, loaded.batcher)
    results = {
        "dataset": ds.name,
        "ladder": spec.name,
        "machine": machine_info(),
        "rungs": list(spec.rung_names),
        "requests": len(prompts),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "concurrency": concurrency,
        "one_at_a_time": one,
        "together": many,
        "throughput_ratio": many["tokens_per_s"] / one["tokens_per_s"]
        if one["tokens_per_s"]
        else None,
        "outputs_differing": differ,
    }
    if out is not None:
        write_results(results, out)
    console = report_console(stderr=as_json)
    table = Table(title=f"{ds.name}: {len(prompts)} requests, csd on ladder {spec.name}")
    for col in ("", "tok/s", "wall s", "p50 latency s", "p95 latency s"):
        table.add_column(col, justify="right" if col else "left")
    for name, side in (("one at a time", one), (f"{concurrency} at once", many)):
        table.add_row(
            name,
            f"{side['tokens_per_s']:.2f}",
            f"{side['wall_s']:.1f}",
            f"{side['latency_p50_s']:.2f}",
            f"{side['latency_p95_s']:.2f}",
        )
    console.print(table)
    for rung, tally in sorted(many["shared_by_rung"].items()):
        console.print(
            f"rung {rung} ({results['rungs'][int(rung)]}): {tally['jobs']} passes of requests "
            f"in {tally['passes']} shared passes"
        )
    console.print(
        f"throughput {results['throughput_ratio']:.2f}x; passes {many['passes']} for "
        f"{many['jobs']} jobs in {many['steps']} steps (widest {many['widest']}); outputs "
        + (f"DIFFERING at {differ}" if differ else "all identical to their outputs alone")
    )
    if as_json:
        sys.stdout.write(json.dumps(results) + "\n")
    return results
