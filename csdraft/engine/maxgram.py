"""Max-Gram: the statistical drafter at the bottom of the ladder."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from csdraft.engine.draft import Draft
from csdraft.engine.proposer import Engine, Proposer


class MaxGram(Proposer):
    """Proposes the tokens that followed the longest earlier match of the current suffix.

    Matches in the prompt win over matches in the generated text; among generated text the most
    recent match wins. Where nothing matches, a bigram table (next token by previous token,
    learned from any text the user provides) proposes one token and the search starts over.
    The n-gram index grows by O(max_ngram**2) dictionary updates per committed token, and a
    proposal costs O(max_ngram) lookups per run of copied tokens, whatever the context length.

    With ``branches`` > 1 a draft is a token tree: the continuation above, plus up to
    ``branches - 1`` others as siblings of its first token: the different tokens that followed
    other earlier matches of the same suffix (most recent match per token), each with the run
    copied after that match. The rung that reviews Max-Gram checks the whole tree in one pass
    (staged speculation) and keeps its longest right path; siblings are deterministic proposals,
    so greedy and sampled reviews stay exact.
    """

    name = "max-gram"

    def __init__(
        self,
        max_ngram: int = 8,
        min_ngram: int = 1,
        bigram: dict[int, int] | None = None,
        branches: int = 1,
    ) -> None:
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.bigram = bigram or {}
        self.branches = branches
        self.tokens: list[int] = []
        self.prompt_len = 0
        self._index: dict[tuple[int, ...], int] = {}
        self._next: dict[tuple[int, ...], dict[int, int]] = {}
        """With branches: per n-gram, up to ``branches`` tokens that followed it -> the end of
        its most recent match followed by that token."""

    @property
    def proposes_trees(self) -> bool:
        """Whether drafts branch (a reviewer of Max-Gram then scores trees)."""
        return self.branches > 1

    def reset(self, prompt: Sequence[int]) -> None:
        """Start a new context from the prompt."""
        self.tokens = []
        self._index = {}
        self._next = {}
        self.prompt_len = len(prompt)
        self.extend(prompt)

    def commit(self, tokens: Sequence[int]) -> None:
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Commit tokens: every n-gram that now has a continuation enters the index."""
        for token in tokens:
            end = len(self.tokens) - 1  # n-grams ending here just gained a continuation
            self.tokens.append(int(token))
            if end < 0:
                continue
            for n in range(1, min(self.max_ngram, end + 1) + 1):
                key = tuple(self.tokens[end - n + 1 : end + 1])
                if self.branches > 1:
                    after = self._next.setdefault(key, {})
                    if token in after or len(after) < self.branches:
                        after[int(token)] = end
                if self._index.get(key, self.prompt_len) < self.prompt_len - 1:
                    continue  # a match continuing inside the prompt stays
                self._index[key] = end

    def _match(self, suffix: Sequence[int]) -> int | None:
        """End position of the longest indexed n-gram equal to the end of ``suffix``."""
        key = self._longest(suffix)
        return None if key is None else self._index[key]

    def _longest(self, suffix: Sequence[int]) -> tuple[int, ...] | None:
        """The longest indexed n-gram equal to the end of ``suffix``."""
        for n in range(min(self.max_ngram, len(suffix)), self.min_ngram - 1, -1):
            key = tuple(suffix[len(suffix) - n :])
            if key in self._index:
                return key
        return None

    def propose(self, context: np.ndarray, n: int, engine: Engine | None = None) -> Draft:
        main = self.continuation(context, n)
        draft = self.draft(main)
        if self.branches == 1 or not main:
            return draft
        key = self._longest([int(t) for t in context[-self.max_ngram :]])
        others = [
            (token, end)
            for token, end in (self._next.get(key, {}) if key is not None else {}).items()
            if token != main[0]
        ]
        if not others:
            return draft
        for _, end in others[: self.branches - 1]:
            draft.graft(-1, self.draft(self.tokens[end + 1 : end + 1 + n]))
        return draft

    def continuation(self, context: np.ndarray | Sequence[int], n: int) -> list[int]:
        """Up to ``n`` tokens continuing ``context`` (whose committed part this object has seen)."""
        tail = [int(t) for t in context[-self.max_ngram :]]
        out: list[int] = []
        while len(out) < n:
            end = self._match(tail)
            if end is not None:
                run = self.tokens[end + 1 : end + 1 + n - len(out)]
            else:
                nxt = self.bigram.get(tail[-1]) if tail else None
                if nxt is None:
                    break
                run = [nxt]
            out += run
            tail = (tail + run)[-self.max_ngram :]
        return out


def learn_bigram(token_ids: Iterable[Sequence[int]]) -> dict[int, int]:
    """The most frequent next token after each token, over some tokenised texts."""
    pairs: dict[tuple[int, int], int] = {}
    for ids in token_ids:
        a = np.asarray(ids, dtype=np.int64)
        if len(a) < 2:
            continue
        keys, counts = np.unique(np.stack([a[:-1], a[1:]], 1), axis=0, return_counts=True)
        for (x, y), c in zip(keys.tolist(), counts.tolist(), strict=True):
            pairs[(x, y)] = pairs.get((x, y), 0) + c
    best: dict[int, tuple[int, int]] = {}
    for (x, y), c in pairs.items():
        if c > best.get(x, (0, -1))[0]:
            best[x] = (c, y)
    return {x: y for x, (c, y) in best.items()}
