"""Bench arithmetic: pure functions over per-prompt records (plain JSON-ready dicts).

A record is what one method did on one prompt::

    {"new_tokens": 128, "wall_s": 21.3, "target_forwards": 40,
     "forwards": {"qwen-1.5b": 40, "qwen-0.5b": 75},     # forward passes by model
     "forward_s": {"qwen-1.5b": 10.2, "qwen-0.5b": 6.1}, # seconds in them (engine methods)
     "reviews": {"qwen-1.5b": [160, 88]},                 # reviewer: [proposed, accepted]
     "by_position": [[40, 35], [35, 30]],                 # target: [reached, accepted]
     "finish": "length", "answer": "18", "correct": True, "mismatch": None,
     "prefill_s": 1.2, "decode_s": 20.1,                  # prompt phase, then decoding
     "prefill_tokens": 3,                                 # tokens final at the phase's end
     "prompt_pass_s": {"qwen-1.5b": 0.9, "qwen-0.5b": 0.2}} # each rung's pass over the prompt

Results files written before the time split lack the last four; they read as not measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from csdraft.trace import tokens_per_second

Record = Mapping[str, Any]

SPEED_BAR = {
    "csd_over_ar": 1.8,
    "csd_over_hf_assisted": 1.3,
    "ar_over_hf_generate": 0.95,
    "mismatches": 0,
}
"""The targets the speed bar checks (see ``speed_bar``)."""


def spread(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, median, mean, min, max and the quartiles q1/q3 of ``values`` (None when empty)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return dict.fromkeys(("n", "median", "mean", "min", "max", "q1", "q3")) | {"n": 0}
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "mean": statistics.fmean(xs),
        "min": xs[0],
        "max": xs[-1],
        "q1": q1,
        "q3": q3,
    }


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval (95% by default) of a proportion, or None when n is 0."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return (max(0.0, centre - half), min(1.0, centre + half))


def answer_agreement(prompts: Sequence[Mapping[str, Any]], name: str) -> float | None:
    """The share of prompts where ``name`` extracted the same answer as ar (both None counts
    as agreement), over the prompts both ran on; None when there are none."""
    pairs = [
        (p["results"][name].get("answer"), p["results"]["ar"].get("answer"))
        for p in prompts
        if name in p["results"] and "ar" in p["results"]
    ]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def tokens_per_s(record: Record) -> float:
    """Generated tokens per wall-clock second (0 when no time was measured)."""
    return tokens_per_second(record["new_tokens"], record["wall_s"]) or 0.0


def speedup(record: Record, base: Record) -> float | None:
    """Throughput of ``record`` over that of ``base`` on the same prompt: the wall-time ratio
    when both generated the same tokens, and still fair when lengths differ (sampling)."""
    b = tokens_per_s(base)
    return tokens_per_s(record) / b if b > 0 else None


def time_speedup(record: Record, base: Record) -> float | None:
    """``base``'s wall time over ``record``'s on the same prompt: how much sooner the whole
    answer arrives, whatever its length (lossy methods may write more or fewer tokens)."""
    return base["wall_s"] / record["wall_s"] if record["wall_s"] > 0 else None


def decode_tokens_per_s(record: Record) -> float | None:
    """Tokens made final during decoding per second of decoding: the prompt phase and the
    tokens it already made final (``prefill_tokens``: a drafting method's first block may hold
    several) are both left out, so no method gains from the first block. None when the record
    has no time split."""
    decode = record.get("decode_s")
    if decode is None:
        return None
    return tokens_per_second(record["new_tokens"] - (record.get("prefill_tokens") or 0), decode)


def decode_speedup(record: Record, base: Record) -> float | None:
    """Decoding-only throughput of ``record`` over that of ``base`` on the same prompt."""
    a, b = decode_tokens_per_s(record), decode_tokens_per_s(base)
    return a / b if a is not None and b else None


def prefill_share(records: Sequence[Record]) -> float | None:
    """The share of the records' wall time spent in the prompt phase (None: not measured)."""
    timed = [r for r in records if r.get("prefill_s") is not None]
    wall = sum(r["wall_s"] for r in timed)
    return sum(r["prefill_s"] for r in timed) / wall if timed and wall > 0 else None


