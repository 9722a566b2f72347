"""Options and option parsers the csdraft commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from csdraft.errors import UsageError

LadderOpt = Annotated[
    str | None, typer.Option("--ladder", "-l", help="Ladder name from the config (default: first).")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Read ladders from this YAML file instead of the defaults."
    ),
]


def parse_numbers(text: str | None, option: str) -> list[float] | float | None:
    """'1.5' -> 1.5; '1.5,2' -> [1.5, 2.0] (one value per drafter)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{option}: expected a number or a comma list, got {text!r}") from None
    return values[0] if len(values) == 1 else values


DEFERRAL_HELP = (
    "Lossy on purpose (speculative cascades): the reviewers' deferral rule: one RULE for the "
    "target, or a comma list per reviewer (target, then each neural drafter; 'none' for a "
    "lossless one). Rules, with alpha's useful range and lossless end (q: the drafter's "
    "probabilities, p: the reviewer's): "
)


def parse_deferral(rules: str | None, alphas: str | None) -> Any:
    """--deferral 'opt' --alpha 0.1 -> the target's Deferral('opt', 0.1); comma lists give
    one rule per reviewer, with one alpha for all or one each. Every rule but 'none' needs an
    alpha in its range."""
    from csdraft.spec import deferrals_of

    if rules is None:
        if alphas is not None:
            raise UsageError("--alpha: needs --deferral RULE")
        return None
    names = [r.strip() for r in rules.split(",")]
    return deferrals_of(names, parse_numbers(alphas, "--alpha"), "--deferral")


def _deferral_rules_help() -> str:
    from csdraft.engine.deferral import RULES

    return DEFERRAL_HELP + "; ".join(f"**{k}**: {v}" for k, v in RULES.items()) + "."
