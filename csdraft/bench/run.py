"""The bench loop: load the ladder once, warm up, then run every method on every prompt,
interleaved and in a rotated order per prompt (``csdraft.runs.interleaved``), so that drift
(thermal, other load) hits all methods alike. Results are written after every prompt, so a run
that fails or is interrupted keeps what it measured."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from csdraft import exactness
from csdraft.bench import metrics
from csdraft.bench.data import Dataset, load_dataset
from csdraft.bench.methods import EngineMethod, Settings, method, parse_methods
from csdraft.bench.results import SCHEMA, as_json, first_difference, read_results, write_results
from csdraft.console import report_console, task_progress
from csdraft.errors import CsdraftError, UsageError
from csdraft.ladder import LadderSpec, get_ladder, ladder_to_yaml
from csdraft.outputs import check_writable
from csdraft.runs import Outcome, interleaved, relative_spread

WARMUP_TOKENS = 16
"""Warm-up generations are this short (or ``max_new_tokens`` if smaller)."""

BUSY_SPREAD = 0.15
"""A run is flagged as measured on a busy machine when ar's own time per token varies by more
than this fraction (max - min over the median) between its repeated measurements: ratios
within one prompt stay paired, but a drift that large can move them."""


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    import torch
    import transformers

    import csdraft
    from csdraft.models.cpu import cpu_model, fast_half, vector_isa

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "vector_isa": vector_isa(),
        "fast_bfloat16": fast_half("bfloat16"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "csdraft": getattr(csdraft, "__version__", None),
        "torch_threads": torch.get_num_threads(),
    }


def _check_args(max_new_tokens: int, warmup: int, sd_block: int, pld_block: int, t: float) -> None:
    for flag, value, least in (
        ("--max-new-tokens", max_new_tokens, 1),
        ("--warmup", warmup, 0),
        ("--sd-block", sd_block, 1),
        ("--pld-block", pld_block, 1),
    ):
        if value < least:
            raise UsageError(f"{flag} must be >= {least}, got {value}")
    if t < 0:
        raise UsageError(f"--temperature must be >= 0 (0 is greedy), got {t}")


def _prompt_line(i: int, n: int, results: dict[str, dict[str, Any]]) -> str:
    """One log line per finished prompt: ar's speed, every other method's speedup."""
    ar = results["ar"]
    parts = [
        f"prompt {i + 1}/{n}",
        f"{ar['new_tokens']} tok",
        f"ar {metrics.tokens_per_s(ar):.2f} tok/s",
    ]
    for name, rec in results.items():
        if name != "ar" and (s := metrics.speedup(rec, ar)) is not None:
            parts.append(f"{name} {s:.2f}x" + (" ≠" if rec.get("mismatch") else ""))
    return "  ".join(parts)


def run_bench(
    dataset: str,
    *,
    data: Path | None = None,
    field: str = "prompt",
    category_field: str | None = None,
    limit: int | None = None,
    ladder: str | None = None,
    config: Path | None = None,
    max_new_tokens: int = 128,
    methods: str | Sequence[str] | None = None,
    out: Path | None = None,
    plot: Path | None = None,
    no_plot: bool = False,
    warmup: int = 1,
    sd_block: int = 4,
    pld_block: int = 10,
    temperature: float = 0.0,
    as_json: bool = False,
    quiet: bool = False,
    until_answer: int | None = None,
    sample_seed: int | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """``csdraft bench``: measure the methods on the dataset, report, write files; return the
    results dict (also what ``--out`` holds). ``until_answer`` (GSM8K): a token budget, each
    generation ending at its first finished '#### <number>' line, so task accuracy is measured
    where answers are reached. ``sample_seed``: draw the ``limit`` prompts with this seed (as
    ``csdraft tune`` draws its calibration prompts) instead of taking the first ones.
    ``resume``: ``out`` holds a partial results file of the same run (same dataset, settings,
    ladder and methods); keep its prompts and measure only the rest (each prompt's methods
    still run side by side, so every ratio stays paired)."""
    from csdraft.api import Ladder

    _check_args(max_new_tokens, warmup, sd_block, pld_block, temperature)
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    png = None if no_plot else (plot or plot_path(out))
    check_writable(out, "--out")
    check_writable(png, "--plot")
    names = parse_methods(
        methods if not isinstance(methods, list | tuple) else ",".join(methods), config
    )
    if until_answer is not None:
        if until_answer < 1:
            raise UsageError(f"--until-answer must be >= 1, got {until_answer}")
        max_new_tokens = until_answer
    ds = load_dataset(
        dataset,
        data=data,
        field=field,
        limit=limit,
        category_field=category_field,
        seed=sample_seed,
    )
    if until_answer is not None and ds.kind != "gsm8k":
        raise UsageError(f"--until-answer needs GSM8K (its '#### <number>' line); got {ds.name}")
    spec = get_ladder(ladder, config)
    settings = Settings(
        sd_block, pld_block, temperature, spec.generation.seed, until_answer is not None
    )
    table = {n: method(n, config) for n in names}
    skipped = {n: r for n, m in table.items() if (r := m.skip_reason(spec, settings))}
    chosen = [n for n in names if n not in skipped]
    run_key = {  # what makes two runs the same run (``--resume``); also kept in settings
        "dataset": ds.name,
        "source": ds.source,
        "limit": limit,
        "sample_seed": sample_seed,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "sd_block": sd_block,
        "pld_block": pld_block,
        "until_answer": until_answer is not None,
        "field": field if ds.kind == "file" else None,
    }
    configs = {
        n: {"description": table[n].description, **table[n].config(spec, settings)} for n in chosen
    }
    prior = _resumable(out, run_key, spec, configs) if resume else None

    err = Console(stderr=True, highlight=False)
    loaded = Ladder.load(spec, progress=not quiet)
    for name in [n for n in chosen if isinstance(table[n], EngineMethod)]:
        try:  # what only the loaded models can refuse (an encoder-decoder's trees)
            loaded.runnable(table[name].plan(spec, settings))
        except UsageError as e:
            skipped[name] = str(e).removeprefix(f"ladder '{spec.name}': ")
            chosen.remove(name)
            configs.pop(name)
    prompt_ids = [loaded.encode(e.prompt) for e in ds.examples]
    for ids in prompt_ids:
        loaded.check_length(ids, max_new_tokens)
    results = _skeleton(ds, loaded, settings, configs, skipped)
    results["settings"].update(
        run_key,
        category_field=category_field,
        limit_per_category=ds.name == "spec-bench",
        warmup=warmup,
        warmup_tokens=min(WARMUP_TOKENS, max_new_tokens),
    )
    results["plot"] = None if png is None else str(png)
    if prior is not None:
        results["created"] = prior["created"]
        results["resumed"] = [*prior.get("resumed", []), _now()]
        results["prompts"] = prior["prompts"]
    done = len(results["prompts"])
    runners = {n: table[n].runner(loaded, settings) for n in chosen}
    progress = task_progress(err if not quiet and err.is_terminal else Console(quiet=True))
    n = len(prompt_ids)
    with progress:
        n_warm = min(warmup, n - done)
        if n_warm:
            task = progress.add_task("warm-up", total=n_warm * len(chosen))
            warm = interleaved(
                prompt_ids[done : done + n_warm],
                runners,
                results["settings"]["warmup_tokens"],
                lambda i, name: progress.update(task, description=f"warm-up · {name}"),
            )
            for _, outcomes in warm:
                progress.advance(task, len(outcomes))
            progress.remove_task(task)
        task = progress.add_task("bench", total=(n - done) * len(chosen) + 1)
        try:
            runs = interleaved(
                prompt_ids,
                runners,
                max_new_tokens,
                lambda i, name: (
                    progress.update(task, description=f"prompt {i + 1}/{n} · {name}"),
                    progress.advance(task),
                ),
                start=done,
            )
            for i, outcomes in runs:
                entry = _prompt_entry(
                    i, ds.examples[i], prompt_ids[i], outcomes, ds, loaded, settings
                )
                results["prompts"].append(entry)
                if not quiet:
                    progress.console.print(_prompt_line(i, n, entry["results"]), soft_wrap=True)
                if out is not None:
                    _save_partial(results, out, f"after prompt {i + 1} of {n}")
            if n > 1 and "ar" in runners:  # a second measurement of ar, for the spread
                progress.update(task, description="ar again on prompt 1 (spread)")
                again = runners["ar"](prompt_ids[0], max_new_tokens)
                results["ar_repeat"] = {
                    "prompt": 0,
                    "wall_s": again.wall_s,
                    "new_tokens": len(again.ids),
                }
        except KeyboardInterrupt:
            if not results["prompts"]:
                raise
            results["interrupted"] = True
            err.print(f"csdraft: interrupted; reporting the {len(results['prompts'])} finished")
        except Exception as e:
            if not results["prompts"] or out is None:
                raise
            _save_partial(results, out, f"failed after {len(results['prompts'])} of {n} prompts")
            raise CsdraftError(
                f"bench failed after {len(results['prompts'])} of {n} prompts "
                f"({type(e).__name__}: {e}); what was measured is in {out}"
            ) from e

    _finish(results, settings.greedy)
    if out is not None:
        write_results(results, out)
    present(results, png, as_json, [out] if out is not None else [])
    return results


def present(
    results: dict[str, Any], png: Path | None, as_json: bool, files: Sequence[Path] = ()
) -> None:
    """Draw the charts (the main PNG, and the quality chart beside it when answers were
    reached), print the results JSON with ``as_json``, and print the report."""
    err = Console(stderr=True, highlight=False)
    files = list(files)
    if png is not None:
        from csdraft.bench.quality import quality_png_path, write_quality_png
        from csdraft.bench.report import write_png

        try:
            write_png(results, png)
            files.append(png)
            quality = quality_png_path(png)
            if write_quality_png(results, quality):
                files.append(quality)
        except (OSError, ValueError) as e:
            err.print(f"csdraft: could not draw {png}: {e}")
    if as_json:
        sys.stdout.write(json.dumps(results) + "\n")
        sys.stdout.flush()
    from csdraft.bench.report import print_report

    print_report(report_console(stderr=as_json), results, files=files)


def run_report(path: Path, plot: Path | None, no_plot: bool, as_json: bool) -> dict[str, Any]:
    """``csdraft bench --report FILE``: the report and charts of a results file again, its
    summaries recomputed from the per-prompt records (so a run cut short, or measured before
    a report gained a column, is reported as a finished one would be)."""
    results = read_results(path, "--report")
    png = None if no_plot else (plot or plot_path(Path(path)))
    check_writable(png, "--plot")
    present(_summarised(results), png, as_json)
    return results


def _summarised(results: dict[str, Any]) -> dict[str, Any]:
    """A results file's summaries recomputed from its per-prompt records (``_finish``); a
    partial file (a run cut short) stays marked incomplete."""
    _finish(results, not results["settings"]["temperature"])
    if results.get("stopped"):  # a partial file: say so, do not pass it off as complete
        results["complete"] = False
    return results


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _resumable(
    out: Path | None, key: dict[str, Any], spec: LadderSpec, configs: dict[str, Any]
) -> dict[str, Any] | None:
    """``--resume``: the partial results in ``out`` if they come from the same run: the same
    settings ``key``, the same ladder spec (every model, dtype and rung setting) and the same
    methods with the same configurations; a one-line UsageError naming the first difference
    otherwise. None when ``out`` does not exist yet."""
    if out is None:
        raise UsageError("--resume needs --out: the partial results file to continue")
    if not Path(out).exists():
        return None
    prior = read_results(out, "--resume")
    if prior.get("complete", False) and not prior.get("interrupted"):
        raise UsageError(f"--resume: {out} is complete; see it with --report {out}")
    had = {k: prior["settings"].get(k) for k in key}
    changed = [f"{k} {had[k]!r} -> {key[k]!r}" for k in key if had[k] != key[k]]
    if prior["ladder"]["name"] != spec.name:
        changed.append(f"ladder {prior['ladder']['name']!r} -> {spec.name!r}")
    if prior["methods"] != list(configs):
        changed.append(f"methods {','.join(prior['methods'])} -> {','.join(configs)}")
    if changed:
        raise UsageError(f"--resume: {out} is another run ({'; '.join(changed)})")
    if "spec" not in prior["ladder"] or "method_configs" not in prior:
        raise UsageError(
            f"--resume: {out} predates full-spec checks, so it cannot be told from another run; "
            "start a new run (another --out)"
        )
    for name, had_now in (
        ("ladder", (prior["ladder"]["spec"], ladder_to_yaml(spec))),
        ("method_configs", (prior["method_configs"], configs)),
    ):
        if found := first_difference(had_now[0], as_json(had_now[1]), name):
            raise UsageError(f"--resume: {out} is another run ({found})")
    return prior


def _save_partial(results: dict[str, Any], out: Path, where: str) -> None:
    """Write what was measured so far, marked incomplete, with where the run stopped."""
    write_results({**results, "complete": False, "stopped": where}, out)


def _skeleton(
    ds: Dataset, loaded: Any, settings: Settings, configs: dict[str, Any], skipped: dict[str, str]
) -> dict[str, Any]:
    """The results dict before any prompt ran: machine, settings, ladder (its whole spec
    too), methods (``configs``: each chosen method's configuration), costs."""
    spec = loaded.spec
    target = loaded.target
    return {
        "schema": SCHEMA,
        "created": _now(),
        "machine": {**machine_info(), "device": target.device},
        "settings": {
            "dataset": ds.name,
            "kind": ds.kind,
            "source": ds.source,
            "template": ds.template,
            "sd_block": settings.sd_block,
            "pld_block": settings.pld_block,
            "temperature": settings.temperature,
            "seed": settings.seed,
            "until_answer": settings.until_answer,
            "order": "interleaved: every method on each prompt, order rotated per prompt",
            "speedup": "per prompt: tok/s over ar tok/s (the wall-time ratio for equal output)",
            "decode_speedup": "per prompt: new tokens per second after the prompt phase, over "
            "ar's (engine: after the first commit; transformers: after the first new token)",
        },
        "ladder": {
            "name": spec.name,
            "rungs": spec.rung_names,
            "k_matrix": [list(r) for r in spec.k_matrix],
            "lenience": [d.lenience for d in spec.drafters],
            "dtype": (
                f"{target.dtype} (batch-invariant)"
                if getattr(target, "batch_invariant", False)
                else target.compute_dtype
            ),
            "models": {m.name: m.ref for m in (spec.target, *spec.drafters)},
            "backends": {m.name: m.backend for m in (spec.target, *spec.drafters)},
            "spec": ladder_to_yaml(spec),
        },
        "methods": list(configs),
        "method_configs": configs,
        "skipped": skipped,
        "costs": {
            "params": {
                name: loaded.models[name].parameter_count() if name in loaded.models else 0
                for name in spec.rung_names
            },
            "measured_s": {},
        },
        "prompts": [],
        "mismatches": [],
        "interrupted": False,
    }


def plot_path(out: Path | None) -> Path:
    """The PNG's default place: next to the results file, else ``bench.png``."""
    if out is None:
        return Path("bench.png")
    out = Path(out)
    return (
        out.with_name(out.stem + "-plot.png") if out.suffix == ".png" else out.with_suffix(".png")
    )


def _prompt_entry(
    i: int,
    example: Any,
    ids: list[int],
    outcomes: dict[str, Outcome],
    ds: Dataset,
    loaded: Any,
    settings: Settings,
) -> dict[str, Any]:
    """The per-prompt part of the results: each method's record, answer and output check
    (with the target's top-2 logit margin at a divergence)."""
    ar_ids = outcomes["ar"].ids
    target = loaded.target
    tie = exactness.target_near_tie(target)
    tok = loaded.tokenizer
    margins: dict[int, float] = {}

    def margin_at(pos: int) -> float:
        if pos not in margins:
            margins[pos] = exactness.top2_margin(target, ids + ar_ids[:pos], len(ids))
        return margins[pos]

    records = {}
    for name, outcome in outcomes.items():
        rec = outcome.record()
        text = tok.decode(outcome.ids, skip_special_tokens=True)
        rec["answer"], rec["correct"] = ds.score(text, example.reference)
        rec["mismatch"] = None
        if settings.greedy and name != "ar":
            found = exactness.compare(outcome.ids, ar_ids, margin_at, tie)
            if found is not None:
                rec["mismatch"] = {**found.as_dict(), "ids": outcome.ids}
        records[name] = rec
    return {
        "index": i,
        "id": example.id,
        "category": example.category,
        "prompt_tokens": len(ids),
        "reference": example.reference,
        "ar_text": tok.decode(ar_ids, skip_special_tokens=True),
        "ar_ids": ar_ids,
        "results": {n: records[n] for n in outcomes},
    }


def _finish(results: dict[str, Any], greedy: bool) -> None:
    """Costs measured from the traces, per-method summaries, mismatches and the speed bar."""
    prompts = results["prompts"]
    results["costs"]["measured_s"] = metrics.measured_costs(
        rec for p in prompts for rec in p["results"].values()
    )
    for p in prompts:
        ar = p["results"]["ar"]
        for rec in p["results"].values():
            rec["speedup"] = metrics.speedup(rec, ar)
    results["summary"] = metrics.summarize(results)
    results["by_category"] = metrics.by_category(prompts, results["methods"])
    results["mismatches"] = [
        {
            "prompt": p["index"],
            "method": name,
            **{k: v for k, v in rec["mismatch"].items() if k != "ids"},
        }
        for p in prompts
        for name, rec in p["results"].items()
        if rec.get("mismatch") and results["summary"][name]["lossless"]
    ]
    results["speed_bar"] = metrics.speed_bar(results["summary"], prompts, greedy)
    results["ar_spread"] = ar_spread(results)
    results["complete"] = not results.get("interrupted")


def ar_spread(results: dict[str, Any]) -> dict[str, Any] | None:
    """How steady the machine was: ar's seconds per token on the prompt it ran twice (at the
    start and again at the end), as a relative spread; ``busy`` when that is over
    ``BUSY_SPREAD``."""
    again = results.get("ar_repeat")
    prompts = results["prompts"]
    if not again or not prompts or "ar" not in prompts[0]["results"]:
        return None
    first = prompts[0]["results"]["ar"]
    per_token = [
        first["wall_s"] / max(1, first["new_tokens"]),
        again["wall_s"] / max(1, again["new_tokens"]),
    ]
    spread = relative_spread(per_token)
    return {
        "per_token_s": per_token,
        "spread": spread,
        "busy": spread is not None and spread > BUSY_SPREAD,
        "threshold": BUSY_SPREAD,
    }


def run_compare(a: Path, b: Path, as_json: bool = False) -> None:
    """``csdraft bench --compare A B``: two results files side by side."""
    from csdraft.bench.report import compare_report

    ra, rb = _summarised(read_results(a)), _summarised(read_results(b))
    if as_json:
        from csdraft.bench.report import compare_rows

        sys.stdout.write(json.dumps(compare_rows(ra, rb)) + "\n")
        return
    compare_report(report_console(), ra, rb, Path(a).name, Path(b).name)