def swi(
    new_tokens: int, forwards: Mapping[str, int], costs: Mapping[str, float], target: str
) -> float | None:
    """Standardized walltime improvement: what autoregressive decoding of ``new_tokens`` would
    cost (one target forward per token) over what the forwards spent cost, each model's forward
    at a fixed cost (Max-Gram, which never runs a forward, costs 0). None when a model's cost
    is unknown or nothing was spent."""
    if target not in costs:
        return None
    spent = 0.0
    for name, n in forwards.items():
        if n and name not in costs:
            return None
        spent += n * costs.get(name, 0.0)
    return new_tokens * costs[target] / spent if spent > 0 else None


def measured_costs(records: Iterable[Record]) -> dict[str, float]:
    """Seconds per forward pass by model, averaged over every forward the records timed."""
    seconds: dict[str, float] = {}
    count: dict[str, int] = {}
    for rec in records:
        for name, s in (rec.get("forward_s") or {}).items():
            n = rec["forwards"].get(name, 0)
            if n:
                seconds[name] = seconds.get(name, 0.0) + s
                count[name] = count.get(name, 0) + n
    return {name: seconds[name] / count[name] for name in seconds}


def merge_positions(lists: Iterable[Sequence[Sequence[int]]]) -> list[list[int]]:
    """Sum per-position [reached, accepted] counters over several generations."""
    out: list[list[int]] = []
    for positions in lists:
        for i, (reached, accepted) in enumerate(positions):
            if i == len(out):
                out.append([0, 0])
            out[i][0] += reached
            out[i][1] += accepted
    return out


def position_rates(merged: Sequence[Sequence[int]]) -> list[float]:
    """Target acceptance at each draft position: accepted / reached."""
    return [a / n if n else 0.0 for n, a in merged]


def acceptance_by_rung(reviews: Iterable[Mapping[str, Sequence[int]]]) -> dict[str, float]:
    """Accepted / proposed per reviewer, summed over generations (reviewers that never saw a
    proposal are left out)."""
    proposed: dict[str, int] = {}
    accepted: dict[str, int] = {}
    for review in reviews:
        for name, (p, a) in review.items():
            proposed[name] = proposed.get(name, 0) + p
            accepted[name] = accepted.get(name, 0) + a
    return {name: accepted[name] / p for name, p in proposed.items() if p}


def paired_ratios(
    prompts: Sequence[Mapping[str, Any]],
    a: str,
    b: str,
    ratio: Callable[[Record, Record], float | None] = speedup,
) -> list[float]:
    """Per prompt, throughput of method ``a`` over method ``b`` (prompts with both), whole
    request by default, or as ``ratio`` says (``decode_speedup``)."""
    out = []
    for p in prompts:
        res = p["results"]
        if a in res and b in res and (r := ratio(res[a], res[b])) is not None:
            out.append(r)
    return out


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def by_category(
    prompts: Sequence[Mapping[str, Any]], methods: Sequence[str]
) -> dict[str, dict[str, Any]] | None:
    """Per category (in order of first appearance) and ``all``: each method's median
    per-prompt speedup and decoding-only speedup over ar, its share of time in the prompt
    phase, and csd over hf-assisted (median per prompt, decoding only) when both ran. None
    when no prompt has a category."""
    cats = list(dict.fromkeys(p.get("category") for p in prompts if p.get("category")))
    if not cats:
        return None
    out = {}
    for cat in [*cats, "all"]:
        group = [p for p in prompts if cat == "all" or p.get("category") == cat]
        rows = {}
        for name in methods:
            recs = [p["results"][name] for p in group if name in p["results"]]
            if recs:
                rows[name] = {
                    "prompts": len(recs),
                    "speedup": _median(paired_ratios(group, name, "ar")),
                    "decode_speedup": _median(paired_ratios(group, name, "ar", decode_speedup)),
                    "prefill_share": prefill_share(recs),
                }
        rel = paired_ratios(group, "csd", "hf-assisted", decode_speedup)
        out[cat] = {"prompts": len(group), "methods": rows, "csd_over_hf_assisted": _median(rel)}
    return out


