"""How one rung reviews a chain draft: the greedy rule and speculative sampling, as pure
functions (a draft that branches is reviewed by the tree rules in ``engine/tree.py``).

A review sees the reviewer's logits at every position of the draft (one forward pass) and the
proposals with the distribution each was drawn from, and returns the proposals it keeps (a path
from the root), the token it appends itself, and the distribution it hands on for every token it
outputs (a ``Verdict``); the engine hands the kept tokens on as a ``Reviewed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csdraft.engine.deferral import Deferral
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
    q_raw: list[torch.Tensor | None] | None = None
    """Each output token's untempered distribution, when a lossy review above needs it."""

    def kept(self) -> list[int]:
        """Indices of the kept proposals in the draft, root first."""
        return list(range(self.accepted)) if self.path is None else self.path


@dataclass
class Reviewed:
    """One review as the engine hands it back: ``out``, the kept proposals and the reviewer's
    own token with the distributions handed on; ``confidence``, the reviewer's probability of
    its own token; ``kept``, the kept proposals' indices in the draft, root first (the rest
    were lost)."""

    out: Draft
    confidence: float
    kept: list[int]


def _proposal_probs(draft: Draft, vocab: int) -> torch.Tensor:
    """Each proposal's distribution as a dense [m, vocab] matrix (one-hot where ``q`` is None)."""
    rows = [
        q if q is not None else torch.nn.functional.one_hot(torch.tensor(x), vocab).float()
        for x, q in zip(draft.tokens, draft.q, strict=True)
    ]
    return torch.stack(rows)


def _chain_only(draft: Draft) -> None:
    if not draft.is_chain:
        raise ValueError(
            "a chain rule reviews chains only: a tree draft takes engine.tree's greedy_tree or "
            "sample_tree (Cascade.tree_rule)"
        )


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
    return kept + beta * residual(p, q)


