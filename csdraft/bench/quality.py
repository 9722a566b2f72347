"""Quality against speed, for runs that reach answers (``bench --until-answer``): one point per
method (speedup over ar in time to answer, accuracy with its 95% interval, agreement with ar's
answers), the lossy methods drawn as one curve per base method and deferral rule over alpha, as
the speculative-cascades paper draws them (Narasimhan et al., figures of quality against
latency), with lossless methods (ar, csd, sd) as single points. A terminal table and scatter,
and a PNG.

Speedup here is time to answer (ar's wall time over the method's, per prompt): a lossy method
may write a longer or shorter answer than ar, so its tokens per second alone would not say how
much sooner the answer arrives. Tokens per second over ar's is shown beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from csdraft.bench import metrics
from csdraft.bench.results import title
from csdraft.console import fx, pct, simple_table

RULE_MARKS = {"chow": "c", "diff": "d", "opt": "o", "v1": "1", "v2": "2", "v3": "3"}
"""The terminal scatter's mark for each rule's points (lossless methods: a capital letter)."""

BASE_STYLES = {"csd": "#dd6b20", "sd": "#3182ce"}
"""Colour per base method of a lossy curve, in the terminal and the PNG."""


@dataclass(frozen=True)
class QualityPoint:
    """One method's quality and speed over the prompts of a run that reached answers."""

    name: str
    base: str
    """The engine method the rule was put on (``csd`` in ``csd+opt@0.1``); the name itself
    for a lossless method."""
    rule: str | None
    """The deferral rule (None: lossless)."""
    alpha: float | None
    """The target reviewer's alpha (the first written), for ordering a curve."""
    alpha_text: str | None
    """The alphas as written after '@' (one per reviewer)."""
    speedup: float | None
    """Median per prompt of ar's wall time over this method's (time to answer)."""
    over_csd: float | None
    """Median per prompt of lossless csd's wall time over this method's (None: no csd)."""
    tokens_speedup: float | None
    """Median per prompt of tok/s over ar's."""
    accuracy: float | None
    ci95: tuple[float, float] | None
    agreement: float | None
    """Share of prompts whose extracted answer equals ar's."""
    reached: int
    prompts: int

    @property
    def lossless(self) -> bool:
        return self.rule is None

    @property
    def curve(self) -> str:
        """'csd+opt': the curve this point belongs to (its name for lossless points)."""
        return self.name if self.rule is None else f"{self.base}+{self.rule}"


def points(results: Mapping[str, Any]) -> list[QualityPoint]:
    """The quality points of a finished run, in the run's method order; [] when the run was
    not ``--until-answer`` or scored no answers."""
    if not results["settings"].get("until_answer"):
        return []
    summary = results.get("summary") or {}
    out = []
    for name in results["methods"]:
        s = summary.get(name)
        if s is None or s.get("accuracy") is None:
            continue
        base, plus, rest = name.partition("+")
        rule, _, alpha_text = rest.partition("@") if plus else (None, "", "")
        first = alpha_text.split(",")[0] if alpha_text else None
        time_sp = (s.get("time_speedup") or {}).get("median")
        vs_csd = metrics.paired_ratios(results["prompts"], name, "csd", metrics.time_speedup)
        out.append(
            QualityPoint(
                name=name,
                base=base if plus else name,
                rule=rule or None,
                alpha=float(first) if first else (0.0 if plus else None),
                alpha_text=alpha_text or None,
                speedup=time_sp,
                over_csd=statistics.median(vs_csd) if vs_csd and name != "csd" else None,
                tokens_speedup=s["speedup"]["median"],
                accuracy=s["accuracy"],
                ci95=tuple(s["accuracy_ci95"]) if s.get("accuracy_ci95") else None,
                agreement=s.get("answers_agree_with_ar"),
                reached=s["answers_reached"],
                prompts=s["prompts"],
            )
        )
    return out


def curves(pts: Sequence[QualityPoint]) -> dict[str, list[QualityPoint]]:
    """The lossy points grouped by base method and rule, each group ordered by alpha."""
    out: dict[str, list[QualityPoint]] = {}
    for p in pts:
        if not p.lossless:
            out.setdefault(p.curve, []).append(p)
    return {k: sorted(v, key=lambda p: p.alpha or 0.0) for k, v in out.items()}


def _ar(pts: Sequence[QualityPoint]) -> QualityPoint | None:
    return next((p for p in pts if p.name == "ar"), None)


def within_ar(point: QualityPoint, ar: QualityPoint | None) -> bool | None:
    """Whether ``point``'s accuracy lies inside ar's 95% interval (None: no interval)."""
    if ar is None or ar.ci95 is None or point.accuracy is None:
        return None
    return ar.ci95[0] <= point.accuracy <= ar.ci95[1]


def _ci(p: QualityPoint) -> str:
    return "-" if p.ci95 is None else f"{100 * p.ci95[0]:.0f}-{100 * p.ci95[1]:.0f}%"


