"""How one rung reviews a draft: the greedy rule and speculative sampling, as pure functions.

A review sees the reviewer's logits at every position of the draft (one forward pass) and the
proposals with the distribution each was drawn from, and returns the proposals it keeps (a path
from the root), the token it appends itself, and the distribution it hands on for every token it
outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csdraft.engine.draft import Draft


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, defined as transformers defines them: temperature, then top-k, then
    top-p. ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampling distribution for each row of logits, after temperature, top-k, top-p."""
        scores = logits.float()
        if self.greedy:
            return torch.softmax(scores, dim=-1)
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if 0 < self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative <= (1 - self.top_p)
            drop_sorted[..., -1:] = False  # always keep the most likely token
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        return torch.softmax(scores, dim=-1)


@dataclass
class Verdict:
    """A review's outcome: proposals kept, the reviewer's own token, the distribution each
    output token (kept proposals, then the own token) is handed on with, and the reviewer's
    probability of its own token (how sure it was; drafting may stop when it is unsure)."""

    accepted: int
    token: int
    q: list[torch.Tensor | None]
    confidence: float = 1.0
    path: list[int] | None = None
    """The kept nodes of a tree draft, root first (None for a chain: its first ``accepted``)."""

    def kept(self) -> list[int]:
        """Indices of the kept proposals in the draft, root first."""
        return list(range(self.accepted)) if self.path is None else self.path


def _proposal_probs(draft: Draft, vocab: int) -> torch.Tensor:
    """Each proposal's distribution as a dense [m, vocab] matrix (one-hot where ``q`` is None)."""
    rows = [
        q if q is not None else torch.nn.functional.one_hot(torch.tensor(x), vocab).float()
        for x, q in zip(draft.tokens, draft.q, strict=True)
    ]
    return torch.stack(rows)


def _chain_only(draft: Draft) -> None:
    if draft.parents is not None and not draft.is_chain:
        raise NotImplementedError("reviews of tree drafts are not implemented yet")


def _first_false(ok: torch.Tensor) -> int:
    """Index of the first False in a bool vector, or its length."""
    bad = (~ok).nonzero()
    return int(bad[0, 0]) if len(bad) else len(ok)


def lenient_output(q: torch.Tensor, p: torch.Tensor, lenience: float) -> torch.Tensor:
    """The distribution a lenient speculative-sampling review really outputs.

    The review draws x ~ q and keeps it with probability min(1, l p(x) / q(x)); otherwise it
    draws from r = normalise(max(0, p - q)). So

        P(out = y) = q(y) min(1, l p(y) / q(y)) + beta r(y) = min(q(y), l p(y)) + beta r(y),
        beta = 1 - sum_y min(q(y), l p(y)).

    With l = 1 this is p (the standard result); with l > 1 it leans toward q, and the rung above
    must check the token against this distribution, not against p, for its own review to stay
    exact.
    """
    kept = torch.minimum(q, lenience * p)
    beta = (1 - kept.sum(-1, keepdim=True)).clamp_min(0)
    return kept + beta * _residual(p, q)


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalise(max(0, p - q)), falling back to p where p <= q everywhere (then p == q)."""
    r = (p - q).clamp_min(0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(1e-30), p)


class GreedyReview:
    """Keep a proposal when it is the reviewer's argmax, or (lenience l > 1, inner reviews only)
    when p(x) > q(x) / l, where q(x) is the probability its proposer gave it."""

    def __init__(self, hand_on_probs: bool) -> None:
        self.hand_on_probs = hand_on_probs  # only lenient reviews above need proposal probs

    def __call__(self, logits: torch.Tensor, draft: Draft, lenience: float) -> Verdict:
        _chain_only(draft)
        best = logits.argmax(-1)
        m = len(draft)
        proposed = torch.tensor(draft.tokens, dtype=torch.long)
        ok = best[:m] == proposed
        probs = torch.softmax(logits.float(), -1) if (lenience > 1 or self.hand_on_probs) else None
        if lenience > 1 and m:
            px = probs[torch.arange(m), proposed]
            pairs = zip(draft.tokens, draft.q, strict=True)
            qx = torch.tensor([1.0 if q is None else float(q[x]) for x, q in pairs])
            ok |= px > qx / lenience
        accepted = _first_false(ok)
        handed = list(probs[: accepted + 1]) if self.hand_on_probs else [None] * (accepted + 1)
        row = logits[accepted].float()
        confidence = float(torch.exp(row.max() - torch.logsumexp(row, -1)))
        return Verdict(accepted, int(best[accepted]), handed, confidence)


class SamplingReview:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): keep x ~ q with
    probability min(1, l p(x) / q(x)); at the first refusal draw from normalise(max(0, p - q));
    after a fully kept block draw the bonus token from p. With l = 1 (always at the target) the
    output follows p exactly; inner lenient reviews hand on ``lenient_output``."""

    def __init__(self, sampling: Sampling, generator: torch.Generator) -> None:
        self.sampling = sampling
        self.generator = generator

    def __call__(self, logits: torch.Tensor, draft: Draft, lenience: float) -> Verdict:
        _chain_only(draft)
        p = self.sampling.probs(logits)
        m = len(draft)
        if m:
            q = _proposal_probs(draft, p.shape[-1])
            idx = torch.arange(m)
            proposed = torch.tensor(draft.tokens, dtype=torch.long)
            ratio = lenience * p[idx, proposed] / q[idx, proposed]
            u = torch.rand(m, generator=self.generator)
            accepted = _first_false(u < ratio)
        else:
            accepted = 0
        draw_from = _residual(p[accepted], q[accepted]) if accepted < m else p[m]
        token = int(torch.multinomial(draw_from, 1, generator=self.generator))
        if lenience == 1:
            handed = [p[j] for j in range(accepted + 1)]
        else:
            handed = [lenient_output(q[j], p[j], lenience) for j in range(accepted)]
            handed.append(
                lenient_output(q[accepted], p[accepted], lenience) if accepted < m else p[m]
            )
        return Verdict(accepted, token, handed, float(p[accepted, token]))