def deferred_target(
    deferral: Deferral, draft: Draft, q: torch.Tensor, p: torch.Tensor, p_raw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distributions a lossy review checks against, one row per position of ``draft``
    and one more: (pi, pi_raw) from ``deferral.target`` where a neural proposal was made, p
    and p_raw where the proposal was deterministic (always deferred: it carries no
    probability, engine/deferral.py) and at the bonus position (no proposal to keep).

    ``q`` holds the proposals' tempered distributions (one-hot where deterministic), ``p`` and
    ``p_raw`` the reviewer's, m + 1 rows; the proposals' raw ones come from ``draft.q_raw``.
    """
    m = len(draft)
    neural = [x is not None for x in draft.q]
    raws = draft.raw()
    if any(n and r is None for n, r in zip(neural, raws, strict=True)):
        raise ValueError("a neural proposal reached a lossy review without its raw distribution")
    q_raw = torch.stack([q[j] if r is None else r for j, r in enumerate(raws)])
    pi, pi_raw = deferral.target(q[:m], q_raw, p[:m], p_raw[:m])
    mask = torch.tensor(neural)[:, None]
    pi = torch.where(mask, pi, p[:m])
    pi_raw = torch.where(mask, pi_raw, p_raw[:m])
    return torch.cat([pi, p[m:]]), torch.cat([pi_raw, p_raw[m:]])


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What speculative sampling draws from after refusing a proposal drawn from ``q``:
    normalise(max(0, p - q)) along the last axis, falling back to p where p <= q everywhere
    (then p == q). Tree reviews apply it once per refused sibling (``tree.sample_tree``)."""
    r = (p - q).clamp_min(0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(1e-30), p)


class GreedyReview:
    """Keep a proposal when it is the reviewer's argmax, or (lenience l > 1, inner reviews only)
    when p(x) > q(x) / l, where q(x) is the probability its proposer gave it.

    With a lossy ``deferral`` (never with lenience) it keeps a proposal iff it is the argmax of
    pi, built as the notebook does at temperature 0: the tempered q and p are one-hot (q at the
    proposal, p at the reviewer's argmax), the raw ones are the softmaxes; so pi is one-hot at
    the proposal (kept) or at the reviewer's argmax (deferred, which is then the output). In
    greedy decoding the distributions handed on (``q``) are raw softmaxes, so ``q_raw`` is the
    same list; a lossy review hands on pi_raw for the tokens it kept or deferred on.
    """

    def __init__(self, hand_on_probs: bool) -> None:
        self.hand_on_probs = hand_on_probs  # only lenient or lossy reviews above need them

    def __call__(
        self,
        logits: torch.Tensor,
        draft: Draft,
        lenience: float,
        deferral: Deferral | None = None,
        hand_on_raw: bool = False,
    ) -> Verdict:
        _chain_only(draft)
        best = logits.argmax(-1)
        m = len(draft)
        proposed = torch.tensor(draft.tokens, dtype=torch.long)
        ok = best[:m] == proposed
        lossy = deferral is not None and not deferral.lossless
        wanted = lenience > 1 or self.hand_on_probs or lossy
        probs = torch.softmax(logits.float(), -1) if wanted else None
        if lossy and m:
            vocab = logits.shape[-1]
            q, p = (torch.nn.functional.one_hot(t, vocab).float() for t in (proposed, best))
            pi, probs = deferred_target(deferral, draft, q, p, probs)
            ok = pi[:m].argmax(-1) == proposed
        if lenience > 1 and m:
            px = probs[torch.arange(m), proposed]
            pairs = zip(draft.tokens, draft.q, strict=True)
            qx = torch.tensor([1.0 if q is None else float(q[x]) for x, q in pairs])
            ok |= px > qx / lenience
        accepted = _first_false(ok)
        handed = list(probs[: accepted + 1]) if self.hand_on_probs else [None] * (accepted + 1)
        row = logits[accepted].float()
        confidence = float(torch.exp(row.max() - torch.logsumexp(row, -1)))
        q_raw = handed if self.hand_on_probs else None
        return Verdict(accepted, int(best[accepted]), handed, confidence, q_raw=q_raw)


class SamplingReview:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): keep x ~ q with
    probability min(1, l p(x) / q(x)); at the first refusal draw from normalise(max(0, p - q));
    after a fully kept block draw the bonus token from p. With l = 1 (always at the target) the
    output follows p exactly; inner lenient reviews hand on ``lenient_output``.

    A lossy ``deferral`` (never with lenience) replaces p by pi (``deferred_target``) in the
    acceptance ratio and the residual: ordinary speculative sampling against pi, so each output
    token follows pi exactly, and pi is what the review hands on (the same argument as for p:
    P(out = y) = min(q(y), pi(y)) + (1 - sum min(q, pi)) normalise(max(0, pi - q))(y) = pi(y)).
    The bonus token after a fully kept block is drawn from p. With ``hand_on_raw`` it also
    hands on each output's raw distribution: pi_raw for kept or deferred tokens, the raw
    softmax p_raw after a lossless review (its output follows p). A lenient review hands on
    p_raw too: the raw distribution only feeds the rules' criteria, so it decides which pi the
    rung above aims at, never whether its output follows that pi.
    """

    def __init__(self, sampling: Sampling, generator: torch.Generator) -> None:
        self.sampling = sampling
        self.generator = generator

    def __call__(
        self,
        logits: torch.Tensor,
        draft: Draft,
        lenience: float,
        deferral: Deferral | None = None,
        hand_on_raw: bool = False,
    ) -> Verdict:
        _chain_only(draft)
        p = self.sampling.probs(logits)
        lossy = deferral is not None and not deferral.lossless
        p_raw = torch.softmax(logits.float(), -1) if (lossy or hand_on_raw) else None
        target, target_raw = p, p_raw
        m = len(draft)
        if m:
            q = _proposal_probs(draft, p.shape[-1])
            if lossy:
                target, target_raw = deferred_target(deferral, draft, q, p, p_raw)
            idx = torch.arange(m)
            proposed = torch.tensor(draft.tokens, dtype=torch.long)
            ratio = lenience * target[idx, proposed] / q[idx, proposed]
            u = torch.rand(m, generator=self.generator)
            accepted = _first_false(u < ratio)
        else:
            accepted = 0
        draw_from = residual(target[accepted], q[accepted]) if accepted < m else p[m]
        token = int(torch.multinomial(draw_from, 1, generator=self.generator))
        if lenience == 1:
            handed = [target[j] for j in range(accepted + 1)]
        else:
            handed = [lenient_output(q[j], p[j], lenience) for j in range(accepted)]
            handed.append(
                lenient_output(q[accepted], p[accepted], lenience) if accepted < m else p[m]
            )
        q_raw = [target_raw[j] for j in range(accepted + 1)] if hand_on_raw else None
        return Verdict(accepted, token, handed, float(p[accepted, token]), q_raw=q_raw)
