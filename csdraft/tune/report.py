"""The report: tables of measured costs, agreement and candidates (predicted vs measured), and
short answers to the paper reviewers' questions for this ladder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from csdraft.console import fx, num, pct
from csdraft.engine import kmatrix
from csdraft.engine.kmatrix import KMatrix
from csdraft.runs import Outcome
from csdraft.tune import settings
from csdraft.tune.agreement import Agreement
from csdraft.tune.analytic import best_ewif
from csdraft.tune.calibration import Calibration
from csdraft.tune.search import Candidate
from csdraft.tune.verify import tokens_per_forward, tokens_per_s


def family(c: Candidate) -> str:
    """The candidate's family, its label and tree: '1 (vertical, tree 16/1/0.5)'."""
    name = kmatrix.family(c.k) + ("" if c.tree is None else f", {c.tree.short}")
    return f"{c.label} ({name})" if c.label else name


def costs_table(cal: Calibration) -> Any:
    """Measured forward cost by block length, per neural rung (ms)."""
    from rich.table import Table

    lengths = sorted({n for c in cal.costs for n in c.lengths if n != c.prefill})
    table = Table(title="forward pass cost on this machine (ms, median)", title_style="bold")
    table.add_column("rung")
    for n in lengths:
        table.add_column(f"{n} tok", justify="right")
    table.add_column("prefill", justify="right")
    for r, curve in enumerate(cal.costs):
        pre = curve.prefill
        table.add_row(
            cal.names[r],
            *[f"{1000 * curve(n):.1f}" for n in lengths],
            f"{1000 * curve(pre):.0f} ({pre} tok)" if pre else "-",
        )
    caption = f"engine overhead {1000 * cal.overhead_s:.2f} ms per review"
    if cal.maxgram:
        caption += f"; Max-Gram {1e6 * cal.maxgram_s:.0f} us per proposal"
    table.caption = caption
    return table


def agreement_table(agree: Agreement, title: str = "greedy agreement along the reference") -> Any:
    """Reviewer x drafter: share of positions where greedy tokens match, mean run length."""
    from rich.table import Table

    drafters = sorted({d for _, d in agree.rate})
    reviewers = sorted({r for r, _ in agree.rate})
    table = Table(title=title, title_style="bold")
    table.add_column("reviewer \\ drafter")
    for d in drafters:
        table.add_column(agree.names[d], justify="right")
    for r in reviewers:
        cells = []
        for d in drafters:
            if (r, d) in agree.rate:
                cells.append(f"{pct(agree.rate[(r, d)], 1)} (run {agree.mean_run[(r, d)]:.1f})")
            else:
                cells.append("")
        table.add_row(agree.names[r], *cells)
    table.caption = (
        f"{agree.positions} positions. Neural: share of positions where both greedy tokens "
        "match, and the mean number of consecutive matches from a position. Max-Gram: share "
        "of positions where its first proposed token matches, and its mean accepted prefix."
    )
    return table


def rungs_text(k: KMatrix, names: Sequence[str]) -> str:
    """The drafting rungs a k-matrix uses, in ladder order: 'drafter+max-gram'."""
    return "+".join(names[r] for r in sorted(kmatrix.used_rungs(k)))


