"""Prompt prefixes shared across requests: the keys and values a model computed over recent
prompts, by their tokens. A fresh session whose first tokens match a stored prompt's copies
those rows into its own cache instead of computing them again (a chat template's system prompt,
a benchmark's instruction, a server's shared preamble).

Copied rows are what a pass would compute only where the rows of a pass never depend on what
else it holds: a batch-invariant model (the int8 target), or a drafter whose rounding cannot
reach the output (a greedy, lossless request's). Which sessions use a store is decided with
which share passes (``pooled.shares_passes``), so a request's text never depends on what ran
before it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from csdraft.engine.proposer import common_prefix

Rows = list[tuple[torch.Tensor, torch.Tensor]]
"""Each cache layer's keys and values [batch, kv heads, tokens, dim]."""


@dataclass
class PrefixCounts:
    """What a store did: sessions that found a stored prefix, rows they copied, prompts kept."""

    hits: int = 0
    rows: int = 0
    stored: int = 0


class PrefixStore:
    """The cache rows of one model's recent prompts (least recently used dropped first, at most
    ``max_bytes``), shared by the sessions given it. Thread-safe."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.counts = PrefixCounts()
        self._lock = threading.Lock()
        self._entries: list[tuple[np.ndarray, Rows]] = []  # most recently used last

    def find(self, seq: np.ndarray, most: int) -> tuple[int, Rows]:
        """The longest stored prefix of ``seq``, at most ``most`` tokens: its length and rows
        (views of the stored ones: copy them); (0, []) when none matches."""
        with self._lock:
            best, length = -1, 0
            for i, (tokens, _) in enumerate(self._entries):
                n = min(common_prefix(tokens, seq), most)
                if n > length:
                    best, length = i, n
            if best < 0:
                return 0, []
            entry = self._entries.pop(best)
            self._entries.append(entry)
            self.counts.hits += 1
            self.counts.rows += length
            return length, [(k[..., :length, :], v[..., :length, :]) for k, v in entry[1]]

    def add(self, tokens: np.ndarray, layers: Rows) -> None:
        """Keep a copy of ``layers``' first ``len(tokens)`` rows, the cache of ``tokens``
        (unless a stored prompt already holds them all)."""
        n = len(tokens)
        size = sum(k[..., :n, :].nbytes + v[..., :n, :].nbytes for k, v in layers)
        if n == 0 or size > self.max_bytes:
            return
        with self._lock:
            if any(common_prefix(t, tokens) == n for t, _ in self._entries):
                return
        rows = [(k[..., :n, :].clone(), v[..., :n, :].clone()) for k, v in layers]
        with self._lock:
            # a stored prompt that this one extends is dropped: its rows are this one's first
            self._entries = [e for e in self._entries if common_prefix(e[0], tokens) < len(e[0])]
            self._entries.append((tokens.copy(), rows))
            self.counts.stored += 1
            while sum(_nbytes(r) for _, r in self._entries) > self.max_bytes:
                self._entries.pop(0)

    def clear(self) -> None:
        """Forget every stored prompt."""
        with self._lock:
            self._entries.clear()


def _nbytes(rows: Rows) -> int:
    return sum(k.nbytes + v.nbytes for k, v in rows)
