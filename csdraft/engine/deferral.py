"""Speculative cascades' deferral rules (Narasimhan et al., ICLR 2025): what a lossy review
outputs instead of the reviewer's own distribution.

With q the proposer's distribution and p the reviewer's, a rule builds a target pi from q and
p, and the review is ordinary speculative sampling against pi: keep x ~ q with probability
min(1, pi(x) / q(x)), else draw from normalise(max(0, pi - q)), so the output follows pi
exactly. The formulas follow the authors' public notebook (google-research/google-research,
``speculative_cascades/speculative_cascades_gemma.ipynb``, ``target_distribution_*``):

- the criteria use the untempered ("raw") softmaxes ``q_raw`` and ``p_raw``;
- the mixtures use the tempered (sampling) distributions ``q`` and ``p``;
- OPT's total-variation distance is computed on the tempered ``q`` and ``p``, as the notebook
  does (not on the raw ones);
- at temperature 0 the tempered q and p are one-hot at their argmax, so pi is one-hot too.

Deterministic proposals (Max-Gram, any proposer without probabilities: ``q`` is None) carry no
probability to judge: the review always defers on them (pi = p), so they stay lossless. As a
one-hot q they would pass Chow, Diff, OPT and V1 every time, accepting whatever was guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

RULES: dict[str, str] = {
    "none": "lossless: the reviewer's own distribution (pi = p)",
    "chow": "keep the drafter iff max q >= 1 - alpha; alpha in [0, 1]; lossless at alpha <= 0",
    "diff": "keep iff max q >= max p - alpha; alpha in [-1, 1]; lossless at alpha <= -1",
    "opt": "keep iff max q >= max p - alpha * TV(q, p); lossless at alpha < -1",
    "v1": "token-specific, A = {v: q(v) >= max p - alpha}; alpha in [-1, 1]; "
    "lossless at alpha <= -1",
    "v2": "token-specific, A = {v: p(v) >= max p - alpha}; alpha in [0, 1]; lossless at alpha < 0",
    "v3": "token-specific, A = {v: p(v) >= (1 - alpha) max p}; alpha in [0, 1]; "
    "lossless at alpha < 0",
}
"""Each rule, what it keeps, its useful range of alpha and its lossless end (one line each)."""

TOKEN_SPECIFIC = ("v1", "v2", "v3")

ALPHA_RANGE: dict[str, tuple[float, float]] = {
    "none": (-math.inf, math.inf),
    "chow": (0.0, 1.0),
    "diff": (-1.0, 1.0),
    "opt": (-math.inf, math.inf),
    "v1": (-1.0, 1.0),
    "v2": (0.0, 1.0),
    "v3": (0.0, 1.0),
}
"""The alphas a user may give each rule (``RULES`` says what they mean); outside them a rule
either changes nothing more or has no meaning."""


@dataclass(frozen=True)
class Deferral:
    """A reviewer's deferral rule and its dial ``alpha`` (larger keeps more of the drafter).

    Lossless ends (``lossless``): there pi = p exactly and the review is today's lossless one.
    Chow at alpha <= 0 would keep only a drafter with max q >= 1, which a softmax never reaches
    (float32 may round it to 1, so the end is declared rather than left to rounding). Diff and
    V1 at alpha <= -1 need max q or q(v) >= max p + 1 > 1. V2 and V3 at alpha < 0 leave A empty.
    OPT keeps only when max q - max p >= |alpha| TV; with TV on the raw distributions
    max q - max p <= TV, so alpha < -1 never keeps a q that differs from p; the notebook's TV
    is on the tempered ones, where that bound holds at temperature 1 without top-k/top-p and at
    temperature 0, and alpha < -1 is declared lossless for every setting.
    """

    rule: str
    alpha: float = 0.0

    def __repr__(self) -> str:
        """'chow@0.1': the rule as the command line and bench's methods write it."""
        return f"{self.rule}@{self.alpha:g}"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown deferral rule {self.rule!r}; rules: {', '.join(RULES)}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"deferral alpha must be a finite number, got {self.alpha}")

    @property
    def lossless(self) -> bool:
        """Whether this rule at this alpha always outputs the reviewer's distribution p."""
        a = self.alpha
        return {
            "none": True,
            "chow": a <= 0,
            "diff": a <= -1,
            "opt": a < -1,
            "v1": a <= -1,
            "v2": a < 0,
            "v3": a < 0,
        }[self.rule]

    def range_problem(self) -> str | None:
        """Why this alpha is outside the rule's range (``ALPHA_RANGE``), or None."""
        low, high = ALPHA_RANGE[self.rule]
        if low <= self.alpha <= high:
            return None
        return f"{self.rule} takes alpha in [{low:g}, {high:g}], got {self.alpha:g}"

    def __str__(self) -> str:
        return "none" if self.rule == "none" else f"{self.rule} alpha={self.alpha:g}"

    def keep_drafter(
        self, q: torch.Tensor, q_raw: torch.Tensor, p: torch.Tensor, p_raw: torch.Tensor
    ) -> torch.Tensor:
        """Chow, Diff, OPT: whether each row keeps the drafter (r = 0), as a [..., 1] bool."""
        max_q = q_raw.max(-1, keepdim=True).values
        max_p = p_raw.max(-1, keepdim=True).values
        if self.rule == "chow":
            return max_q >= 1 - self.alpha
        if self.rule == "diff":
            return max_q >= max_p - self.alpha
        if self.rule == "opt":
            tv = (q - p).clamp_min(0).sum(-1, keepdim=True)  # tempered, as the notebook
            return max_q >= max_p - self.alpha * tv
        raise ValueError(f"{self.rule} is not a whole-distribution rule")

    def accepted_set(self, q_raw: torch.Tensor, p_raw: torch.Tensor) -> torch.Tensor:
        """V1, V2, V3: the tokens A the drafter keeps, as a [..., vocab] bool."""
        max_p = p_raw.max(-1, keepdim=True).values
        if self.rule == "v1":
            return q_raw >= max_p - self.alpha
        if self.rule == "v2":
            return p_raw >= max_p - self.alpha
        if self.rule == "v3":
            return p_raw >= (1 - self.alpha) * max_p
        raise ValueError(f"{self.rule} is not a token-specific rule")

    def target(
        self, q: torch.Tensor, q_raw: torch.Tensor, p: torch.Tensor, p_raw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pi for rows of (tempered q, raw q, tempered p, raw p): (pi, pi_raw), the same
        decisions applied to the tempered and to the raw distributions. pi is what the review
        outputs; pi_raw is what it hands on as its output's raw distribution, so that a lossy
        rung above judges this rung's proposals as it would judge a model's."""
        if self.lossless:
            return p, p_raw
        if self.rule in TOKEN_SPECIFIC:
            inside = self.accepted_set(q_raw, p_raw)
            return _token_mix(q, p, inside), _token_mix(q_raw, p_raw, inside)
        keep = self.keep_drafter(q, q_raw, p, p_raw)
        return torch.where(keep, q, p), torch.where(keep, q_raw, p_raw)


def _token_mix(q: torch.Tensor, p: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """q(v) 1[v in A] + (1 - sum_{u in A} q(u)) p(v)."""
    kept = torch.where(inside, q, torch.zeros_like(q))
    return kept + (1 - kept.sum(-1, keepdim=True)).clamp_min(0) * p


def parse(text: str) -> Deferral:
    """``RULE@ALPHA`` (e.g. ``opt@0.1``; ``none`` needs no alpha) as a Deferral, its alpha in
    the rule's range."""
    rule, _, alpha = text.partition("@")
    rule = rule.strip()
    try:
        if not alpha.strip() and rule != "none":
            raise ValueError(f"{rule} needs an alpha: {rule}@ALPHA")
        deferral = Deferral(rule, float(alpha) if alpha.strip() else 0.0)
        if problem := deferral.range_problem():
            raise ValueError(problem)
        return deferral
    except ValueError as e:
        raise ValueError(f"bad deferral {text!r}: {e}") from None
