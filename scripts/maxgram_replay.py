"""Prompt lookup replayed along ar's outputs: how many tokens a step Max-Gram's rules give.

Reads a `csdraft bench spec-bench --out FILE` results file (ar's ids per prompt) and the
Spec-Bench question file, and for each task and rule walks ar's output as prompt lookup would
(propose --block tokens, keep the matching prefix plus the target's own token), printing the
mean tokens per step and the share of steps whose first proposed token was right. Rules: the
shipped one (the first match in the prompt wins, then the most recent in the generated text),
no one-token matches, and the most recent match everywhere. Usage:

    python scripts/maxgram_replay.py spec.json --data question.jsonl [--block 10]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from csdraft.api import encode
from csdraft.bench.data import load_spec_bench
from csdraft.engine.maxgram import MaxGram
from csdraft.ladder import get_ladder
from csdraft.models.load import load_tokenizer


class LatestMatch(MaxGram):
    """Max-Gram where the most recent earlier match wins, in the prompt too."""

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            end = len(self.tokens) - 1
            self.tokens.append(int(token))
            for n in range(1, min(self.max_ngram, end + 1) + 1):
                self._index[tuple(self.tokens[end - n + 1 : end + 1])] = end


RULES: dict[str, Callable[[], MaxGram]] = {
    "first in prompt (shipped)": lambda: MaxGram(8, 1),
    "no 1-token matches": lambda: MaxGram(8, 2),
    "most recent": lambda: LatestMatch(8, 1),
}


def replay(maxgram: MaxGram, prompt: list[int], out: list[int], block: int) -> tuple[float, float]:
    """(tokens per step, share of steps whose first proposal was right) along ``out``."""
    maxgram.reset(prompt)
    t = steps = hits = 0
    while t < len(out):
        guess = maxgram.continuation(np.asarray(prompt + out[:t]), block)
        a = 0
        while a < len(guess) and t + a < len(out) and guess[a] == out[t + a]:
            a += 1
        hits += a > 0
        step = min(a + 1, len(out) - t)
        maxgram.commit(out[t : t + step])
        t, steps = t + step, steps + 1
    return len(out) / max(steps, 1), hits / max(steps, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a bench results JSON with ar_ids per prompt")
    parser.add_argument("--data", required=True, help="Spec-Bench question.jsonl")
    parser.add_argument("--block", type=int, default=10, help="tokens proposed a step")
    args = parser.parse_args()
    questions = {e.id: e.prompt for e in load_spec_bench(Path(args.data)).examples}
    tokenizer = load_tokenizer(get_ladder(None).target.ref, progress=False)
    with open(args.results) as f:
        results = json.load(f)
    table: dict[str, dict[str, list]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for p in results["prompts"]:
        prompt = encode(tokenizer, questions[str(p["id"])])
        for name, make in RULES.items():
            table[p.get("category") or "all"][name].append(
                replay(make(), prompt, p["ar_ids"], args.block)
            )
    print(f"{'task':16s}" + "".join(f"{name:>30s}" for name in RULES))
    for task, rows in table.items():
        means = [[statistics.fmean(col) for col in zip(*rows[n], strict=True)] for n in RULES]
        cells = [f"{step:.2f} tok/step, {hit:.0%} hit" for step, hit in means]
        print(f"{task:16s}" + "".join(f"{c:>30s}" for c in cells))


if __name__ == "__main__":
    main()
