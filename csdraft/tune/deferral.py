"""``csdraft tune deferral``: the fastest lossy setting (a deferral rule and alpha at the
target's review) whose answers agree with the target's own on at least ``--min-agreement`` of
the prompts. It is measured, not predicted: ``csdraft bench --until-answer`` runs ar, the
ladder as it is (lossless ``csd``) and every setting of the sweep on GSM8K prompts drawn with
the seed (the same draw ``tune k-matrix`` makes), so each answer is reached and compared with
ar's; ``--write`` stores the winner as a new ladder whose name and description say LOSSY."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from csdraft.console import fx, pct, report_console
from csdraft.engine.deferral import Deferral
from csdraft.errors import CsdraftError, UsageError

DEFAULT_SWEEP = tuple(
    f"{rule}@{alpha}"
    for rule, alphas in {
        "chow": ("0.05", "0.15", "0.3"),
        "diff": ("-0.2", "0", "0.2"),
        "v2": ("0.05", "0.15", "0.3"),
        "v3": ("0.2", "0.4", "0.6"),
    }.items()
    for alpha in alphas
)
"""Three alphas for each rule that differs at temperature 0 (there OPT and V1 decide as Diff
does: with one-hot tempered q and p, TV is 1 wherever the argmaxes differ, and V1's set
{v : q(v) >= max p - alpha} holds the drafted token exactly when max q >= max p - alpha)."""


def parse_sweep(text: str | None) -> list[Deferral]:
    """'v3@0.2,v3@0.4,diff@0' -> the deferral settings (the default sweep when None); a
    one-line UsageError when malformed or lossless (a lossless end is not a lossy setting)."""
    items = DEFAULT_SWEEP if text is None else [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("--sweep: empty; expected RULE@ALPHA[,RULE@ALPHA...], e.g. v3@0.4")
    out = []
    for item in items:
        rule, at, alpha = item.partition("@")
        try:
            if not at:
                raise ValueError("expected RULE@ALPHA")
            d = Deferral(rule, float(alpha))
        except ValueError as e:
            raise UsageError(f"--sweep: {item}: {e}") from None
        if d.lossless:
            raise UsageError(f"--sweep: {item} is {rule}'s lossless end, not a lossy setting")
        out.append(d)
    return out


def method_name(d: Deferral) -> str:
    """The bench method that runs the ladder with ``d`` at the target's review."""
    return f"csd+{d.rule}@{d.alpha:g}"


def choose(
    summary: Mapping[str, Mapping[str, Any]], sweep: Sequence[Deferral], min_agreement: float
) -> tuple[Deferral | None, list[str]]:
    """The fastest setting (median time-to-answer speedup over ar) among those whose answers
    agree with ar's on at least ``min_agreement`` of the prompts and that are faster than
    lossless csd; and a line per setting saying why it was kept or not."""
    csd = (summary.get("csd", {}).get("time_speedup") or {}).get("median")
    best, best_speed, lines = None, csd or 0.0, []
    for d in sweep:
        s = summary.get(method_name(d))
        if s is None:
            lines.append(f"{method_name(d)}: not run")
            continue
        speed = (s.get("time_speedup") or {}).get("median")
        agree = s.get("answers_agree_with_ar") or 0.0
        if agree < min_agreement:
            verdict = f"agreement {pct(agree)} < {pct(min_agreement)}"
        elif speed is None or speed <= (csd or 0.0):
            verdict = "not faster than lossless csd"
        else:
            verdict = "eligible"
        lines.append(f"{method_name(d)}: {fx(speed)} over ar, agreement {pct(agree)}: {verdict}")
        if verdict == "eligible" and speed is not None and speed > best_speed:
            best, best_speed = d, speed
    return best, lines


def lossy_name(ladder: str, d: Deferral) -> str:
    """'qwen-coder-lossy-v3-0.4': a ladder name that says it is lossy, and how."""
    return f"{ladder}-lossy-{d.rule}-{d.alpha:g}"


