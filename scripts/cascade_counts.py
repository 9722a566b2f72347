"""Deterministic counts of sub-ladders of one loaded ladder, and their time estimated from
per-pass costs (issue 34: what pays on a CPU when wall-clock time cannot be measured).

    python scripts/cascade_counts.py --rows 0-19 --out counts.jsonl \\
        --config 'default=qwen-0.5b,max-gram:[[6,0],[0,8]]' --config 'tr4=recycle:[[4]]'

Each ``--config NAME=RUNGS:K_MATRIX[@RUNG.KEY=VALUE,...]`` keeps the target and ``RUNGS``
(comma-separated rung names of the loaded ladder, ``-`` for none) with that k-matrix and those
settings changed (``@recycle.successors=4,recycle.copy_ngram=2``). Every config runs the same
GSM8K prompts (as ``csdraft bench gsm8k`` builds them), greedy, recycling tables fresh per
config. Per config it prints and appends (JSON) tokens per target forward, each rung's passes
and tokens fed per generated token, each reviewer's kept/proposed per drafter and position,
the estimated ms per token (``--target-ms`` cost curve by tokens fed, each drafter's passes
``--drafter-ratio`` of that, plus ``--harvest-ms`` per row a recycling ladder harvests) and
whether every output equals the first config's. Prompt passes are not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from csdraft.api import Ladder
from csdraft.bench.data import load_gsm8k
from csdraft.engine import recycling
from csdraft.ladder import parse_ladder
from csdraft.trace import Commit, Review, Stats
from csdraft.tune.costs import CostCurve

LADDER = """
counts:
  rungs:
    - {name: qwen-1.5b, model: qwen2.5-coder-1.5b-instruct, dtype: int8}
    - {name: qwen-0.5b, model: qwen2.5-coder-0.5b-instruct, dtype: int8, vocab: 65536,
       min_confidence: 0.7}
    - {kind: max-gram, max_ngram: 8, min_ngram: 1}
    - {kind: recycle}
  k_matrix: [[6, 0, 0], [0, 8, 0], [0, 0, 0]]
