"""Check a running `csdraft serve` against `csdraft generate --json`: for each prompt, the
official openai client's chat completion, whole and streamed, must carry the token ids that
`csdraft generate --json` gives for the same prompt and settings (greedy by default).

    csdraft serve &
    python scripts/serve_vs_generate.py --max-tokens 64            # 5 held-out prompts
    python scripts/serve_vs_generate.py --prompts prompts.txt      # one prompt a line

Prints one line per prompt and exits 1 on any difference. Needs the openai package (the test
extra); `generate` loads the ladder once per prompt.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

PROMPTS = [
    "Write a Python class for a queue with enqueue, dequeue and a size method.",
    "Write a function in Go that returns the n-th Fibonacci number iteratively.",
    "Explain in three sentences what a race condition is, with an example.",
    "A train leaves at 9:40 and arrives at 13:15. How long is the trip in minutes?",
    "Tom has 3 boxes of 12 apples and gives away 17 apples. How many are left?",
]


def served(client, model: str, prompt: str, settings: dict) -> tuple[list[int], list[int]]:
    """The token ids of the whole and of the streamed answer."""
    messages = [{"role": "user", "content": prompt}]
    whole = client.chat.completions.create(model=model, messages=messages, **settings)
    chunks = list(
        client.chat.completions.create(model=model, messages=messages, stream=True, **settings)
    )
    streamed = next(c.model_extra["csdraft"] for c in chunks if "csdraft" in c.model_extra)
    return whole.model_extra["csdraft"]["token_ids"], streamed["token_ids"]


def generated(prompt: str, args: argparse.Namespace) -> list[int]:
    command = [sys.executable, "-m", "csdraft.cli", "generate", "-p", prompt, "--json", "-q"]
    command += ["-n", str(args.max_tokens)]
    command += ["-l", args.ladder] if args.ladder else []
    command += ["-c", args.config] if args.config else []
    command += ["--temperature", str(args.temperature), "--seed", str(args.seed)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["token_ids"]


def main() -> int:
    from openai import OpenAI

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="-")
    parser.add_argument("--ladder", default=None, help="The ladder the server runs (-l).")
    parser.add_argument("--config", default=None, help="The ladders' YAML file it reads (-c).")
    parser.add_argument("--prompts", default=None, help="A file of prompts, one a line.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prompts = PROMPTS
    if args.prompts:
        with open(args.prompts, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    client = OpenAI(base_url=args.url + "/v1", api_key=args.api_key, timeout=3600)
    model = client.models.list().data[0].id
    settings = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    failed = 0
    for i, prompt in enumerate(prompts):
        whole, streamed = served(client, model, prompt, settings)
        reference = generated(prompt, args)
        same = whole == reference and streamed == reference
        failed += not same
        print(
            f"prompt {i + 1}: {len(reference)} tokens; whole {'==' if whole == reference else '!='}"
            f" generate, streamed {'==' if streamed == reference else '!='} generate"
        )
    print(f"{len(prompts) - failed}/{len(prompts)} prompts identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
