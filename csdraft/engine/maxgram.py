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
    """

    name = "max-gram"

    def __init__(
        self, max_ngram: int = 8, min_ngram: int = 1, bigram: dict[int, int] | None = None
    ) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("Max-Gram needs 1 <= min_ngram <= max_ngram")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.bigram = bigram or {}
        self.tokens: list[int] = []
        self.prompt_len = 0
        self._index: dict[tuple[int, ...], int] = {}

    def reset(self, prompt: Sequence[int]) -> None:
        """Start a new context from the prompt."""
        self.tokens = []
        self._index = {}
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
                if self._index.get(key, self.prompt_len) < self.prompt_len - 1:
                    continue  # a match continuing inside the prompt stays
                self._index[key] = end

    def _match(self, suffix: Sequence[int]) -> int | None:
        """End position of the longest indexed n-gram equal to the end of ``suffix``."""
        for n in range(min(self.max_ngram, len(suffix)), self.min_ngram - 1, -1):
            end = self._index.get(tuple(suffix[len(suffix) - n :]))
            if end is not None:
                return end
        return None

    def propose(self, context: np.ndarray, n: int, engine: Engine | None = None) -> Draft:
        return self.draft(self.continuation(context, n))

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