"""
TARGET_MS = "1:76.5,4:77,8:116,12:154,16:201"


def curve(text: str) -> CostCurve:
    pairs = [p.split(":") for p in text.split(",")]
    return CostCurve([int(n) for n, _ in pairs], [float(s) for _, s in pairs])


def config(text: str, base):
    text, _, settings = text.partition("@")
    name, _, rest = text.partition("=")
    rungs, _, k = rest.partition(":")
    names = [] if rungs == "-" else rungs.split(",")
    spec = base
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        rung, _, field = key.partition(".")
        spec = spec.with_rung(rung, **{field: yaml.safe_load(value)})
    return name, spec.keep(names, k)


RECORD: Path | None = None


def record_target_rows(path: Path):
    """Append, per target review, the context length, the draft and the top-8 ids of every row
    (the target is batch-invariant: rows on the output's path are its one-token rows)."""
    from csdraft.engine.cascade import Cascade

    score = Cascade._score

    def recording(self, rung, context, draft):
        logits, seconds = score(self, rung, context, draft)
        if rung.index == 0 and draft.is_chain:
            top = logits.topk(8, dim=-1).indices.tolist()
            row = {"at": len(context), "draft": draft.tokens, "top": top}
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        return logits, seconds

    Cascade._score = recording
    global RECORD
    RECORD = path


def run(
    ladder: Ladder, name: str, spec, prompts, target_ms: CostCurve, ratio: float, harvest_ms: float
) -> dict:
    recycling._TABLES.clear()
    harvests = any(r.kind == "recycle" for r in spec.rungs)
    per_rung = defaultdict(lambda: [0, 0])  # rung -> [passes, tokens fed]
    kept = defaultdict(lambda: defaultdict(lambda: [0, 0]))  # (reviewer, origin) -> pos -> n, k
    new_tokens = target_forwards = 0
    est_ms = 0.0
    outputs, per_prompt = [], []
    for i, ids in enumerate(prompts):
        events = list(ladder.stream(ids, 128, spec=spec))
        stats = Stats.of(events)
        before = est_ms
        new_tokens += stats.new_tokens
        target_forwards += stats.target_forwards
        outputs.append([t for e in events if isinstance(e, Commit) for t in e.tokens])
        if RECORD:
            with RECORD.open("a") as f:
                f.write(json.dumps({"config": name, "prompt": ids, "output": outputs[-1]}) + "\n")
        for e in events:
            if not isinstance(e, Review):
                continue
            fed = len(e.proposed) + 1
            per_rung[e.reviewer][0] += 1
            per_rung[e.reviewer][1] += fed
            est_ms += target_ms(fed) * (1.0 if e.reviewer == 0 else ratio)
            est_ms += harvest_ms * fed if harvests else 0.0
            good = set(e.kept())
            seen: dict[int, int] = defaultdict(int)
            for j, origin in enumerate(e.origins):
                if e.parents is not None and e.parents[j] != j - 1 and j:
                    continue  # tree siblings: count each path's first branch only
                pos = seen[origin]
                seen[origin] += 1
                cell = kept[f"{e.reviewer}<{origin}"][pos]
                cell[0] += 1
                cell[1] += j in good
        per_prompt.append([stats.new_tokens, stats.target_forwards, round(est_ms - before, 1)])
        print(f"{name} prompt {i}: {per_prompt[-1]}", file=sys.stderr, flush=True)
    names = spec.rung_names
    return {
        "name": name,
        "rungs": names,
        "k_matrix": [list(r) for r in spec.k_matrix],
        "new_tokens": new_tokens,
        "tokens_per_target_forward": round(new_tokens / target_forwards, 3),
        "passes_per_token": {names[r]: round(p / new_tokens, 3) for r, (p, _) in per_rung.items()},
        "fed_per_pass": {names[r]: round(f / p, 2) for r, (p, f) in per_rung.items()},
        "est_ms_per_token": round(est_ms / new_tokens, 2),
        "kept": {
            pair: {
                "proposed": sum(n for n, _ in by.values()),
                "kept": sum(k for _, k in by.values()),
                "by_position": [round(by[p][1] / by[p][0], 3) for p in sorted(by)][:16],
            }
            for pair, by in sorted(kept.items())
        },
        "per_prompt": per_prompt,
        "outputs": outputs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="0-19")
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/gsm8k/test.jsonl"))
    ap.add_argument("--target-ms", default=TARGET_MS)
    ap.add_argument("--record", type=Path, help="the target's rows, for scripts/recycle_sim.py")
    ap.add_argument("--drafter-ratio", type=float, default=0.42)
    ap.add_argument("--harvest-ms", type=float, default=0.3, help="topk per row harvested")
    args = ap.parse_args()
    first, last = (int(x) for x in args.rows.split("-"))
    examples = load_gsm8k(args.data, last + 1).examples[first : last + 1]
    base = parse_ladder("counts", yaml.safe_load(LADDER)["counts"])
    ladder = Ladder.load(base, progress=False)
    prompts = [ladder.encode(e.prompt) for e in examples]
    target_ms = curve(args.target_ms)
    if args.record:
        record_target_rows(args.record)
    reference = None
    for text in args.config:
        name, spec = config(text, base)
        result = run(ladder, name, spec, prompts, target_ms, args.drafter_ratio, args.harvest_ms)
        outputs = result.pop("outputs")
        reference = reference or outputs
        result["same_as_first"] = outputs == reference
        result["rows"] = args.rows
        result["ar_ms_per_token"] = target_ms(1)
        result["speedup_vs_ar_est"] = round(target_ms(1) / result["est_ms_per_token"], 3)
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "kept"}), flush=True)
        print("  kept:", json.dumps(result["kept"]), flush=True)
    np.seterr()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
