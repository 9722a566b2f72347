"""Token recycling: a drafter made of the logits the models already computed.

Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large Language Models with
Token Recycling" (ACL 2025). Every review pass scores a row of logits after each token it
feeds; the top-k of each row are the tokens that pass thought likeliest after that token. An
adjacency table keeps, per token, the top-k successors from the last row seen after it, and a
draft walks the table from the last context token (top-1 each step: a chain; with ``branches``
> 1 the first token's runners-up become siblings, each continued by its own top-1 walk).

Training-free, no extra pass: the cascade hands every review's logits to ``harvest`` (one topk
over the rows the pass already computed). The table may outlive a generation (``persist``): it
only changes drafts, never the output, and drafts are deterministic (one-hot for sampling).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import torch

from csdraft.engine.draft import Draft
from csdraft.engine.maxgram import MaxGram
from csdraft.engine.proposer import Engine, Proposer


class SuccessorTable:
    """Per token id, its ``k`` likeliest successors (int32, -1 where none was seen yet),
    allocated at the first harvest (when the vocabulary's width is known)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.rows: np.ndarray | None = None

    def update(self, tokens: Sequence[int], logits: torch.Tensor) -> None:
        """Row ``i`` of ``logits`` scored what follows ``tokens[i]``: keep its top-k there
        (a later row for the same token replaces an earlier one)."""
        n = min(len(tokens), logits.shape[0])
        if n == 0:
            return
        width = logits.shape[-1]
        if self.rows is None or self.rows.shape[0] < width:
            grown = np.full((width, self.k), -1, dtype=np.int32)
            if self.rows is not None:
                grown[: self.rows.shape[0]] = self.rows
            self.rows = grown
        k = min(self.k, width)
        top = torch.topk(logits[:n], k, dim=-1).indices.numpy().astype(np.int32)
        self.rows[np.asarray(tokens[:n], dtype=np.int64), :k] = top

    def successors(self, token: int) -> np.ndarray:
        """The successors kept for ``token`` (likeliest first; empty when none)."""
        if self.rows is None or not 0 <= token < self.rows.shape[0]:
            return np.empty(0, dtype=np.int32)
        row = self.rows[token]
        return row[row >= 0]

    def walk(self, token: int, n: int) -> list[int]:
        """Up to ``n`` tokens following ``token``, each the first successor of the one before."""
        out: list[int] = []
        rows = self.rows
        if rows is None:
            return out
        while len(out) < n and 0 <= token < rows.shape[0]:
            token = int(rows[token, 0])
            if token < 0:
                break
            out.append(token)
        return out


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Persistent tables: per loaded target model, per (rung name, k)."""


def shared_table(owner: object, name: str, k: int, persist: bool = True) -> SuccessorTable:
    """The table a recycling rung called ``name`` keeps for the target ``owner`` in this
    process (a fresh one when not ``persist`` or ``owner`` is None or not weakly referable),
    so that successive generations over the same loaded target learn from each other."""
    if not persist or owner is None:
        return SuccessorTable(k)
    try:
        tables = _TABLES.setdefault(owner, {})
    except TypeError:
        return SuccessorTable(k)
    return tables.setdefault((name, k), SuccessorTable(k))


class Recycling(Proposer):
    """Proposes by walking a ``SuccessorTable`` harvested from every review's logits.

    ``successors``: the table's k (top-k kept per token); ``branches``: siblings of the first
    drafted token (a token tree: its reviewer must score trees); ``persist``: keep the table
    across generations (else it starts empty with every prompt); ``harvest_drafters``: also
    learn from the drafters' reviews (else from the target's only); ``copy_ngram`` > 0: where
    the context ends with an earlier n-gram of at least that many tokens, copy what followed
    it first (Max-Gram's rule), then walk the table on from the copy's end."""

    name = "recycle"
    wants_logits = True
    """The cascade hands this proposer every review's logits (``harvest``)."""

    def __init__(
        self,
        successors: int = 8,
        branches: int = 1,
        persist: bool = True,
        harvest_drafters: bool = True,
        table: SuccessorTable | None = None,
        copy_ngram: int = 0,
    ) -> None:
        self.copier = MaxGram(max(8, copy_ngram), copy_ngram) if copy_ngram else None
        self.branches = branches
        self.persist = persist
        self.harvest_drafters = harvest_drafters
        self.table = table if table is not None else SuccessorTable(max(successors, branches))

    @property
    def proposes_trees(self) -> bool:
        """Whether drafts branch (a reviewer of this rung then scores trees)."""
        return self.branches > 1

    def reset(self, prompt: Sequence[int]) -> None:
        if not self.persist:
            self.table.rows = None
        if self.copier is not None:
            self.copier.reset(prompt)

    def commit(self, tokens: Sequence[int]) -> None:
        if self.copier is not None:
            self.copier.commit(tokens)

    def harvest(self, reviewer: int, tokens: Sequence[int], logits: torch.Tensor) -> None:
        """Learn from one review by rung ``reviewer``: row i of ``logits`` follows
        ``tokens[i]`` (the context's last token, then each draft node)."""
        if reviewer == 0 or self.harvest_drafters:
            self.table.update(tokens, logits)

    def propose(self, context: np.ndarray, n: int, engine: Engine | None = None) -> Draft:
        last = int(context[-1])
        main = self.copier.continuation(context, n) if self.copier is not None else []
        main += self.table.walk(main[-1] if main else last, n - len(main))
        draft = self.draft(main)
        if self.branches == 1 or not main:
            return draft
        firsts = [int(t) for t in self.table.successors(last)[: self.branches]]
        others = [t for t in firsts if t != main[0]][: self.branches - 1]
        for first in others:
            draft.graft(-1, self.draft([first, *self.table.walk(first, n - 1)]))
        return draft
