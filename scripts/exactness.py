"""Compare `csdraft generate --json` with transformers' own greedy decoding of the target.

For each prompt: the ids from the CLI (a fresh process, default ladder), transformers'
`generate` of the same target with batch size 1 (the reference), and the same `generate`
with the prompt twice in a batch of 2. At any divergence it prints the target's top-2 logit
margin there, so a bf16 near-tie is told apart from a bug. Usage:

    python scripts/exactness.py [--max-new-tokens 128] [--gsm8k ../shared/datasets/gsm8k/test.jsonl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

import csdraft
from csdraft.exactness import first_divergence, top2_margin

PROMPTS = [
    "Write a Python function that merges two sorted lists into one sorted list, with a docstring.",
    "Explain the difference between a process and a thread in four sentences.",
    "Write a SQL query that returns the five customers with the highest total order value.",
]
GSM8K_ROWS = (300, 650, 1001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    default_gsm8k = Path(__file__).parents[2] / "shared/datasets/gsm8k/test.jsonl"
    parser.add_argument("--gsm8k", type=Path, default=default_gsm8k)
    args = parser.parse_args()
    prompts = list(PROMPTS)
    if args.gsm8k.exists():
        rows = args.gsm8k.read_text().splitlines()
        prompts += [json.loads(rows[i])["question"] for i in GSM8K_ROWS]

    ladder = csdraft.load()
    target = ladder.target.model
    pad = ladder.tokenizer.pad_token_id
    options = dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=False,
        eos_token_id=ladder.eos_ids,
        pad_token_id=pad,
        top_k=None,
        top_p=None,
        temperature=None,
    )

    def greedy(ids: list[int], batch: int) -> list[int]:
        with torch.inference_mode():
            out = target.generate(torch.tensor([ids] * batch), **options)[0, len(ids) :].tolist()
        return out[: out.index(pad)] if pad in out else out

    counts = {"csdraft": 0, "transformers batch 2": 0}
    for prompt in prompts:
        command = [
            sys.executable,
            "-m",
            "csdraft.cli",
            "generate",
            "--json",
            "-n",
            str(args.max_new_tokens),
            "-p",
            prompt,
        ]
        cli = subprocess.run(command, capture_output=True, text=True, check=True)
        ids = ladder.encode(prompt)
        reference = greedy(ids, 1)
        outputs = {
            "csdraft": json.loads(cli.stdout)["token_ids"],
            "transformers batch 2": greedy(ids, 2),
        }
        for name, got in outputs.items():
            at = first_divergence(got, reference)
            if at is None:
                counts[name] += 1
                print(f"{name}: identical ({len(got)} tokens): {prompt[:50]!r}", flush=True)
            else:
                margin = top2_margin(ladder.target, ids + reference[:at])
                print(
                    f"{name}: differs, top-2 margin {margin:.4f} at token {at}: {prompt[:50]!r}",
                    flush=True,
                )
    for name, same in counts.items():
        print(f"{name}: {same}/{len(prompts)} identical to transformers' greedy decoding (batch 1)")


if __name__ == "__main__":
    main()
