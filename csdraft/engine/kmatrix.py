"""The k-matrix: parsing, checks, the block each reviewer checks, its words, and its variants.

With D drafting rungs below the target (ladder order: neural drafters largest first, then any
other proposers such as Max-Gram), the k-matrix is D x D and upper-triangular: row r belongs to
reviewer r (row 0 is the target), column c to drafter c + 1. Reviewer r's block is filled left
to right: drafter r + 1 proposes k[r][r] tokens, then drafter r + 2 proposes k[r][r + 1] more,
and so on (at most the block's limit in all). A proposer that returns fewer tokens than asked
ends the block: later tokens would follow a draft the reviewer is about to refuse. A neural
drafter writes its segment by reviewing blocks built the same way from its own row (the
vertical cascade); one whose row is all zeros or missing decodes autoregressively.

This module is the only place that rule is written: the engine, the ladder's checks, tune's
predictions, inspect and bench all call it.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Sequence

KMatrix = tuple[tuple[int, ...], ...]

MAX_SIZE = 16
"""The most drafting rungs a k-matrix may describe (a parse limit, far above any real ladder)."""
MAX_ENTRY = 1024
"""The largest entry: tokens one drafter may contribute to one block."""
MAX_TEXT = 4096
"""The longest k-matrix text ``parse`` reads."""


class KMatrixError(ValueError):
    """A k-matrix that cannot be read or does not fit its ladder (one line)."""


def parse(text: str) -> list[list[int]]:
    """Read '[[13,10],[0,10]]' (JSON) or '13,10;0,10' (rows split by ';')."""
    text = text.strip()
    hint = "write it as '[[13,10],[0,10]]' or '13,10;0,10'"
    if len(text) > MAX_TEXT:
        raise KMatrixError(f"k-matrix text is {len(text)} characters long; {hint}")
    try:
        if text.startswith("["):
            if text.count("[") > MAX_SIZE + 1:  # deeper or larger than any k-matrix
                raise KMatrixError(
                    f"cannot read k-matrix {text[:40]!r}...: nested too deep; {hint}"
                )
            value = json.loads(text)
        else:
            value = [[int(v) for v in row.split(",")] for row in text.split(";") if row.strip()]
    except (ValueError, RecursionError) as e:
        if isinstance(e, KMatrixError):
            raise
        raise KMatrixError(f"cannot read k-matrix {text[:60]!r}; {hint}") from None
    return value


def check(value: object, reviewers: Sequence[str], drafters: Sequence[str]) -> KMatrix:
    """``value`` (a nested list, or text for ``parse``) checked against a ladder whose
    reviewers and drafting rungs have these names: D x D, upper-triangular, integers in
    0..MAX_ENTRY. Raises ``KMatrixError`` naming the expected shape."""
    d = len(drafters)
    expect = (
        f"expected a {d}x{d} upper-triangular matrix of non-negative integers "
        f"(rows: reviewers {', '.join(reviewers[:d]) or '-'}; columns: drafters "
        f"{', '.join(drafters) or 'none'})"
    )
    if isinstance(value, str):
        value = parse(value)
    if not isinstance(value, list | tuple) or len(value) != d:
        raise KMatrixError(f"k_matrix: {expect}, got {_short(value)}")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, list | tuple) or len(row) != d:
            raise KMatrixError(f"k_matrix row {i + 1}: {expect}, got {_short(row)}")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ENTRY:
                raise KMatrixError(
                    f"k_matrix[{i}][{j}] = {_short(v)}: entries must be integers in 0..{MAX_ENTRY}"
                )
            if j < i and v != 0:
                raise KMatrixError(
                    f"k_matrix[{i}][{j}] = {v}: {expect} (entries below the diagonal must be 0)"
                )
        rows.append(tuple(row))
    return tuple(rows)


def _short(value: object, limit: int = 60) -> str:
    """A bounded repr (depth and length), safe on deeply nested input."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def segments(k: Sequence[Sequence[int]], reviewer: int, limit: int) -> list[tuple[int, int]]:
    """The (drafter, tokens) segments of the block ``reviewer`` checks, in order, at most
    ``limit`` tokens in all; drafters are ladder indices (column c is rung c + 1)."""
    if reviewer >= len(k):
        return []
    out, total = [], 0
    for col in range(reviewer, len(k)):
        n = min(k[reviewer][col], limit - total)
        if n > 0:
            out.append((col + 1, n))
            total += n
    return out


def block_length(k: Sequence[Sequence[int]], reviewer: int) -> int:
    """Tokens in a full block of ``reviewer`` (0 when it has no row: it drafts alone)."""
    return sum(k[reviewer][reviewer:]) if reviewer < len(k) else 0


