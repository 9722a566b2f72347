"""JSON-lines files (traces, prompt files): UTF-8 text, one JSON object per non-blank line,
every problem named by its line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator


class LineError(ValueError):
    """A line that cannot be read: ``line`` (from 1) and ``problem``."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


def decode_lines(raw: bytes) -> list[str]:
    """The lines of UTF-8 bytes (a LineError at the first byte that is not UTF-8)."""
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise LineError(line, f"not UTF-8 text (byte 0x{raw[e.start]:02x})") from None


def objects(lines: Iterable[str], what: str = "a JSON object") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line (a LineError for one that is not JSON or
    not ``what``)."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise LineError(n, f"not valid JSON ({e.msg})") from None
        if not isinstance(value, dict):
            raise LineError(n, f"expected {what}, got {line.strip():.60}")
        yield n, value
