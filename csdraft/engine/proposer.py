"""Proposers: every way a rung can draft, behind one small interface.

A ladder is a list of rungs: the target first, then every drafting strategy below it. Each is a
``Proposer``: it is told the prompt and each committed run of tokens, and asked for up to ``n``
tokens continuing a context. ``ModelRung`` (a model that drafts by reviewing the rungs below it,
and the target, which only reviews) and ``MaxGram`` (engine/maxgram.py) are two implementations;
a new strategy is one more class, and the engine, the live view, tune, inspect and bench treat
it like the others, asking it what they need (``name``, ``kind``, ``neural``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol

import numpy as np
import torch

from csdraft.engine.deferral import Deferral
from csdraft.engine.draft import Draft
from csdraft.engine.review import Reviewed
from csdraft.engine.tree import TreeSettings


class Scorer(Protocol):
    """A model session with its own cache: any backend that can score new tokens is a rung."""

    name: str
    scores_trees: ClassVar[bool]
    """Whether it also scores token trees: ``score_tree(context, draft)`` -> logits
    [1 + len(draft), vocab] (row 0 after ``context``, row i + 1 after node i, each node seeing
    the context and its ancestors only) and ``keep_path(path)`` (keep only those nodes, root
    first, of the last tree in the cache). The engine reads it with ``getattr(scorer,
    "scores_trees", False)``: a scorer that does not declare it scores chains only.

    A scorer may also define ``begin(prompt)``: told the prompt (what it sees of it) when a
    generation starts, after ``reset`` (an encoder-decoder encodes it: ``models.seq2seq``)."""

    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        """Logits [len(seq) - start + 1, vocab] predicting each of seq[start:] and the next;
        the cache keeps what ``seq`` shares with what it saw and drops the rest."""
        ...

    def reset(self) -> None:
        """Forget the cache."""
        ...


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token arrays (vectorised): how much of its cache a
    scorer keeps for a new sequence."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class Engine(Protocol):
    """What a proposer may ask of the cascade that runs it."""

    def block(self, reviewer: int, context: np.ndarray, limit: int) -> Draft:
        """The draft rung ``reviewer`` checks next, built from the rungs below it."""
        ...

    def review(self, rung: ModelRung, context: np.ndarray, draft: Draft) -> Reviewed:
        """One forward pass of ``rung`` over ``draft``: the kept proposals plus its own token,
        its probability of that token, and which proposals it kept."""
        ...


class Proposer:
    """A drafting strategy. Subclasses override ``propose`` and, if they keep state across a
    generation, ``reset`` and ``commit``. ``index`` is the rung's place in the ladder, set by
    the cascade; drafts name it as their tokens' origin."""

    name: str = "proposer"
    kind: str = "statistical"
    """'model' for rungs that run a neural network; anything else is drawn and costed as a
    cheap statistical drafter."""
    index: int = -1
    proposes_trees: bool = False
    """Whether its drafts may branch (token trees): the rungs reviewing it must score trees."""

    @property
    def neural(self) -> bool:
        """Whether drafting costs forward passes of a model."""
        return self.kind == "model"

    def reset(self, prompt: Sequence[int]) -> None:
        """A new generation starts from ``prompt``."""

    def commit(self, tokens: Sequence[int]) -> None:
        """The target made ``tokens`` final (they follow everything committed before)."""

    def release(self) -> None:
        """The generation ended: free what it held (caches)."""

    def propose(self, context: np.ndarray, n: int, engine: Engine) -> Draft:
        """Up to ``n`` tokens continuing ``context`` (prompt, committed tokens, then the draft
        so far); fewer ends the block."""
        raise NotImplementedError

    def draft(self, tokens: Sequence[int]) -> Draft:
        """A deterministic chain of ``tokens`` drafted by this rung."""
        return Draft.deterministic(tokens, self.index)


class ModelRung(Proposer):
    """A model in the ladder: it reviews drafts in one forward pass each, and, below the
    target, writes its own drafts by reviewing the rungs below it (vertical cascade), ending a
    draft after a token it gives less than ``min_confidence``. ``lenience`` >= 1 loosens its
    reviews. ``tree``: the drafts it reviews branch where the drafter is unsure
    (engine/tree.py). ``deferral`` makes its reviews lossy on purpose (speculative cascades,
    engine/deferral.py), the target's too. Which combinations are allowed (never a lenient
    target, lenient or lossy but not both, trees only with lenience 1 and lossless reviews) is
    ``csdraft.spec.validate``'s to say; a rung trusts its validated settings."""

    kind = "model"

    def __init__(
        self,
        scorer: Scorer,
        name: str,
        lenience: float = 1.0,
        min_confidence: float = 0.0,
        vocab_size: int | None = None,
        tree: TreeSettings | None = None,
        deferral: Deferral | None = None,
        window: int | None = None,
    ) -> None:
        self.scorer = scorer
        self.name = name
        self.lenience = float(lenience)
        self.min_confidence = float(min_confidence)
        self.vocab_size = vocab_size
        self.deferral = deferral
        """The width of this model's logits, when known. The target's sets the width every
        drafter's logits are fitted to (drafters may pad their vocabulary differently)."""
        self.tree = tree
        """How the drafts this rung reviews branch (None: linear drafts)."""
        self.window = window
        """A drafter sees only the last ``window`` prompt tokens (None: all of them)."""
        self.offset = 0
        """Context tokens this rung does not see (set from ``window`` when a prompt comes)."""

    @property
    def lossy(self) -> bool:
        """Whether this rung's reviews follow a deferral rule's pi instead of its own p."""
        return self.deferral is not None and not self.deferral.lossless

    def release(self) -> None:
        self.scorer.reset()

    def reset(self, prompt: Sequence[int]) -> None:
        self.scorer.reset()
        self.offset = max(0, len(prompt) - self.window) if self.window else 0
        if begin := getattr(self.scorer, "begin", None):
            begin(prompt[self.offset :])

    def propose(self, context: np.ndarray, n: int, engine: Engine) -> Draft:
        out = Draft()
        while len(out) < n:
            ctx = np.concatenate([context, np.asarray(out.tokens, dtype=np.int64)])
            reviewed = engine.review(self, ctx, engine.block(self.index, ctx, n - len(out) - 1))
            out.extend(reviewed.out)
            if reviewed.confidence < self.min_confidence:
                break
        return out
