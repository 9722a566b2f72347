"""Replay target-only drafters (token recycling, Max-Gram, the two merged) along recorded greedy
outputs, from the target's own rows: counts and estimated time per token, no model run.

    python scripts/recycle_sim.py /tmp/rec.jsonl

Reads what ``scripts/cascade_counts.py --record`` wrote: each prompt, its output and, per
target review, the top-8 token ids of every row. The int8 target is batch-invariant, so a row
on the output's path is what any review at that position computes: which proposals the target
keeps follows from the output alone, and a recycling table fed the rows on the path
("verified rows only": a real run also learns from rows after refused tokens and from the
drafters' reviews) evolves as in a real run of that variant. Tables persist across prompts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from csdraft.engine.maxgram import MaxGram
from csdraft.engine.recycling import SuccessorTable
from csdraft.tune.costs import CostCurve

TARGET_MS = CostCurve([1, 4, 8, 12, 16], [76.5, 77, 116, 154, 201])
HARVEST_MS = 0.3  # per row: one top-k over the target's vocabulary


def load(path: str) -> list[tuple[list[int], list[int], dict[int, list[int]]]]:
    """Per prompt of the first recorded config: prompt, output, the target's row at each
    position of the output's path (top-8 ids)."""
    prompts, reviews, first = [], [], None
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if "top" in row:
            reviews.append(row)
            continue
        first = first or row["config"]
        if row["config"] == first:
            full = row["prompt"] + row["output"]
            at: dict[int, list[int]] = {}
            for r in reviews:
                for j, top in enumerate(r["top"]):
                    pos = r["at"] + j
                    if pos < len(full) and r["draft"][:j] == full[r["at"] : pos]:
                        at[pos] = top
            for pos in range(len(row["prompt"]), len(full)):
                assert at[pos][0] == full[pos], "a row on the path disagrees with the output"
            prompts.append((row["prompt"], row["output"], at))
        reviews = []
    return prompts


def simulate(prompts, make: Callable[[], tuple], block: int, tree: int = 1) -> dict:
    """Target-only greedy decoding with a drafter built by ``make`` (-> table or None,
    copier or None) proposing ``block`` tokens (plus ``tree - 1`` first-token siblings)."""
    table, copier = make()
    tokens = passes = 0
    ms = 0.0
    each = []
    for prompt, output, at in prompts:
        before = passes
        full = prompt + output
        if copier is not None:
            copier.reset(prompt)
        pos = len(prompt)
        while pos < len(full):
            n = min(block, len(full) - pos - 1)
            chain = copier.continuation(full[:pos], n) if copier is not None else []
            if table is not None:
                chain += table.walk(chain[-1] if chain else full[pos - 1], n - len(chain))
            draft = list(chain)
            accepted = 0
            while accepted < len(chain) and chain[accepted] == full[pos + accepted]:
                accepted += 1
            if tree > 1 and table is not None and chain and accepted == 0:
                for first in table.successors(full[pos - 1])[1:tree]:
                    branch = [int(first), *table.walk(int(first), n - 1)]
                    draft += branch
                    k = 0
                    while k < len(branch) and branch[k] == full[pos + k]:
                        k += 1
                    accepted = max(accepted, k)
            fed = len(draft) + 1
            ms += TARGET_MS(fed) + (HARVEST_MS * fed if table is not None else 0.0)
            if table is not None:  # the rows on the path this review computed
                rows = np.asarray([at[pos + j] for j in range(accepted + 1)], dtype=np.int32)
                table.rows[np.asarray(full[pos - 1 : pos + accepted]), :] = rows[:, : table.k]
            if copier is not None:
                copier.commit(full[pos : pos + accepted + 1])
            passes += 1
            tokens += accepted + 1
            pos += accepted + 1
        each.append(round(len(output) / (passes - before), 2))
    return {
        "tokens_per_target_forward": round(tokens / passes, 3),
        "est_ms_per_token": round(ms / tokens, 2),
        "speedup_vs_ar_est": round(TARGET_MS(1) * tokens / ms, 3),
        "tokens_per_target_forward_by_prompt": each,
    }


def table() -> SuccessorTable:
    t = SuccessorTable(8)
    t.rows = np.full((151936, 8), -1, dtype=np.int32)
    return t


def main() -> None:
    prompts = load(sys.argv[1])
    print(f"{len(prompts)} prompts, {sum(len(o) for _, o, _ in prompts)} tokens")
    configs: dict[str, tuple[Callable[[], tuple], int, int]] = {}
    for b in (1, 2, 3, 4, 5, 7, 10):
        configs[f"pld (Max-Gram) {b}"] = (lambda: (None, MaxGram(8, 1)), b, 1)
        configs[f"recycle {b}"] = (lambda: (table(), None), b, 1)
        for m in (2, 3):
            configs[f"recycle+copy{m} {b}"] = (lambda m=m: (table(), MaxGram(8, m)), b, 1)
    for b in (2, 3):
        for branches in (2, 3):
            configs[f"recycle {b} tree {branches}"] = (lambda: (table(), None), b, branches)
    for name, (make, block, tree) in configs.items():
        print(name, json.dumps(simulate(prompts, make, block, tree)))


if __name__ == "__main__":
    main()