def candidates_table(
    ranked: Sequence[Candidate],
    shown: Sequence[Candidate],
    ar: Sequence[Outcome],
    names: Sequence[str],
) -> Any:
    """The rich comparison: predictions (analytic and replay) and measurements side by side;
    ``ar`` holds ar's outcomes on the prompts run."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="candidates: predicted vs measured", title_style="bold", box=box.SIMPLE_HEAD
    )
    for col, just in (
        ("#", "right"),
        ("setting", "left"),
        ("rungs", "left"),
        ("k-matrix", "left"),
        ("l", "right"),
        ("conf", "right"),
        ("EWIF", "right"),
        ("replay", "right"),
        ("tok/rev", "right"),
        ("measured", "right"),
        ("error", "right"),
        ("tok/s", "right"),
        ("tok/fwd", "right"),
        ("same", "right"),
    ):
        table.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    rank = {c.key: i + 1 for i, c in enumerate(ranked)}
    table.add_row(
        "",
        "ar",
        names[0],
        "-",
        "",
        "",
        fx(1.0),
        fx(1.0),
        num(1.0),
        fx(1.0) if ar else "-",
        "",
        num(tokens_per_s(ar)) if ar else "-",
        num(tokens_per_forward(ar)) if ar else "-",
        "",
    )
    for c in shown:
        got = c.measured_speedup(ar)
        pred = c.pred.speedup_on(range(len(c.outcomes))) if (c.pred and c.measured) else None
        err = (pred - got) / got if (got and pred) else None
        table.add_row(
            str(rank.get(c.key, "")),
            family(c),
            rungs_text(c.k, names),
            kmatrix.text(c.k),
            settings.text(c.lenience),
            settings.text(c.floor),
            fx(c.analytic),
            fx(c.speedup if c.pred else None),
            num(c.pred.tokens_per_review) if c.pred else "-",
            fx(got),
            "-" if err is None else f"{100 * err:+.0f}%",
            num(tokens_per_s(c.outcomes)) if c.measured else "-",
            num(tokens_per_forward(c.outcomes)) if c.measured else "-",
            f"{c.identical}/{c.runs}" if c.runs else "-",
        )
    table.caption = (
        "#: rank by replay prediction. l: lenience. conf: min_confidence. EWIF: the analytic "
        "cascade model (which ignores lenience and min_confidence). replay: "
        "the engine replayed over the recorded continuations with measured costs (tune's "
        "predictor), tok/rev its tokens per target review. measured: wall-time speedup over "
        "ar on the prompts run (each prompt's fastest round; tok/fwd: tokens per target "
        "forward); error: the replay's prediction on those prompts vs measured; same: outputs "
        "identical to ar's, over every round."
    )
    return table


def answers(
    ranked: Sequence[Candidate],
    ar: Sequence[Outcome],
    cal: Calibration,
    agree: Agreement,
) -> list[str]:
    """Short answers to the paper reviewers' questions for this ladder, from the replay's
    predictions (and measurements where they exist)."""
    names = cal.names
    plain = [c for c in ranked if c.pred and c.lenience == 1.0]

    def show(c: Candidate | None) -> str:
        if c is None:
            return "none in the search"
        got = c.measured_speedup(ar)
        measured = f", measured {fx(got)}" if got else ""
        return (
            f"[{kmatrix.text(c.k)}] ({rungs_text(c.k, names)}) predicted {fx(c.speedup)}{measured}"
        )

    def best(pred: Callable[[Candidate], bool]) -> Candidate | None:
        return next((c for c in plain if pred(c)), None)

    lines = []
    top = ranked[0] if ranked else None
    lenience = f", lenience {settings.text(top.lenience)}" if top else ""
    lines.append(f"best overall: {show(top)}{lenience}")
    n = cal.n_neural
    d = cal.drafting_rungs
    if d == 1:
        lines.append(
            f"one drafting rung ({names[1]}): only the block length is tuned; without it the "
            "target decodes alone (ar, 1.00x)"
        )
        return lines
    v = best(lambda c: kmatrix.family(c.k) == "vertical")
    h = best(lambda c: kmatrix.family(c.k) == "horizontal")
    comb = best(lambda c: kmatrix.family(c.k) == "combined")
    lines.append(f"vertical only (diagonal k-matrix): {show(v)}")
    lines.append(f"horizontal only (target's row; drafters autoregressive): {show(h)}")
    lines.append(f"combined (both at once): {show(comb)}")
    full = set(range(1, d + 1))
    subsets: dict[frozenset[int], Candidate] = {}
    for c in plain:
        subsets.setdefault(frozenset(kmatrix.used_rungs(c.k)), c)
    lines.append("rungs used -> best predicted (is dropping a rung faster?):")
    for used, c in sorted(subsets.items(), key=lambda kv: -kv[1].speedup):
        tag = " (all rungs)" if used == full else ""
        lines.append(f"  {len(used) + 1} levels, {rungs_text(c.k, names)}{tag}: {show(c)}")
    all_best = subsets.get(frozenset(full))
    if n > 1:
        smallest = n - 1
        no_small = best(lambda c: smallest not in kmatrix.used_rungs(c.k))
        lines.append(
            f"without {names[smallest]} (smallest neural drafter): {show(no_small)}"
            + _versus(no_small, all_best, top)
        )
    mag = cal.maxgram_rung
    if mag is not None:
        no_mag = best(lambda c: mag not in kmatrix.used_rungs(c.k))
        lines.append(f"without {names[mag]}: {show(no_mag)}" + _versus(no_mag, all_best, top))
    for r in range(1, n):
        a = agree.rate.get((0, r), 0.0)
        c_ratio = cal.costs[r].review(0) / cal.costs[0].review(0)
        g, e = best_ewif(a, c_ratio)
        lines.append(
            f"classic EWIF for {names[r]} alone (a={a:.3f}, c={c_ratio:.2f}): best g={g}, "
            f"{e:.2f}x (constant c, i.i.d. acceptance, no overhead)"
        )
    floored = [c for c in plain if c.floor != 0.0]
    if floored:
        fb = floored[0]
        base = next((c for c in plain if c.k == fb.k and c.floor == 0.0), None)
        lines.append(
            f"min_confidence: best [{kmatrix.text(fb.k)}] with {settings.text(fb.floor)} "
            f"predicted {fx(fb.speedup)} vs {fx(base.speedup if base else None)} without "
            "(drafts end after a token the drafter doubts; output unchanged)"
        )
    trees = [c for c in plain if c.tree is not None]
    for kind, pool in (
        ("token trees", [c for c in trees if not c.tree.extend]),
        ("extended trees", [c for c in trees if c.tree.extend]),
    ):
        if not pool:
            continue
        tb = pool[0]
        base = next(
            (c for c in plain if c.tree is None and c.k == tb.k and c.floor == tb.floor), None
        )
        lines.append(
            f"{kind}: best [{kmatrix.text(tb.k)}] {tb.tree.short} predicted {fx(tb.speedup)}, "
            f"{_per_review(tb)} tokens per target review, vs {fx(base.speedup if base else None)}"
            f" and {_per_review(base)} linear (a tree pass costs the measured tree curve)"
        )
    lenient = [c for c in ranked if c.pred and c.lenience != 1.0]
    if lenient:
        lb = lenient[0]
        base = next((c for c in plain if c.k == lb.k), None)
        lines.append(
            f"lenience: best lenient setting [{kmatrix.text(lb.k)}] "
            f"l={settings.text(lb.lenience)} predicted {fx(lb.speedup)} vs "
            f"{fx(base.speedup if base else None)} at l=1 "
            "(greedy output stays identical: lenience only acts on inner reviews)"
        )
    return lines


def _per_review(c: Candidate | None) -> str:
    return f"{c.pred.tokens_per_review:.2f}" if c is not None and c.pred else "-"


def _versus(c: Candidate | None, with_all: Candidate | None, top: Candidate | None) -> str:
    ref = with_all or top
    if c is None or ref is None or ref.k == c.k:
        return ""
    verdict = "faster" if c.speedup > ref.speedup else "slower"
    return f" -> {verdict} than the best with every rung ({fx(ref.speedup)})"
