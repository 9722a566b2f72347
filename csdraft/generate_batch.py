"""``csdraft generate --batch FILE``: many prompts through one loaded ladder, their passes
batched (``Ladder.generate_many``), one JSON result a line on stdout, in input order.

Each line of FILE (or of stdin when FILE is ``-``) is a JSON object: ``{"prompt": "..."}`` and,
optionally, its own ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed``,
``stop`` and ``raw`` over the command line's. Every line is checked before any model loads."""

from __future__ import annotations

import json
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from csdraft.api import Ladder
from csdraft.errors import UsageError
from csdraft.jsonl import LineError, decode_lines, objects
from csdraft.spec import LadderSpec

LINE_KEYS = ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "raw")
"""What one line may set."""


def read_requests(path: Path, spec: LadderSpec, raw: bool) -> list[dict[str, Any]]:
    """Each line's request for ``Ladder.generate_many``: its prompt, ``raw`` and its own spec
    (``spec`` with the line's settings, checked); a one-line UsageError naming the line."""
    where = "stdin" if str(path) == "-" else str(path)
    try:
        if where != "stdin":
            data = path.read_bytes()
        else:  # a text stream without bytes underneath (tests) is read as text
            stdin = getattr(sys.stdin, "buffer", sys.stdin)
            data = stdin.read()
            data = data.encode("utf-8") if isinstance(data, str) else data
    except OSError as e:
        raise UsageError(f"--batch {where}: cannot read it ({e.strerror})") from None
    requests = []
    try:
        for n, line in objects(decode_lines(data), "a JSON object with a 'prompt'"):
            if unknown := sorted(set(line) - set(LINE_KEYS)):
                raise LineError(n, f"unknown key(s) {unknown}; a line may set {list(LINE_KEYS)}")
            prompt = line.pop("prompt", None)
            if not isinstance(prompt, str) or not prompt.strip():
                raise LineError(n, "expected a non-empty 'prompt' string")
            line_raw = line.pop("raw", raw)
            if not isinstance(line_raw, bool):
                raise LineError(n, f"raw: expected true or false, got {line_raw!r}")
            line_spec = spec.with_generation(f"--batch {where} line {n}", **line)
            requests.append({"prompt": prompt, "raw": line_raw, "spec": line_spec})
    except LineError as e:
        raise UsageError(f"--batch {where}: {e}") from None
    if not requests:
        raise UsageError(f"--batch {where}: no prompts (one JSON object a line)")
    return requests


def run_batch(path: Path, spec: LadderSpec, concurrency: int, raw: bool, quiet: bool) -> int:
    """Load the ladder once, generate every line's request, ``concurrency`` at a time, and
    write one JSON result a line (as ``generate --json`` writes one) in input order, each as
    soon as it and those before it are done: an error or Ctrl-C keeps the lines written."""
    requests = read_requests(path, spec, raw)
    loaded = Ladder.load(spec, progress=not quiet)
    written = 0
    try:
        with closing(loaded.iter_many(requests, concurrency=concurrency)) as results:
            for result, request in zip(results, requests, strict=True):
                sys.stdout.write(json.dumps(result.as_json(request["spec"].name)) + "\n")
                sys.stdout.flush()
                written += 1
    except BaseException:
        print(f"csdraft: --batch: {written} of {len(requests)} results written", file=sys.stderr)
        raise
    return 0