def first_drafter(k: Sequence[Sequence[int]], reviewer: int) -> int | None:
    """The rung that drafts the first segment of ``reviewer``'s block (None: it drafts alone)."""
    first = segments(k, reviewer, block_length(k, reviewer))
    return first[0][0] if first else None


def explain(k: Sequence[Sequence[int]], names: Sequence[str], neural: Sequence[bool]) -> list[str]:
    """The k-matrix in words, one line per reviewing rung, then every neural rung that drafts
    autoregressively. ``names`` and ``neural`` describe every rung in ladder order."""
    lines = []
    for r, row in enumerate(k):
        total = sum(row[r:])
        if total == 0:
            lines.append(f"{names[r]} decodes one token per forward pass (no drafts)")
            continue
        parts, pos = [], 0
        for c in range(r, len(row)):
            if row[c]:
                first, last = pos + 1, pos + row[c]
                span = f"token {first}" if first == last else f"tokens {first}-{last}"
                parts.append(f"{span} from {names[c + 1]}")
                pos = last
        verb = "reviews" if r == 0 else "writes its drafts by reviewing"
        lines.append(f"{names[r]} {verb} blocks of {total}: " + ", ".join(parts))
    for i in range(len(k), len(names)):
        if neural[i]:
            lines.append(f"{names[i]} drafts autoregressively (one forward pass per token)")
    return lines


def text(k: Sequence[Sequence[int]]) -> str:
    """'4,2;0,6' (the form ``--k-matrix`` reads); '-' for an empty matrix."""
    return ";".join(",".join(str(v) for v in row) for row in k) or "-"


# ------------------------------------------------------------------------------ variants


def vertical(k: Sequence[Sequence[int]]) -> list[list[int]]:
    """Only the diagonal: each reviewer's block comes whole from the rung right below it. A row
    whose diagonal is 0 keeps its block length (its row sum) on the diagonal."""
    n = len(k)
    return [
        [(k[r][r] or sum(k[r][r:]) or sum(k[0])) if c == r else 0 for c in range(n)]
        for r in range(n)
    ]


def horizontal(k: Sequence[Sequence[int]]) -> list[list[int]]:
    """Only the target's row: its block mixes drafters, and every neural drafter writes its
    segment autoregressively (rows below zeroed)."""
    return [list(k[0])] + [[0] * len(k) for _ in k[1:]]


def used_rungs(k: Sequence[Sequence[int]]) -> set[int]:
    """The drafting rungs (ladder indices) a k-matrix ever calls, from the target's row down."""
    used: set[int] = set()
    stack = [0]
    while stack:
        r = stack.pop()
        if r >= len(k):
            continue
        for c in range(r, len(k)):
            if k[r][c] > 0 and c + 1 not in used:
                used.add(c + 1)
                stack.append(c + 1)
    return used


def canonical(k: Sequence[Sequence[int]]) -> KMatrix | None:
    """``k`` with the rows of rungs it never calls zeroed (the same cascade), or None when the
    target's row is empty (that is plain autoregressive decoding)."""
    used = used_rungs(k)
    if not used:
        return None
    return tuple(
        tuple(int(v) if (r == 0 or r in used) else 0 for v in row) for r, row in enumerate(k)
    )


def sub_ladder(k: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """The drafting rungs a k-matrix really uses (ladder indices, in order) and the k-matrix
    over just the target and those rungs."""
    kept = sorted(used_rungs(k))
    old = [0, *kept]
    size = len(kept)
    return kept, [[int(k[old[i]][old[j + 1] - 1]) for j in range(size)] for i in range(size)]


def family(k: Sequence[Sequence[int]]) -> str:
    """'vertical' (all entries on the diagonal, some inner row used), 'horizontal' (only the
    target's row, mixing drafters), 'single' (one drafter for the target, nothing below) or
    'combined'."""
    cells = [(r, c) for r, row in enumerate(k) for c, v in enumerate(row) if v > 0]
    diagonal = all(r == c for r, c in cells)
    top_only = all(r == 0 for r, _ in cells)
    if diagonal and top_only:
        return "single"
    if diagonal:
        return "vertical"
    if top_only:
        return "horizontal"
    return "combined"


def is_vertical(k: Sequence[Sequence[int]]) -> bool:
    """Only diagonal entries (each reviewer's block from the rung right below it)."""
    return all(v == 0 for r, row in enumerate(k) for c, v in enumerate(row) if c != r)


def is_horizontal(k: Sequence[Sequence[int]]) -> bool:
    """Only the target's row (every neural drafter decodes autoregressively)."""
    return all(v == 0 for row in k[1:] for v in row)
