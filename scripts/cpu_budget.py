"""Where a generated token's time goes, from a `csdraft bench --out` file, and what this CPU's
memory bandwidth allows.

    python scripts/cpu_budget.py RESULTS.json [--bandwidth]

For every method in the file: milliseconds per generated token (all prompts together) in the
prompt passes, in each model's decoding passes, and in the engine around them (wall time less
all forward passes), with each model's passes per token and mean milliseconds per pass.
`--bandwidth` also times a read of a large tensor with 1 and with all threads (best of 7): a
memory-bound pass cannot take less than its weights' bytes over that rate.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path


def per_token(results: dict) -> dict[str, dict]:
    """Method -> time split per generated token (ms) over all prompts of a bench results file."""
    totals: dict[str, dict] = defaultdict(
        lambda: {"tokens": 0, "wall": 0.0, "prompt": 0.0, "decode": defaultdict(float),
                 "passes": defaultdict(int)}
    )
    for prompt in results["prompts"]:
        for name, r in prompt["results"].items():
            if "wall_s" not in r or not r.get("new_tokens"):
                continue
            t = totals[name]
            t["tokens"] += r["new_tokens"]
            t["wall"] += r["wall_s"]
            prompt_pass = r.get("prompt_pass_s") or {}
            t["prompt"] += sum(prompt_pass.values())
            for model, seconds in (r.get("forward_s") or {}).items():
                t["decode"][model] += seconds - prompt_pass.get(model, 0.0)
                t["passes"][model] += r["forwards"][model] - (model in prompt_pass)
    out = {}
    for name, t in totals.items():
        ms = 1000.0 / t["tokens"]
        decode = {m: s * ms for m, s in t["decode"].items()}
        out[name] = {
            "tokens": t["tokens"],
            "ms_per_token": t["wall"] * ms,
            "prompt_ms": t["prompt"] * ms,
            "decode_ms": decode,
            "engine_ms": t["wall"] * ms - t["prompt"] * ms - sum(decode.values()),
            "passes_per_token": {m: n / t["tokens"] for m, n in t["passes"].items()},
            "ms_per_pass": {
                m: 1000.0 * t["decode"][m] / n for m, n in t["passes"].items() if n
            },
        }
    return out


def read_bandwidth(threads: int, gib: float = 1.0, repeats: int = 7) -> float:
    """GB/s of summing a ``gib`` GiB float32 tensor with ``threads`` threads (best of repeats)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--bandwidth", action="store_true")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    machine = results.get("machine", {})
    print(f"machine: {machine.get('cpu')} ({machine.get('vector_isa')}), "
          f"{machine.get('cpu_count')} cores, torch {machine.get('torch')}")
    for name, b in per_token(results).items():
        parts = [f"prompt {b['prompt_ms']:.1f}"]
        parts += [
            f"{m} {ms:.1f} ({b['passes_per_token'][m]:.2f} passes/token, "
            f"{b['ms_per_pass'].get(m, 0.0):.1f} ms/pass)"
            for m, ms in b["decode_ms"].items()
        ]
        parts.append(f"engine {b['engine_ms']:.1f}")
        print(f"{name}: {b['ms_per_token']:.1f} ms/token = " + " + ".join(parts))
    if args.bandwidth:
        import os

        for threads in sorted({1, os.cpu_count() or 1}):
            print(f"read bandwidth, {threads} thread(s): {read_bandwidth(threads):.1f} GB/s")


if __name__ == "__main__":
    main()
