"""Load test for `csdraft serve`: N concurrent clients send M requests (greedy and seeded
sampling mixed, some streamed, some that disconnect early), then every completed request is
sent again alone and its token ids compared with the concurrent run's (one short request warms
the server up before either run). Reports errors, p50/p95 latency, throughput and the server's
memory (from /metrics) before, after the load, and after the solo run. The server's stored
prompt prefixes are forgotten before each of the two runs (POST /reset_prefix_cache), so neither
copies prompt rows the other computed (--keep-prefix-cache: left as they are).

    csdraft serve &            # or: csdraft serve -c tiny.yaml
    python scripts/loadtest.py --clients 8 --requests 40 --max-tokens 64

Exit status 1 when a request failed unexpectedly or an output differs from its solo twin.
Needs httpx (the test extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from csdraft.bench.concurrency import percentile

PROMPTS = [
    "Write a Python function that reverses a string.",
    "Explain what a hash map is in two sentences.",
    "Write a SQL query that counts the rows of a table named users.",
    "A shop sells pens at 3 dollars each. How much do 7 pens cost? Answer with the number.",
    "Write a bash one-liner that counts the lines of every .py file in a folder.",
    "What is the difference between a list and a tuple in Python?",
    "Write a JavaScript function that returns the largest number in an array.",
    "Name three sorting algorithms and their average time complexity.",
]


@dataclass
class Outcome:
    """One request of the load: what was sent and what came back."""

    index: int
    body: dict[str, Any]
    disconnect: bool
    status: int | None = None
    error: str = ""
    latency_s: float = 0.0
    token_ids: list[int] = field(default_factory=list)
    solo_ids: list[int] | None = None


def plan(
    count: int,
    model: str,
    max_tokens: int,
    disconnect_every: int,
    raw: bool = False,
    greedy: bool = False,
) -> list[Outcome]:
    """The requests: alternately greedy and seeded sampling (all greedy when ``greedy``), every
    third streamed, every ``disconnect_every``-th a stream the client abandons after its first
    chunk; chat requests, or raw-text completions when ``raw``."""
    out = []
    for i in range(count):
        text = PROMPTS[i % len(PROMPTS)]
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
        if raw:
            body["prompt"] = text
        else:
            body["messages"] = [{"role": "user", "content": text}]
        if i % 2 and not greedy:
            body.update(temperature=0.8, top_p=0.95, seed=i)
        disconnect = disconnect_every > 0 and i % disconnect_every == disconnect_every - 1
        if disconnect or i % 3 == 0:
            body["stream"] = True
        out.append(Outcome(i, body, disconnect))
    return out


def path(job: Outcome) -> str:
    return "/v1/completions" if "prompt" in job.body else "/v1/chat/completions"


def send(client: httpx.Client, job: Outcome) -> Outcome:
    """Send one request (streamed or not) and record its outcome."""
    start = time.perf_counter()
    try:
        if job.body.get("stream"):
            with client.stream("POST", path(job), json=job.body) as r:
                job.status = r.status_code
                if r.status_code != 200:
                    r.read()
                    job.error = r.text[:200]
                    return job
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if job.disconnect:
                        return job  # leaving the block closes the connection
                    data = line.removeprefix("data: ")
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        job.error = chunk["error"]["message"]
                    if "csdraft" in chunk:
                        job.token_ids = chunk["csdraft"]["token_ids"]
        else:
            r = client.post(path(job), json=job.body)
            job.status = r.status_code
            if r.status_code == 200:
                job.token_ids = r.json()["csdraft"]["token_ids"]
            else:
                job.error = r.text[:200]
    except httpx.HTTPError as e:
        job.error = f"{type(e).__name__}: {e}"
    finally:
        job.latency_s = time.perf_counter() - start
    return job


def metric(client: httpx.Client, name: str) -> float | None:
    """One unlabelled sample of /metrics (None when absent)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def ready_model(client: httpx.Client, wait_s: float = 600.0) -> str | None:
    """The served model's id once the server answers (it loads its ladder first: 503 until
    then), or None if it never does within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            reply = client.get("/v1/models")
            if reply.status_code == 200:
                return reply.json()["data"][0]["id"]
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(1.0)
    return None


def forget_prefixes(client: httpx.Client, keep: bool) -> None:
    """Empty the server's prompt prefix store unless ``keep``; exit 2 if it cannot."""
    if not keep:
        reply = client.post("/reset_prefix_cache")
        if reply.status_code != 200:
            sys.exit(f"loadtest: POST /reset_prefix_cache answered {reply.status_code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--disconnect-every", type=int, default=7, help="0: none disconnects")
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--completions", action="store_true", help="Raw-text /v1/completions instead of chat."
    )
    parser.add_argument(
        "--greedy", action="store_true", help="Every request greedy (no seeded sampling)."
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds per request.")
    parser.add_argument(
        "--keep-prefix-cache",
        action="store_true",
        help="Leave the server's stored prompt prefixes between the two runs (the solo run then "
        "copies the prompts the load computed).",
    )
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client:
        model = ready_model(client)
        if model is None:
            print(f"loadtest: no server ready at {args.url} within 10 minutes", file=sys.stderr)
            return 2
        rss_before = metric(client, "process_resident_memory_bytes")
        cancelled_before = metric(client, "csdraft_cancelled_total") or 0.0
        jobs = plan(
            args.requests,
            model,
            args.max_tokens,
            args.disconnect_every,
            args.completions,
            args.greedy,
        )
        warm = plan(1, model, 8, 0, args.completions, True)[0]  # first passes are slower
        if send(client, warm).error:
            print(f"loadtest: the warm-up request failed: {warm.error}", file=sys.stderr)
            return 2
        forget_prefixes(client, args.keep_prefix_cache)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda job: send(client, job), jobs))
        load_s = time.perf_counter() - start
        time.sleep(0.5)  # let the server notice the last disconnects
        rss_load = metric(client, "process_resident_memory_bytes")
        cancelled = (metric(client, "csdraft_cancelled_total") or 0.0) - cancelled_before
        done = [j for j in jobs if not j.disconnect and not j.error and j.status == 200]
        forget_prefixes(client, args.keep_prefix_cache)
        solo_start = time.perf_counter()
        for job in done:  # the solo twins: the same request alone
            twin = send(client, Outcome(job.index, {**job.body, "stream": False}, False))
            job.solo_ids = None if twin.error else twin.token_ids
        solo_s = time.perf_counter() - solo_start
        rss_after = metric(client, "process_resident_memory_bytes")
    errors = [j for j in jobs if (j.error or j.status != 200) and not j.disconnect]
    mismatches = [j.index for j in done if j.token_ids != j.solo_ids]
    latencies = [j.latency_s for j in done]
    tokens = sum(len(j.token_ids) for j in done)

    def mib(b: float | None) -> float | None:
        return round(b / 2**20, 1) if b is not None else None

    report = {
        "server": args.url,
        "model": model,
        "clients": args.clients,
        "requests": len(jobs),
        "completed": len(done),
        "disconnected_on_purpose": sum(j.disconnect for j in jobs),
        "cancelled_by_server": cancelled,
        "errors": [{"request": j.index, "status": j.status, "error": j.error} for j in errors],
        "mismatches_with_solo": mismatches,
        "latency_p50_s": round(percentile(latencies, 0.5), 3) if latencies else 0.0,
        "latency_p95_s": round(percentile(latencies, 0.95), 3) if latencies else 0.0,
        "wall_s": round(load_s, 2),
        "throughput_tokens_per_s": round(tokens / load_s, 2) if load_s else None,
        "throughput_requests_per_s": round(len(done) / load_s, 3) if load_s else None,
        "solo_wall_s": round(solo_s, 2),
        "solo_throughput_tokens_per_s": round(tokens / solo_s, 2) if solo_s else None,
        "throughput_vs_solo": round(solo_s / load_s, 2) if load_s and done else None,
        "prefix_cache": "kept" if args.keep_prefix_cache else "emptied before each run",
        "rss_mib": {
            "before": mib(rss_before),
            "after_load": mib(rss_load),
            "after_solo": mib(rss_after),
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:28} {value}")
    return 1 if errors or mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