def _sum_by_name(tables: Iterable[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for table in tables:
        for name, value in table.items():
            out[name] = out.get(name, 0.0) + value
    return out


def summarize_method(
    name: str,
    prompts: Sequence[Mapping[str, Any]],
    target: str,
    costs: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    """One method's totals over the prompts it ran on; ``costs`` holds ``params`` and
    ``measured_s`` cost tables by model name."""
    recs = [p["results"][name] for p in prompts if name in p["results"]]
    tokens = sum(r["new_tokens"] for r in recs)
    wall = sum(r["wall_s"] for r in recs)
    target_fw = sum(r.get("target_forwards") or 0 for r in recs)
    forwards: dict[str, int] = {}
    for r in recs:
        for model, n in r["forwards"].items():
            forwards[model] = forwards.get(model, 0) + n
    correct = [r["correct"] for r in recs if r.get("correct") is not None]
    positions = merge_positions(r.get("by_position") or [] for r in recs)
    return {
        "prompts": len(recs),
        "new_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens_per_second(tokens, wall) or 0.0,
        "speedup": spread(paired_ratios(prompts, name, "ar")),
        "time_speedup": spread(paired_ratios(prompts, name, "ar", time_speedup)),
        "decode_speedup": spread(paired_ratios(prompts, name, "ar", decode_speedup)),
        "prefill_share": prefill_share(recs),
        "prompt_pass_s": _sum_by_name(r.get("prompt_pass_s") or {} for r in recs),
        "tokens_per_target_forward": tokens / target_fw if target_fw else None,
        "forwards": forwards,
        "swi_params": swi(tokens, forwards, costs.get("params", {}), target),
        "swi_measured": swi(tokens, forwards, costs.get("measured_s", {}), target),
        "acceptance": acceptance_by_rung(r.get("reviews") or {} for r in recs),
        "target_acceptance_by_position": position_rates(positions),
        "target_reached_by_position": [n for n, _ in positions],
        "accuracy": sum(correct) / len(correct) if correct else None,
        "accuracy_ci95": wilson(sum(correct), len(correct)),
        "answers_reached": sum(1 for r in recs if r.get("answer") is not None),
        "answers_agree_with_ar": answer_agreement(prompts, name),
        "mismatches": sum(1 for r in recs if r.get("mismatch")),
        "mismatches_beyond_ties": sum(
            1 for r in recs if r.get("mismatch") and not r["mismatch"].get("near_tie")
        ),
    }


def summarize(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-method summaries of a results dict (``methods``, ``prompts``, ``costs``, target)."""
    prompts = results["prompts"]
    target = results["ladder"]["rungs"][0]
    configs = results.get("method_configs", {})
    return {
        name: {
            **summarize_method(name, prompts, target, results["costs"]),
            "lossless": configs.get(name, {}).get("lossless", True),
            **({"lossy_why": why} if (why := configs.get(name, {}).get("lossy_why")) else {}),
        }
        for name in results["methods"]
        if any(name in p["results"] for p in prompts)
    }


def _check(name: str, value: float | None, target: float, ok: bool | None, text: str) -> dict:
    unit = "" if name.startswith("outputs") else "x"
    return {"check": name, "value": value, "target": target, "pass": ok, "text": text, "unit": unit}


def speed_bar(
    summary: Mapping[str, Mapping[str, Any]],
    prompts: Sequence[Mapping[str, Any]],
    greedy: bool = True,
) -> list[dict[str, Any]]:
    """The four checks the product promises, each with its value and pass/fail (None: not
    measured in this run)."""
    bar = SPEED_BAR
    out = []
    csd = summary.get("csd", {}).get("speedup", {}).get("median")
    out.append(
        _check(
            "csd speedup over ar (median per prompt)",
            csd,
            bar["csd_over_ar"],
            None if csd is None else csd >= bar["csd_over_ar"],
            f">= {bar['csd_over_ar']}x",
        )
    )
    ratios = paired_ratios(prompts, "csd", "hf-assisted")
    rel = statistics.median(ratios) if ratios else None
    out.append(
        _check(
            "csd over hf-assisted (median per prompt)",
            rel,
            bar["csd_over_hf_assisted"],
            None if rel is None else rel >= bar["csd_over_hf_assisted"],
            f">= {bar['csd_over_hf_assisted']}x",
        )
    )
    ar, hf = summary.get("ar"), summary.get("hf-generate")
    ratio = ar["tokens_per_s"] / hf["tokens_per_s"] if ar and hf and hf["tokens_per_s"] else None
    out.append(
        _check(
            "ar tok/s over hf-generate's",
            ratio,
            bar["ar_over_hf_generate"],
            None if ratio is None else ratio >= bar["ar_over_hf_generate"],
            f">= {bar['ar_over_hf_generate']}",
        )
    )
    exact = [s for s in summary.values() if s.get("lossless", True)]  # lossy: a quality cost
    total = sum(s["mismatches"] for s in exact)
    real = sum(s.get("mismatches_beyond_ties", s["mismatches"]) for s in exact)
    out.append(
        _check(
            "outputs that differ from ar's, beyond floating-point near-ties",
            real if greedy else None,
            bar["mismatches"],
            (real == 0) if greedy else None,
            f"0 (greedy; {total} differ in all, each listed with its margin below)"
            if greedy
            else "not checked when sampling",
        )
    )
    return out


def decode_pass_costs(recs: Sequence[Record], target: str) -> tuple[float, float] | None:
    """(target seconds per decoding pass, drafters' seconds per target decoding pass) over
    ``recs``: forward time less each rung's pass over the prompt, over the target's passes
    after its first; None without per-rung times."""
    passes = sum((r.get("target_forwards") or 0) - 1 for r in recs)
    if passes <= 0 or not all(r.get("forward_s") and "prompt_pass_s" in r for r in recs):
        return None
    own = {"target": 0.0, "drafters": 0.0}
    for r in recs:
        for model, seconds in r["forward_s"].items():
            decoding = seconds - r["prompt_pass_s"].get(model, 0.0)
            own["target" if model == target else "drafters"] += decoding
    return own["target"] / passes, own["drafters"] / passes


def tree_crossover(results: Mapping[str, Any], base: str = "csd") -> list[dict[str, Any]]:
    """For every method whose target reviews token trees, against ``base`` (linear drafts on
    the same ladder): tokens per target forward ``gain``, target pass ``cost`` ratio and
    ``break_even``, the target pass cost ratio under which the trees would be faster given the
    drafters' measured time: with T, D the target's and the drafters' seconds per target pass
    and g the gain, trees pay when r T_base + D_tree < g (T_base + D_base), so
    r* = (g (T_base + D_base) - D_tree) / T_base. Empty without ``base`` or per-rung times."""
    configs = results.get("method_configs", {})
    target = results["ladder"]["rungs"][0]
    prompts = results["prompts"]
    summary = results.get("summary") or summarize(results)

    def records(name: str) -> list[Record]:
        return [p["results"][name] for p in prompts if name in p["results"]]

    linear = decode_pass_costs(records(base), target) if base in summary else None
    rows = []
    for name in results["methods"]:
        tree = (configs.get(name, {}).get("tree") or [None])[0]
        recs = records(name)
        mine = decode_pass_costs(recs, target) if tree and name in summary else None
        if linear is None or mine is None:
            continue
        (t0, d0), (t1, d1) = linear, mine
        tpf0 = summary[base]["tokens_per_target_forward"] or 0.0
        tpf1 = summary[name]["tokens_per_target_forward"] or 0.0
        gain = tpf1 / tpf0 if tpf0 else 0.0
        scored = sum((r.get("reviews") or {}).get(target, [0])[0] for r in recs)
        forwards = sum(r.get("target_forwards") or 0 for r in recs)
        rows.append(
            {
                "method": name,
                "nodes": scored / forwards if forwards else 0.0,
                "gain": gain,
                "target_s": t1,
                "drafters_s": d1,
                "cost": t1 / t0,
                "break_even": (gain * (t0 + d0) - d1) / t0,
                "base_target_s": t0,
                "base_drafters_s": d0,
            }
        )
    return rows
