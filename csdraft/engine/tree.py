"""Token trees: reviewing a draft that branches, and growing one from a drafter's chain.

A tree review sees the reviewer's logits after the root (row 0) and after every node (row
i + 1), all from one forward pass (``score_tree``), and walks down from the root: at each node
it tries the children in node order and moves to the first it keeps. Both rules are exact (the
reviewer's own decoding, greedy or sampled), whatever the tree.

With ``extend`` the drafter then grows the tree a second stage (staged speculation): every
leaf, likeliest first, gets a block from the rungs below the drafter, which the drafter reviews
in one forward pass over the whole tree, so a sibling carries its own continuation instead of
ending the draft (``Cascade.extend_leaves``; ``leaves`` and ``cumulative`` here).

Lenience has no tree rule here: a lenient review hands on ``lenient_output`` for one proposal
at a time, and siblings tried in turn would need the law of the whole sequence of tries. Trees
are refused with lenience > 1 ("lenience needs linear drafts").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csdraft.engine.draft import Draft
from csdraft.engine.review import Sampling, Verdict, residual


@dataclass(frozen=True)
class TreeSettings:
    """How a reviewer's drafts branch: at each chain position where the drafter's probability
    of its best token is below ``min_prob``, its next ``top_k`` tokens become siblings of the
    chain's token; siblings are ranked by cumulative draft probability and cut so the tree holds
    at most ``budget`` nodes (the chain always stays). With ``extend`` > 0 the drafter then
    adds up to ``extend`` tokens below every leaf, likeliest leaves first, in one more forward
    pass (the rungs below it propose, it keeps what it would and adds its own token); 0 leaves
    the siblings as leaves."""

    budget: int = 16
    top_k: int = 2
    min_prob: float = 0.1
    extend: int = 0

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 <= self.min_prob <= 1:
            raise ValueError(f"min_prob must be in [0, 1], got {self.min_prob}")
        if self.extend < 0:
            raise ValueError(f"extend must be >= 0, got {self.extend}")

    @property
    def short(self) -> str:
        """'tree 16/1/0.5' (budget, top_k, min_prob; '/4' more with extend 4), for tables."""
        more = f"/{self.extend}" if self.extend else ""
        return f"tree {self.budget}/{self.top_k}/{self.min_prob:g}{more}"

    def explain(self, drafter: str = "the drafter") -> str:
        """The settings in words."""
        siblings = (
            "its second choice joins the draft as a sibling"
            if self.top_k == 1
            else f"its next {self.top_k} choices join the draft as siblings"
        )
        text = (
            f"token trees of at most {self.budget} nodes: where {drafter} gives its token less "
            f"than {self.min_prob:.0%}, {siblings}"
        )
        if self.extend:
            text += (
                f"; then {drafter} extends every branch by up to {self.extend} tokens (likeliest "
                "first, in one more forward pass of its own over the whole tree)"
            )
        return text + "; the whole tree is checked in one forward pass"


def children(draft: Draft) -> list[list[int]]:
    """``out[i + 1]``: the children of node i in node order (``out[0]``: the root's)."""
    out: list[list[int]] = [[] for _ in range(len(draft) + 1)]
    parents = draft.parents if draft.parents is not None else range(-1, len(draft) - 1)
    for i, p in enumerate(parents):
        out[p + 1].append(i)
    return out


def path_to(draft: Draft, node: int) -> list[int]:
    """The nodes from a child of the root down to ``node`` (empty for the root, -1)."""
    path = []
    while node >= 0:
        path.append(node)
        node = draft.parents[node] if draft.parents is not None else node - 1
    return path[::-1]


def leaves(draft: Draft) -> list[int]:
    """The nodes with no children, in node order."""
    return [i for i, kids in enumerate(children(draft)[1:]) if not kids]


def cumulative(draft: Draft) -> list[float]:
    """Each node's cumulative draft probability: the product down its path of the probability
    its drafter gave each token, read from the distribution of any child of the same parent that
    carries one (so a deterministic sibling is scored by the distribution the chain's token there
    was drawn from), 1 where none does."""
    parents = draft.parents if draft.parents is not None else range(-1, len(draft) - 1)
    at: dict[int, torch.Tensor] = {}
    for p, q in zip(parents, draft.q, strict=True):
        if q is not None:
            at.setdefault(p, q)
    out: list[float] = []
    for x, p in zip(draft.tokens, parents, strict=True):
        prob = float(at[p][x]) if p in at else 1.0
        out.append(prob * (out[p] if p >= 0 else 1.0))
    return out


def greedy_tree(logits: torch.Tensor, draft: Draft, hand_on_probs: bool) -> Verdict:
    """The longest root-to-node path whose every token is the reviewer's argmax after its
    parent (the first such node in node order on ties), then the reviewer's argmax after it."""
    best = logits.argmax(-1)
    good = [False] * len(draft)
    deepest, depth = -1, 0
    for i, (p, d) in enumerate(
        zip(draft.parents or range(-1, len(draft) - 1), draft.depth(), strict=True)
    ):
        good[i] = (p < 0 or good[p]) and draft.tokens[i] == int(best[p + 1])
        if good[i] and d > depth:
            deepest, depth = i, d
    path = path_to(draft, deepest)
    rows = [0] + [i + 1 for i in path]
    handed = list(torch.softmax(logits[rows].float(), -1)) if hand_on_probs else [None] * len(rows)
    row = logits[deepest + 1].float()
    confidence = float(torch.exp(row.max() - torch.logsumexp(row, -1)))
    return Verdict(len(path), int(best[deepest + 1]), handed, confidence, path)


def sample_tree(
    logits: torch.Tensor, draft: Draft, sampling: Sampling, generator: torch.Generator
) -> Verdict:
    """Multi-draft speculative sampling down the tree (SpecInfer): at each node, with p the
    reviewer's distribution after it, try the children in turn: keep child x drawn from q with
    probability min(1, p(x) / q(x)), else p <- normalise(max(0, p - q)). A deterministic child
    (q None) is the same rule with q one-hot: keep x with probability p(x), else p(x) <- 0 and
    renormalise. If every child is refused, draw the reviewer's own token from the final p.
    Each step outputs p exactly whatever the children were, so the path plus token follows the
    reviewer's sampling law."""
    p = sampling.probs(logits)
    kids = children(draft)
    node, path = -1, []
    while True:
        row = p[node + 1]
        kept = None
        for c in kids[node + 1]:
            x = draft.tokens[c]
            q = draft.q[c]
            if q is None:
                q = torch.nn.functional.one_hot(torch.tensor(x), row.shape[-1]).to(row.dtype)
            u = torch.rand((), generator=generator)
            if u * q[x] < row[x]:  # u < p(x) / q(x), without dividing by a zero q(x)
                kept = c
                break
            row = residual(row, q)
        if kept is None:
            break
        path.append(kept)
        node = kept
    token = int(torch.multinomial(row, 1, generator=generator))
    rows = [0] + [i + 1 for i in path]
    return Verdict(len(path), token, [p[r] for r in rows], float(p[node + 1, token]), path)


def grow(draft: Draft, settings: TreeSettings) -> Draft:
    """A tree from a chain: the chain, plus, at each position j whose distribution ``q[j]`` is
    known and gives its best token less than ``min_prob``, the ``top_k`` most likely other
    tokens as deterministic siblings of node j (leaves), kept by cumulative probability
    (the chain's probability up to j times the token's) within ``budget`` nodes."""
    if not draft.is_chain:
        raise ValueError("grow starts from a chain")
    m = len(draft)
    room = settings.budget - m
    if room <= 0:
        return draft
    candidates: list[tuple[float, int, int]] = []  # (cumulative prob, position, token)
    prefix = 1.0
    for j, (x, q) in enumerate(zip(draft.tokens, draft.q, strict=True)):
        if q is None:
            continue  # a deterministic proposal: no alternatives known
        if float(q.max()) < settings.min_prob:
            top = torch.topk(q, min(settings.top_k + 1, q.shape[-1]))
            others = [
                (float(v), int(t))
                for v, t in zip(top.values, top.indices, strict=True)
                if int(t) != x
            ]
            candidates += [(prefix * v, j, t) for v, t in others[: settings.top_k] if v > 0]
        prefix *= float(q[x])
    if not candidates:
        return draft
    candidates.sort(key=lambda c: -c[0])
    chosen = sorted(candidates[:room], key=lambda c: c[1])  # by position: siblings in order
    return Draft(
        draft.tokens + [t for _, _, t in chosen],
        draft.origins + [draft.origins[j] for _, j, _ in chosen],
        draft.q + [None] * len(chosen),
        list(range(-1, m - 1)) + [j - 1 for _, j, _ in chosen],
    )
