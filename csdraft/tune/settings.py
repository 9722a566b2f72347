"""Per-drafter settings (lenience, min_confidence) as a candidate holds them, and how they map
onto the sub-ladder a k-matrix uses.

A setting is one number for every neural drafter, or a tuple with one per neural drafter in
ladder order (index ``d - 1`` for drafting rung ``d``), as ``LadderSpec.lenience`` and
``LadderSpec.min_confidence`` hold them. Cheap drafters (Max-Gram) have neither.
"""

from __future__ import annotations

from collections.abc import Sequence

PerDrafter = float | tuple[float, ...]
"""A per-drafter setting: one value for every neural drafter, or one each."""
Lenience = PerDrafter


def for_rungs(value: PerDrafter, neural: Sequence[int]) -> float | list[float]:
    """``value`` for the neural drafters ``neural`` (ladder indices) of a sub-ladder: one number
    stays one number, a tuple keeps those drafters' entries."""
    return value if isinstance(value, int | float) else [value[d - 1] for d in neural]


def of_rung(value: PerDrafter, rung: int) -> float:
    """The value for neural drafting rung ``rung`` (ladder index)."""
    return float(value) if isinstance(value, int | float) else float(value[rung - 1])


def from_spec(values: Sequence[float], neutral: float) -> PerDrafter:
    """A ladder's per-drafter setting as a candidate holds it: one number when all agree."""
    if not values or len(set(values)) == 1:
        return float(values[0]) if values else neutral
    return tuple(float(v) for v in values)


def shown(value: PerDrafter, rungs: Sequence[int]) -> PerDrafter:
    """``value`` on the neural drafters among ``rungs`` (ladder indices; others, such as
    Max-Gram, skipped): what a setting using only those rungs has (one number when all agree)."""
    if isinstance(value, int | float):
        return value
    kept = [value[d - 1] for d in sorted(rungs) if d <= len(value)]
    return from_spec(kept, 0.0) if kept else value


def text(value: PerDrafter) -> str:
    """'2' for one value (or a tuple of equal ones), '1.5,2' otherwise."""
    if isinstance(value, int | float):
        return f"{value:g}"
    values = set(value)
    return f"{next(iter(values)):g}" if len(values) == 1 else ",".join(f"{v:g}" for v in value)


def largest(value: PerDrafter) -> float:
    """The largest value (ranks lenient settings: less lenient first among equals)."""
    return value if isinstance(value, int | float) else max(value)
