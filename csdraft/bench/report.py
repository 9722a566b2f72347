"""Bench reports: the rich tables, the terminal bar chart, the speed bar, the PNG, and the
side-by-side comparison of two results files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from csdraft.bench.metrics import tree_crossover
from csdraft.bench.quality import (
    answers_against,
    answers_against_table,
    quality_chart,
    quality_table,
)
from csdraft.bench.results import title
from csdraft.console import fx, num, pct, simple_table

_EIGHTHS = " ▏▎▍▌▋▊▉"
_HF = "hf-"
MIN_REACHED = 5
"""The PNG leaves out draft positions the target reached fewer times than this (too noisy)."""


def _speed_style(value: float | None) -> str:
    if value is None:
        return "dim"
    return "green" if value >= 1.005 else ("red" if value < 0.995 else "")


def bar(value: float, scale: float, width: int) -> str:
    """A horizontal bar of ``value / scale * width`` cells, in eighths of a cell."""
    eighths = max(0, round(8 * width * value / scale)) if scale > 0 else 0
    full, part = divmod(min(eighths, 8 * width), 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def results_table(results: Mapping[str, Any]) -> Table:
    """Speed per method: speedup over ar (median, min-max, mean), tok/s, tokens per target
    forward, SWI with parameter-count and measured costs, accuracy, output mismatches."""
    summary = results["summary"]
    table = simple_table(title(results))
    table.add_column("method", no_wrap=True)
    for header in ("speedup\nmedian", "\nmin-max", "\nmean", "\ntok/s", "tok/\nfwd"):
        table.add_column(header, justify="right", no_wrap=True)
    for header in ("SWI\nparam", "SWI\ntime", "\nacc", "out\n≠ar"):
        table.add_column(header, justify="right", no_wrap=True)
    greedy = not results["settings"]["temperature"]
    for name in results["methods"]:
        s = summary.get(name)
        if s is None:
            continue
        sp = s["speedup"]
        mism = s["mismatches"]
        lossy = not s.get("lossless", True)
        style = "bold" if name == "csd" else ("dim" if name.startswith(_HF) else "")
        table.add_row(
            Text(name + (" LOSSY" if lossy else ""), style="yellow" if lossy else style),
            Text(fx(sp["median"]), style=_speed_style(sp["median"])),
            "-" if sp["min"] is None else f"{sp['min']:.2f}-{sp['max']:.2f}",
            fx(sp["mean"]),
            num(s["tokens_per_s"], 2 if s["tokens_per_s"] < 100 else 1),
            num(s["tokens_per_target_forward"]),
            num(s["swi_params"]),
            num(s["swi_measured"]),
            pct(s["accuracy"]),
            Text(str(mism), style="yellow" if lossy else ("red bold" if mism else "green"))
            if greedy and name != "ar"
            else Text("-", style="dim"),
        )
    table.caption = (
        "speedup: tok/s over ar's on each prompt. tok/fwd: tokens per target forward. SWI: "
        "ar's cost over the forwards spent, a forward costed by parameter count (Max-Gram 0) or "
        "by its mean time here. out ≠ar: prompts whose output differs from ar's."
    )
    if any(not s.get("lossless", True) for s in summary.values()):
        table.caption += (
            " LOSSY: a deferral rule on purpose (or, for llama.cpp beside a transformers "
            "target, another numeric model of the target), so its ≠ar count is its quality "
            "cost, not an error."
        )
    table.caption_justify = "left"
    return table


def acceptance_table(results: Mapping[str, Any], width: int = 80) -> Table | None:
    """Acceptance by reviewing rung and the target's acceptance by draft position (as many
    positions as fit in ``width`` columns, at most 8)."""
    summary = results["summary"]
    rows = [
        (n, summary[n])
        for n in results["methods"]
        if n in summary
        and (summary[n]["acceptance"] or summary[n]["target_acceptance_by_position"])
    ]
    if not rows:
        return None
    kept = {n: "  ".join(f"{r} {pct(a)}" for r, a in s["acceptance"].items()) for n, s in rows}
    used = max(len(n) for n, _ in rows) + max(len(v) for v in kept.values()) + 4
    fit = max(1, (width - used) // 7)  # "pos 8" and its padding
    n_pos = min(8, fit, max(len(s["target_acceptance_by_position"]) for _, s in rows))
    table = simple_table("acceptance: by reviewing rung, and the target's by draft position")
    table.add_column("method", no_wrap=True)
    table.add_column("kept by reviewer", no_wrap=True)
    for i in range(n_pos):
        table.add_column(f"pos {i + 1}", justify="right", no_wrap=True)
    for name, s in rows:
        by_pos = s["target_acceptance_by_position"][:n_pos]
        table.add_row(name, kept[name], *map(pct, by_pos), *[""] * (n_pos - len(by_pos)))
    return table


def prompt_phase_table(results: Mapping[str, Any]) -> Table | None:
    """Per method: the share of time in the prompt phase, the decoding-only speedup over ar,
    and each neural rung's own pass over the prompt (mean per prompt). None for results
    written before the time split."""
    summary = results["summary"]
    rows = [
        (n, summary[n])
        for n in results["methods"]
        if n in summary and summary[n].get("prefill_share") is not None
    ]
    if not rows:
        return None
    table = simple_table("prompt phase and decoding")
    table.add_column("method", no_wrap=True)
    table.add_column("prompt\nshare", justify="right", no_wrap=True)
    table.add_column("decode\nspeedup", justify="right", no_wrap=True)
    table.add_column("prompt pass by rung\n(mean per prompt)")
    for name, s in rows:
        n = max(1, s["prompts"])
        passes = "  ".join(f"{r} {1000 * t / n:.0f} ms" for r, t in s["prompt_pass_s"].items())
        dec = s["decode_speedup"]["median"]
        table.add_row(name, pct(s["prefill_share"]), Text(fx(dec), style=_speed_style(dec)), passes)
    table.caption = (
        "prompt share: wall time to the first commit (engine) or first new token (hf-*), every "
        "rung's pass over the prompt included. decode speedup: tok/s after it, over ar's "
        "(median per prompt)."
    )
    table.caption_justify = "left"
    return table


def tree_table(results: Mapping[str, Any]) -> Table | None:
    """Token trees against linear csd: what a tree pass costs, what it gains, and the cost
    ratio under which the trees would win (``metrics.tree_crossover``). None without trees."""
    rows = tree_crossover(results)
    if not rows:
        return None
    base = rows[0]
    table = simple_table("token trees against csd's linear drafts (decoding passes)")
    for head in (
        "method",
        "nodes\n/pass",
        "tok/fwd\ngain",
        "target\nms/pass",
        "cost\nratio",
        "drafters\nms/pass",
        "trees pay\nbelow",
    ):
        table.add_column(head, justify="left" if head == "method" else "right", no_wrap=True)
    table.add_row(
        "csd",
        "",
        "1.00x",
        f"{1000 * base['base_target_s']:.1f}",
        "1.00",
        f"{1000 * base['base_drafters_s']:.1f}",
        "",
    )
    for r in rows:
        pays = r["cost"] < r["break_even"]
        table.add_row(
            r["method"],
            f"{r['nodes']:.1f}",
            fx(r["gain"]),
            f"{1000 * r['target_s']:.1f}",
            Text(f"{r['cost']:.2f}", style="green" if pays else "red"),
            f"{1000 * r['drafters_s']:.1f}",
            f"{r['break_even']:.2f}",
        )
    table.caption = (
        "nodes: tree nodes the target scores per pass. cost ratio: the target's pass over the "
        "tree against csd's over its chain. trees pay below: the cost ratio under which they "
        "would be faster than csd, given their gain in tokens per forward and the drafters' "
        "time per target pass (an extended tree adds a drafter pass). On hardware where a pass "
        "costs about the same for 4 or 16 tokens (a GPU), the ratio is near 1."
    )
    table.caption_justify = "left"
    return table


def category_table(results: Mapping[str, Any]) -> Table | None:
    """By category, then over all: each method's median speedup over ar (whole request and
    decoding only), its prompt-phase share, and csd over hf-assisted (decoding only) on the
    csd row. None when the prompts carry no category."""
    cats = results.get("by_category")
    if not cats:
        return None
    table = simple_table("by category: median per prompt over ar")
    table.add_column("category", no_wrap=True)
    table.add_column("method", no_wrap=True)
    for header in ("\nn", "speedup\nwhole", "\ndecode", "prompt\nshare", "csd/hf-\nassisted"):
        table.add_column(header, justify="right", no_wrap=True)
    for cat, entry in cats.items():
        first = True
        for name, row in entry["methods"].items():
            rel = entry["csd_over_hf_assisted"] if name == "csd" else None
            table.add_row(
                Text(cat if first else "", style="bold"),
                Text(name, style="bold" if name == "csd" else ""),
                str(row["prompts"]),
                Text(fx(row["speedup"]), style=_speed_style(row["speedup"])),
                Text(fx(row["decode_speedup"]), style=_speed_style(row["decode_speedup"])),
                pct(row["prefill_share"]),
                fx(rel) if name == "csd" else "",
                end_section=name == list(entry["methods"])[-1],
            )
            first = False
    table.caption = (
        "whole: tok/s over ar's for the whole request; decode: after the prompt phase. "
        "csd/hf-assisted: decoding only, when both ran."
    )
    table.caption_justify = "left"
    return table


def speed_chart(results: Mapping[str, Any], width: int = 36) -> Text:
    """Unicode bars of the median speedup over ar by method, with the min-max range."""
    summary = results["summary"]
    items = [
        (n, summary[n]["speedup"])
        for n in results["methods"]
        if n in summary and summary[n]["speedup"]["median"] is not None
    ]
    text = Text("speedup over ar (median per prompt; range min-max)\n", style="bold")
    if not items:
        return text + Text("no prompts measured", style="dim")
    scale = max(max(sp["median"] for _, sp in items), 1.0)
    label = max(len(n) for n, _ in items)
    for name, sp in items:
        lossy = not summary[name].get("lossless", True)
        text.append(f"{name:<{label}} ", style="yellow" if lossy else "")
        style = "dim" if name.startswith(_HF) else ("green" if sp["median"] >= 1 else "red")
        drawn = bar(sp["median"], scale, width)
        text.append(drawn, style="bold " + style if name == "csd" else style)
        text.append(" " * (width + 1 - len(drawn)))
        text.append(fx(sp["median"]), style="bold" if name == "csd" else "")
        text.append(f"  ({sp['min']:.2f}-{sp['max']:.2f})", style="dim")
        text.append(" LOSSY\n" if lossy else "\n", style="yellow")
    one = round(width / scale)
    text.append(" " * (label + 1) + "─" * max(0, one - 1) + "┴ 1.0x = ar", style="dim")
    return text


def speed_bar_text(results: Mapping[str, Any]) -> Text:
    """The speed bar: each promise with its value, target and PASS/FAIL."""
    text = Text("speed bar\n", style="bold")
    for check in results["speed_bar"]:
        ok, value = check["pass"], check["value"]
        if ok is None:
            text.append("  n/a   ", style="dim")
        elif ok:
            text.append("  PASS  ", style="bold green")
        else:
            text.append("  FAIL  ", style="bold red")
        unit = check.get("unit", "")
        shown = "not measured" if value is None else (f"{value:.2f}{unit}" if unit else str(value))
        text.append(f"{check['check']}: {shown} (target {check['text']})\n")
    return text


def _lossy_note(name: str, s: Mapping[str, Any], greedy: bool) -> Text:
    """One lossy method's quality cost: outputs that differ from ar's, answers that agree."""
    cost = (
        f"{s['mismatches']} of {s['prompts']} outputs differ from ar's (its quality "
        "cost; not counted by the speed bar)"
        if greedy
        else "outputs not compared when sampling"
    )
    agree = s.get("answers_agree_with_ar")
    if agree is not None:
        cost += f"; answers agree with ar's on {100 * agree:.0f}% of prompts"
    why = s.get("lossy_why")
    head = f"{name} runs {why}" if why else f"{name} is LOSSY on purpose"
    return Text(f"{head}: {cost}", style="yellow")


def notes(results: Mapping[str, Any]) -> list[Text]:
    """Skipped methods, output mismatches with their logit margins, interruption."""
    out = []
    for name, reason in results["skipped"].items():
        out.append(Text(f"skipped {name}: {reason}", style="dim"))
    for m in results["mismatches"]:
        verdict = "near-tie (floating point)" if m["near_tie"] else "NOT a near-tie: a bug?"
        out.append(
            Text(
                f"{m['method']} differs from ar on prompt {m['prompt'] + 1} at new token "
                f"{m['position']} (got {m['got']}, ar {m['want']}); target top-2 logit margin "
                f"{m['margin']:.3g}: {verdict}",
                style="yellow" if m["near_tie"] else "bold red",
            )
        )
    greedy = not results["settings"]["temperature"]
    lossy = {n: s for n, s in results.get("summary", {}).items() if not s.get("lossless", True)}
    if lossy and results["settings"].get("until_answer"):  # the quality table has the details
        out.append(
            Text(
                f"{len(lossy)} method{'s' if len(lossy) > 1 else ''} LOSSY on purpose: their "
                "differences from ar are their quality cost (the quality table), not errors, "
                "and the speed bar does not count them",
                style="yellow",
            )
        )
    else:
        out += [_lossy_note(name, s, greedy) for name, s in lossy.items()]
    if results.get("interrupted"):
        out.append(Text("interrupted: only the prompts finished are reported", style="yellow"))
    elif results.get("stopped") and not results.get("complete", True):
        out.append(
            Text(
                f"incomplete results file ({results['stopped']}): only those prompts are reported",
                style="yellow",
            )
        )
    spread = results.get("ar_spread")
    if spread and spread.get("spread") is not None:
        a, b = spread["per_token_s"]
        line = (
            f"machine steadiness: ar on prompt 1 took {1000 * a:.1f} ms/token at the start and "
            f"{1000 * b:.1f} at the end (spread {100 * spread['spread']:.0f}%)"
        )
        if spread["busy"]:
            out.append(
                Text(
                    f"{line}: over {100 * spread['threshold']:.0f}%, the machine looks busy; "
                    "ratios may be off by that much: re-run with nothing else on the machine",
                    style="bold yellow",
                )
            )
        else:
            out.append(Text(line, style="dim"))
    return out


def print_report(console: Console, results: Mapping[str, Any], files: Sequence[Path] = ()) -> None:
    """Everything a finished bench shows: tables, chart, speed bar, notes, files written."""
    console.print(results_table(results))
    console.print()
    if (acc := acceptance_table(results, console.width)) is not None:
        console.print(acc)
        console.print()
    for extra in (prompt_phase_table(results), tree_table(results), category_table(results)):
        if extra is not None:
            console.print(extra)
            console.print()
    console.print(speed_chart(results))
    console.print()
    for extra in (quality_table(results), quality_chart(results)):
        if extra is not None:
            console.print(extra)
            console.print()
    console.print(speed_bar_text(results))
    for line in notes(results):
        console.print(line)
    m = results["machine"]
    console.print(
        Text(
            f"machine: {cpu_line(m)}{m['platform']}, {m['cpus_usable']} usable CPUs, "
            f"torch {m['torch']} ({m['torch_threads']} threads), "
            f"transformers {m['transformers']}",
            style="dim",
        )
    )
    for path in files:
        console.print(Text(f"wrote {path}", style="dim"))


# ------------------------------------------------------------------------------ PNG


def write_png(results: Mapping[str, Any], path: Path) -> None:
    """Two panels: median speedup by method (IQR as a thick bar, min-max as a thin one), and
    the target's acceptance by draft position, one line per method; a third, speedup by
    category, when the prompts carry categories."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    summary = results["summary"]
    names = [n for n in results["methods"] if n in summary and summary[n]["speedup"]["n"]]
    cats = results.get("by_category")
    if cats:
        fig, (left, right, third) = plt.subplots(
            1, 3, figsize=(19, 4.8), width_ratios=[1.1, 1, 1.3]
        )
        category_panel(third, cats, names)
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=[1.1, 1])
    colors = ["#2b6cb0" if not n.startswith(_HF) else "#a0aec0" for n in names]
    colors = ["#c05621" if n == "csd" else c for n, c in zip(names, colors, strict=True)]
    lossy = {n for n in names if not summary[n].get("lossless", True)}
    colors = ["#d69e2e" if n in lossy else c for n, c in zip(names, colors, strict=True)]
    med = [summary[n]["speedup"]["median"] for n in names]
    xs = range(len(names))
    left.bar(xs, med, color=colors, width=0.65)
    for x, n in zip(xs, names, strict=True):
        sp = summary[n]["speedup"]
        left.plot([x, x], [sp["min"], sp["max"]], color="black", linewidth=0.8)
        left.plot([x, x], [sp["q1"], sp["q3"]], color="black", linewidth=3)
        left.annotate(
            f"{sp['median']:.2f}x",
            (x, sp["max"]),
            ha="center",
            va="bottom",
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=8,
        )
    left.axhline(1.0, color="#444", linestyle="--", linewidth=0.8)
    labels = [f"{n} (LOSSY)" if n in lossy else n for n in names]
    left.set_xticks(list(xs), labels, rotation=30, ha="right")
    left.set_ylabel("speedup over ar (median per prompt)")
    left.set_title("speedup by method (thick: IQR, thin: min-max)", fontsize=10)
    left.margins(y=0.12)

    plotted = 0
    for n in results["methods"]:
        rates = summary.get(n, {}).get("target_acceptance_by_position") or []
        reached = summary.get(n, {}).get("target_reached_by_position") or [MIN_REACHED] * len(rates)
        rates = [r for r, k in zip(rates, reached, strict=False) if k >= MIN_REACHED]
        if rates:
            right.plot(range(1, len(rates) + 1), rates, marker="o", markersize=3, label=n)
            plotted += 1
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("draft position in the target's block")
    right.set_ylabel("target acceptance")
    right.set_ylim(0, 1.02)
    right.set_title(
        f"target acceptance by draft position (positions reached >= {MIN_REACHED} times)",
        fontsize=10,
    )
    if plotted:
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no drafting method ran", ha="center", transform=right.transAxes)
    right.grid(alpha=0.3)
    fig.suptitle(title(results), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def category_panel(ax: Any, cats: Mapping[str, Any], names: Sequence[str]) -> None:
    """Grouped bars: median speedup over ar by category (and all), one bar per method."""
    labels = list(cats)
    shown = [n for n in names if n != "ar"] or list(names)
    width = 0.8 / max(1, len(shown))
    for j, name in enumerate(shown):
        values = [cats[c]["methods"].get(name, {}).get("speedup") or 0.0 for c in labels]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(labels))]
        ax.bar(xs, values, width=width, label=name)
    ax.axhline(1.0, color="#444", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("speedup over ar (median per prompt)")
    ax.set_title("speedup by category", fontsize=10)
    ax.legend(fontsize=7, ncol=2)


# ------------------------------------------------------------------------------ compare


def compare_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per method (union, a's order first): the headline numbers of both results, and, when
    both reached answers, B's answers against A's ar (``quality.answers_against``)."""
    names = list(dict.fromkeys([*a["methods"], *b["methods"]]))
    answers = answers_against(a, b)
    keys = ("tokens_per_s", "tokens_per_target_forward", "swi_params", "swi_measured")
    rows = []
    for n in names:
        row: dict[str, Any] = {"method": n}
        for tag, res in (("a", a), ("b", b)):
            s = res["summary"].get(n)
            row[f"speedup_{tag}"] = s["speedup"]["median"] if s else None
            for k in keys:
                row[f"{k}_{tag}"] = s[k] if s else None
            row[f"mismatches_{tag}"] = s["mismatches"] if s else None
        if n in answers:
            row["answers_b_against_a_ar"] = answers[n]
        rows.append(row)
    return rows


def _settings_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    def get(r: Mapping[str, Any]) -> dict[str, str]:
        s, m, lad = r["settings"], r["machine"], r["ladder"]
        return {
            "created": str(r.get("created")),
            "dataset": f"{s['dataset']} ({len(r['prompts'])} prompts)",
            "ladder": f"{lad['name']}: {' > '.join(lad['rungs'])}, {lad['dtype']}",
            "k_matrix": str(lad["k_matrix"]),
            "max_new_tokens": str(s["max_new_tokens"]),
            "temperature": str(s["temperature"]),
            "blocks": f"sd {s['sd_block']}, pld {s['pld_block']}",
            "machine": f"{cpu_line(m)}{m['processor']}, {m['cpus_usable']} CPUs, "
            f"{m['torch_threads']} threads",
            "platform": m["platform"],
            "versions": f"torch {m['torch']}, transformers {m['transformers']}",
        }

    ga, gb = get(a), get(b)
    return [(k, ga[k], gb[k]) for k in ga]


def compare_report(
    console: Console, a: Mapping[str, Any], b: Mapping[str, Any], name_a: str, name_b: str
) -> None:
    """Two results files side by side: their settings (differences in yellow), then each
    method's median speedup, tok/s and B/A, tokens per target forward, output mismatches."""
    head = simple_table("settings")
    head.add_column("")
    head.add_column(f"A: {name_a}")
    head.add_column(f"B: {name_b}")
    for key, va, vb in _settings_diff(a, b):
        head.add_row(key, va, Text(vb, style="" if va == vb else "yellow"))
    console.print(head)
    console.print()
    table = simple_table(f"A: {name_a}  vs  B: {name_b}")
    table.add_column("method", no_wrap=True)
    for header in ("speedup\nA", "\nB", "tok/s\nA", "\nB", "\nB/A", "tok/fwd\nA", "\nB"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("out ≠ar\nA / B", justify="right", no_wrap=True)
    for r in compare_rows(a, b):
        ta, tb = r["tokens_per_s_a"], r["tokens_per_s_b"]
        ratio = tb / ta if ta and tb else None
        ma, mb = r["mismatches_a"], r["mismatches_b"]
        table.add_row(
            r["method"],
            fx(r["speedup_a"]),
            Text(fx(r["speedup_b"]), style=_speed_style(r["speedup_b"])),
            num(ta),
            num(tb),
            Text(fx(ratio), style=_speed_style(ratio)),
            num(r["tokens_per_target_forward_a"]),
            num(r["tokens_per_target_forward_b"]),
            f"{'-' if ma is None else ma} / {'-' if mb is None else mb}",
        )
    table.caption = "speedup: median per prompt over each file's own ar. B/A: tok/s of B over A."
    table.caption_justify = "left"
    console.print(table)
    answers = answers_against_table(a, b, name_a)
    if answers is not None:
        console.print()
        console.print(answers)
    for tag, res in (("A", a), ("B", b)):
        fails = [c["check"] for c in res.get("speed_bar", []) if c["pass"] is False]
        if fails:
            console.print(Text(f"{tag} fails the speed bar: {'; '.join(fails)}", style="yellow"))


def cpu_line(machine: dict[str, Any]) -> str:
    """The processor, its vector instruction set and whether bfloat16 blocks are cheap on it,
    as a prefix for the machine line (empty for results files from before these were kept)."""
    if "cpu" not in machine:
        return ""
    bf16 = "fast bfloat16" if machine["fast_bfloat16"] else "no fast bfloat16"
    return f"{machine['cpu']} ({machine['vector_isa']}, {bf16}), "