def quality_table(results: Mapping[str, Any]) -> Table | None:
    """Per method: time-to-answer and tok/s speedups over ar, accuracy with its 95% interval,
    whether it lies in ar's, agreement with ar's answers, answers reached; lossless methods
    first, then each rule's curve by alpha. None when the run reached no answers."""
    pts = points(results)
    if not pts:
        return None
    ar = _ar(pts)
    table = simple_table("quality and speed (answers reached; speedup: time to answer over ar's)")
    table.add_column("method", no_wrap=True)
    table.add_column("alpha", justify="right", no_wrap=True)
    for header in ("speedup", "÷ csd", "tok/s\nspeedup", "accuracy", "95% CI", "in ar's\nCI"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("agree\nwith ar", justify="right", no_wrap=True)
    table.add_column("reached", justify="right", no_wrap=True)
    ordered = [p for p in pts if p.lossless] + [p for c in curves(pts).values() for p in c]
    for p in ordered:
        inside = within_ar(p, ar)
        table.add_row(
            Text(
                p.name if p.lossless else f"{p.base}+{p.rule} LOSSY",
                style="bold" if p.name == "csd" else ("" if p.lossless else "yellow"),
            ),
            p.alpha_text or "",
            fx(p.speedup),
            "" if p.name in ("ar", "csd") else fx(p.over_csd),
            fx(p.tokens_speedup),
            pct(p.accuracy),
            _ci(p),
            "" if p.name == "ar" or inside is None else ("yes" if inside else "no"),
            "" if p.name == "ar" else pct(p.agreement),
            f"{p.reached}/{p.prompts}",
        )
    table.caption = (
        "speedup: median per prompt of ar's time to answer over the method's; ÷ csd: the same "
        "over lossless csd's; tok/s speedup: tokens per second over ar's (a lossy answer can be "
        "longer or shorter); 95% CI: Wilson interval of the accuracy; agree with ar: answers "
        "equal to ar's."
    )
    table.caption_justify = "left"
    return table


def answers_against(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method of run ``b``, on the prompts both runs answered (matched by id): the share
    whose answer equals run ``a``'s ar answer, its accuracy there with a 95% interval, and
    ``a``'s ar accuracy there. How a change of model (a quantized target, another ladder)
    moves the answers; {} unless both runs reached answers (``--until-answer``)."""
    if not (a["settings"].get("until_answer") and b["settings"].get("until_answer")):
        return {}
    ref = {p["id"]: p["results"]["ar"] for p in a["prompts"] if p.get("id") is not None}
    out = {}
    for name in b["methods"]:
        pairs = [
            (p["results"][name], ref[p["id"]])
            for p in b["prompts"]
            if p.get("id") in ref and name in p["results"]
        ]
        if not pairs:
            continue
        n = len(pairs)
        right = sum(bool(r.get("correct")) for r, _ in pairs)
        out[name] = {
            "prompts": n,
            "agree_with_a_ar": sum(r.get("answer") == base.get("answer") for r, base in pairs) / n,
            "accuracy": right / n,
            "accuracy_ci95": metrics.wilson(right, n),
            "a_ar_accuracy": sum(bool(base.get("correct")) for _, base in pairs) / n,
        }
    return out


def answers_against_table(a: Mapping[str, Any], b: Mapping[str, Any], name_a: str) -> Table | None:
    """``answers_against`` as a table (None when it is empty)."""
    rows = answers_against(a, b)
    if not rows:
        return None
    table = simple_table(f"B's answers against A's ar ({name_a}), on the prompts both answered")
    table.add_column("method (B)", no_wrap=True)
    for header in ("prompts", "agree with\nA's ar", "accuracy\nB", "95% CI", "A's ar\naccuracy"):
        table.add_column(header, justify="right", no_wrap=True)
    for name, r in rows.items():
        ci = r["accuracy_ci95"]
        table.add_row(
            name,
            str(r["prompts"]),
            pct(r["agree_with_a_ar"]),
            pct(r["accuracy"]),
            "-" if ci is None else f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f}%",
            pct(r["a_ar_accuracy"]),
        )
    return table


def quality_chart(results: Mapping[str, Any], width: int = 60, height: int = 14) -> Text | None:
    """A terminal scatter of speedup (time to answer) against accuracy: ar's 95% interval
    shaded, lossless methods as capital letters, each rule's points by its mark, coloured by
    base method. None when the run reached no answers."""
    pts = [p for p in points(results) if p.speedup is not None and p.accuracy is not None]
    if not pts:
        return None
    ar = _ar(pts)
    xs = [p.accuracy for p in pts] + (list(ar.ci95) if ar and ar.ci95 else [])
    x0, x1 = max(0.0, min(xs) - 0.05), min(1.0, max(xs) + 0.05)
    y0, y1 = 0.0, max(p.speedup for p in pts) * 1.08
    if x1 <= x0:
        x0, x1 = max(0.0, x0 - 0.1), min(1.0, x1 + 0.1)

    def col(x: float) -> int:
        return min(width - 1, max(0, round((x - x0) / (x1 - x0) * (width - 1))))

    def row(y: float) -> int:
        return min(height - 1, max(0, round((y1 - y) / (y1 - y0) * (height - 1))))

    grid: list[list[tuple[str, str]]] = [[(" ", "")] * width for _ in range(height)]
    if ar and ar.ci95:
        for r in range(height):
            for c in range(col(ar.ci95[0]), col(ar.ci95[1]) + 1):
                grid[r][c] = ("·", "dim")
    for r in range(height):  # the 1.0x line (ar's speed)
        if r == row(1.0):
            grid[r] = [("─", "dim") if ch == " " else (ch, st) for ch, st in grid[r]]
    for p in sorted(pts, key=lambda p: p.lossless):  # lossless points drawn last, on top
        mark = p.name[0].upper() if p.lossless else RULE_MARKS.get(p.rule or "", "?")
        style = "bold" if p.lossless else BASE_STYLES.get(p.base, "yellow")
        grid[row(p.speedup)][col(p.accuracy)] = (mark, style)
    text = Text("speedup (time to answer) against accuracy; ", style="bold")
    text.append("shaded: ar's 95% interval\n", style="dim")
    for r in range(height):
        y = y1 - r * (y1 - y0) / (height - 1)
        text.append(f"{y:5.2f}x │" if r % 3 == 0 else "       │", style="dim")
        for ch, st in grid[r]:
            text.append(ch, style=st)
        text.append("\n")
    text.append("       └" + "─" * width + "\n", style="dim")
    text.append(f"        {100 * x0:.0f}%", style="dim")
    text.append(" " * max(1, width - 10) + f"{100 * x1:.0f}%  accuracy\n", style="dim")
    lossless = sorted({p.name for p in pts if p.lossless})
    text.append("        " + "  ".join(f"{n[0].upper()} {n}" for n in lossless), style="dim")
    rules = sorted({p.rule for p in pts if p.rule}, key=list(RULE_MARKS).index)
    if rules:
        text.append("  " + "  ".join(f"{RULE_MARKS[r]} {r}" for r in rules), style="dim")
        for base in sorted({p.base for p in pts if not p.lossless}):
            text.append(f"  {base}+", style=BASE_STYLES.get(base, "yellow"))
    return text


def write_quality_png(results: Mapping[str, Any], path: Path) -> bool:
    """Two panels, speedup (time to answer) against accuracy (ar's 95% interval shaded) and
    against agreement with ar's answers: one line per rule and base method over alpha (alphas
    written at the points), lossless methods as black points. False (nothing written) when
    the run reached no answers."""
    pts = [p for p in points(results) if p.speedup is not None and p.accuracy is not None]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    ar = _ar(pts)
    palette = plt.get_cmap("tab10")
    rules = list(RULE_MARKS)
    for ax, field, label in (
        (axes[0], "accuracy", "GSM8K accuracy (answers reached)"),
        (axes[1], "agreement", "answers equal to ar's"),
    ):
        if field == "accuracy" and ar and ar.ci95:
            ax.axvspan(*ar.ci95, color="#e2e8f0", label="ar's 95% interval")
        for name, curve in curves(pts).items():
            base, rule = name.split("+", 1)
            xs = [getattr(p, field) for p in curve]
            ys = [p.speedup for p in curve]
            ax.plot(
                xs,
                ys,
                marker="o",
                markersize=4,
                color=palette(rules.index(rule) if rule in rules else 9),
                linestyle="-" if base == "csd" else "--",
                label=f"{name} (LOSSY)",
            )
            for p, x, y in zip(curve, xs, ys, strict=True):
                ax.annotate(
                    p.alpha_text or "",
                    (x, y),
                    xytext=(3, 3),
                    textcoords="offset points",
                    fontsize=7,
                )
        for p in pts:
            if p.lossless and getattr(p, field) is not None:
                ax.plot(getattr(p, field), p.speedup, marker="s", color="black", markersize=6)
                ax.annotate(
                    p.name,
                    (getattr(p, field), p.speedup),
                    xytext=(4, -10),
                    textcoords="offset points",
                    fontsize=8,
                    weight="bold",
                )
        ax.axhline(1.0, color="#444", linestyle=":", linewidth=0.8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speedup over ar (time to answer, median per prompt)")
    axes[0].set_title("speedup against accuracy", fontsize=10)
    axes[1].set_title("speedup against agreement with the target's answers", fontsize=10)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title(results) + " · lines: deferral rules over alpha (LOSSY)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def quality_png_path(png: Path) -> Path:
    """Where the quality chart goes beside the main chart: ``bench.png`` ->
    ``bench-quality.png``."""
    png = Path(png)
    return png.with_name(png.stem + "-quality" + (png.suffix or ".png"))
