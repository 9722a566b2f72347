"""Exactness checks: where two outputs part, the target's top-2 margin there, near-ties.

Used by bench, tune, the tests and scripts/exactness.py, so every comparison of a method's
output with the target's own greedy decoding tells a floating-point near-tie from a bug the same
way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

NEAR_TIE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.25, "gguf": 1.0}
"""The widest gap between a target's two best logits that counts as a floating-point near-tie
at a divergence (a wider one points at a bug). bfloat16 logits of size 10-30 are spaced
0.06-0.125 apart, and the same position's logits from a block forward pass and a one-token pass
were seen to differ by up to 0.25. ``gguf`` (the llama.cpp backend): llama.cpp's block pass is
not batch-invariant either; the same position's logits from a block and from one-token decodes
differed by up to 0.59 (Qwen2.5-Coder-1.5B Q4_K_M, 2 threads)."""


def near_tie(dtype: Any) -> float:
    """``NEAR_TIE`` for a torch dtype or its name (float32's for anything else)."""
    return NEAR_TIE.get(str(dtype).removeprefix("torch."), NEAR_TIE["float32"])


def target_near_tie(target: Any) -> float:
    """The near-tie width for a loaded target: 0 for a batch-invariant one (its blocks compute
    what its one-token passes compute, so any divergence is a bug), else by its dtype."""
    return 0.0 if getattr(target, "batch_invariant", False) else near_tie(target.compute_dtype)


def first_divergence(got: Sequence[int], want: Sequence[int]) -> int | None:
    """Index of the first token where two outputs differ (the shorter length when one is a
    prefix of the other), or None when they are identical."""
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return i
    return None if len(got) == len(want) else min(len(got), len(want))


def top2_margin(model: Any, context: Sequence[int], prompt_tokens: int | None = None) -> float:
    """Gap between the two best next-token logits of a loaded model (anything with
    ``next_logits``) after ``context``, whose first ``prompt_tokens`` are the prompt (what an
    encoder-decoder encodes): one forward pass."""
    logits = model.next_logits(list(context), prompt_tokens)
    top = logits.float().topk(2).values
    return float(top[0] - top[1])


@dataclass
class Divergence:
    """Where an output first parts from the reference, and whether that is a near-tie."""

    position: int
    got: int | None
    want: int | None
    margin: float | None
    near_tie: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """'token 26: 11 vs 13, target top-2 margin 0.125 (a near-tie)'."""
        text = f"token {self.position}: {self.got} vs {self.want}"
        if self.margin is None:
            return text
        kind = (
            "a near-tie: rounding, not an algorithmic error"
            if self.near_tie
            else "NOT a near-tie: a bug"
        )
        return f"{text}, target top-2 logit margin {self.margin:.3g} ({kind})"


def compare(
    got: Sequence[int],
    want: Sequence[int],
    margin_at: Callable[[int], float | None],
    tie: float,
) -> Divergence | None:
    """None when ``got`` equals ``want``, else the divergence with the target's top-2 margin
    where they part (``margin_at(position)``, given the reference up to there; None if it
    cannot be known) and whether it is within ``tie``."""
    pos = first_divergence(got, want)
    if pos is None:
        return None
    margin = margin_at(pos)
    return Divergence(
        pos,
        got[pos] if pos < len(got) else None,
        want[pos] if pos < len(want) else None,
        margin,
        margin is not None and margin <= tie,
    )
