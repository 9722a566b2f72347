"""Drafts: the proposed tokens a review checks, as a chain or as a tree.

A draft lists its nodes in topological order. ``parents[i]`` is the index of node i's parent, or
-1 for a child of the root (the last token of the context). A chain (a linear block, the common
case) has ``parents is None``: every node's parent is the node before it. Reviews of chains take
the fast path (no attention mask, no tree bookkeeping); a tree is the general case that token
trees build on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from csdraft.trace import node_depths


@dataclass
class Draft:
    """Proposed tokens, the rung that drafted each, and the distribution each was drawn from.

    ``q[j]`` is a probability vector over the vocabulary, or ``None`` for a deterministic
    proposal (Max-Gram, any proposer without probabilities), which counts as one-hot.
    ``q_raw`` (None unless a lossy review above needs it) holds each proposal's untempered
    distribution, which deferral rules judge (engine/deferral.py); None entries for
    deterministic proposals.
    """

    tokens: list[int] = field(default_factory=list)
    origins: list[int] = field(default_factory=list)
    q: list[torch.Tensor | None] = field(default_factory=list)
    parents: list[int] | None = None
    q_raw: list[torch.Tensor | None] | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def deterministic(cls, tokens: Sequence[int], origin: int) -> Draft:
        """A chain of ``tokens`` from one proposer that gives no probabilities."""
        tokens = [int(t) for t in tokens]
        return cls(tokens, [origin] * len(tokens), [None] * len(tokens))

    @property
    def is_chain(self) -> bool:
        """Whether every node's parent is the node before it (a linear block)."""
        return self.parents is None or all(p == i - 1 for i, p in enumerate(self.parents))

    def extend(self, other: Draft) -> None:
        """Append ``other`` (a chain or a tree) after this chain's last node."""
        if not self.is_chain:
            raise ValueError("only chains can be extended; grow trees node by node")
        self.graft(len(self) - 1, other)

    def copy(self) -> Draft:
        """A draft with its own lists (the distributions are shared, never changed)."""
        return Draft(
            list(self.tokens),
            list(self.origins),
            list(self.q),
            None if self.parents is None else list(self.parents),
            None if self.q_raw is None else list(self.q_raw),
        )

    def graft(self, node: int, other: Draft) -> None:
        """Append ``other`` (a chain or a tree) below node ``node`` (-1: the root) as a new
        branch; a chain grafted below a chain's last node keeps it a chain."""
        n = len(self)
        if self.q_raw is not None or other.q_raw is not None:
            self.q_raw = self.raw() + other.raw()
        if self.parents is not None or other.parents is not None or node != n - 1:
            own = self.parents if self.parents is not None else list(range(-1, n - 1))
            theirs = other.parents if other.parents is not None else range(-1, len(other) - 1)
            self.parents = own + [p + n if p >= 0 else node for p in theirs]
        self.tokens += other.tokens
        self.origins += other.origins
        self.q += other.q

    def trunk_nodes(self) -> list[int]:
        """The path from the root down each node's first child (node order)."""
        if self.is_chain:
            return list(range(len(self)))
        nodes, at = [], -1
        for i, p in enumerate(self.parents):
            if p == at:
                nodes.append(i)
                at = i
        return nodes

    def trunk(self) -> Draft:
        """The chain of ``trunk_nodes`` (the draft itself if it is a chain)."""
        return self if self.is_chain else self.path(self.trunk_nodes())

    def raw(self) -> list[torch.Tensor | None]:
        """``q_raw``, or None for every node where it was not computed."""
        return self.q_raw if self.q_raw is not None else [None] * len(self)

    def path(self, nodes: Sequence[int]) -> Draft:
        """The chain made of ``nodes`` (a root-to-node path, in order)."""
        return Draft(
            [self.tokens[i] for i in nodes],
            [self.origins[i] for i in nodes],
            [self.q[i] for i in nodes],
            q_raw=None if self.q_raw is None else [self.q_raw[i] for i in nodes],
        )

    def depth(self) -> list[int]:
        """Each node's depth (1 for children of the root)."""
        if self.parents is None:
            return list(range(1, len(self) + 1))
        return node_depths(self.parents)
