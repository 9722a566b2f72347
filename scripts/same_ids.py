"""Token ids of the default ladder on the first GSM8K test questions, greedy and sampled with
a fixed seed, written to a JSON file and, with --compare, checked against an earlier file (the
architecture step's promise: the same ids before and after a change). Usage:

    python scripts/same_ids.py OUT.json [--limit 10] [--max-new-tokens 128] [--compare OLD.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import csdraft
from csdraft.bench.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args()
    ladder = csdraft.load()
    questions = load_dataset("gsm8k", limit=args.limit).examples
    out: dict[str, list[list[int]]] = {"greedy": [], "sampled": []}
    for mode, temperature in (("greedy", 0.0), ("sampled", args.temperature)):
        for q in questions:
            result = ladder.generate(q.prompt, args.max_new_tokens, temperature=temperature, seed=0)
            out[mode].append(result.token_ids)
            print(mode, len(result.token_ids), file=sys.stderr, flush=True)
    args.out.write_text(json.dumps(out))
    if args.compare:
        old = json.loads(args.compare.read_text())
        for mode in out:
            same = sum(a == b for a, b in zip(out[mode], old[mode], strict=True))
            print(f"{mode}: {same}/{len(out[mode])} prompts with identical ids")


if __name__ == "__main__":
    main()