def run_tune_deferral(
    ladder: str | None,
    config: Path | None,
    data: Path | None,
    limit: int,
    seed: int,
    min_agreement: float,
    sweep: str | None,
    until_answer: int,
    write: bool,
    write_name: str | None,
    out: Path | None,
) -> int:
    """``csdraft tune deferral``: measure the sweep with bench, report, choose, and write."""
    from csdraft.bench.run import run_bench
    from csdraft.ladder import get_ladder, user_config_path
    from csdraft.outputs import check_writable
    from csdraft.tune.write import store_ladder

    if write_name is not None and not write:
        raise UsageError(f"the name {write_name!r} is only used with --write; add --write")
    if not 0.0 <= min_agreement <= 1.0:
        raise UsageError(f"--min-agreement must be within 0-1, got {min_agreement}")
    settings = parse_sweep(sweep)
    spec = get_ladder(ladder, config)
    if not spec.drafters:
        raise UsageError(f"ladder '{spec.name}' has no neural drafter: nothing to defer to")
    if not spec.lossless:
        raise UsageError(f"ladder '{spec.name}' is already lossy; tune a lossless ladder")
    target = Path(config) if config is not None else user_config_path()
    if write:
        check_writable(target, "--write")
    methods = ["ar", "csd", *dict.fromkeys(method_name(d) for d in settings)]
    results = run_bench(
        "gsm8k",
        data=data,
        limit=limit,
        ladder=spec.name,
        config=config,
        methods=methods,
        until_answer=until_answer,
        sample_seed=seed,
        out=out,
        no_plot=out is None,
        plot=None if out is None else Path(out).with_suffix(".png"),
    )
    if results.get("interrupted"):
        return 130
    summary = results["summary"]
    winner, lines = choose(summary, settings, min_agreement)
    console = report_console()
    console.print()
    console.print(
        f"[bold]csdraft tune deferral[/]: at least {pct(min_agreement)} of answers equal to the "
        f"target's, on {len(results['prompts'])} GSM8K prompts (seed {seed})"
    )
    for line in lines:
        console.print("  " + line, highlight=False)
    if winner is None:
        console.print(
            "[bold yellow]no lossy setting is both faster than the lossless ladder and above "
            "the agreement floor[/]; keep the lossless ladder"
            + (" (nothing written)" if write else "")
        )
        return 0
    s = summary[method_name(winner)]
    speed, agree = s["time_speedup"]["median"], s["answers_agree_with_ar"]
    csd = summary["csd"]["time_speedup"]["median"]
    console.print(
        f"[bold green]winner[/] (LOSSY): {winner.rule} alpha={winner.alpha:g} at the target's "
        f"review: {fx(speed)} over ar in time to answer ({fx(speed / csd)} over lossless csd's "
        f"{fx(csd)}), answers equal to the target's on {pct(agree)} of prompts",
        highlight=False,
    )
    if not write:
        console.print(
            f"  (not written; add --write to store it as '{lossy_name(spec.name, winner)}')"
        )
        return 0
    description = (
        f"LOSSY: {spec.name} with deferral {winner.rule} alpha={winner.alpha:g} at the target's "
        f"review (csdraft tune deferral: {speed:.2f}x over ar, answers equal to the target's on "
        f"{100 * agree:.0f}% of {len(results['prompts'])} GSM8K prompts)"
    )
    try:
        path, name = store_ladder(
            write_name or lossy_name(spec.name, winner),
            config,
            lambda final: spec.with_settings("tune", deferral=winner).replace(
                "tune", name=final, description=description
            ),
        )
    except OSError as e:
        raise CsdraftError(f"--write: cannot write {target}: {e}") from None
    console.print(f"wrote ladder [bold]{name}[/] (LOSSY) to {path}; use it with --ladder {name}")
    return 0
