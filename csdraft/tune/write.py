"""Writing the winner: the ladder a candidate describes (only the rungs its k-matrix uses) and
storing it under a new name with ``csdraft.ladder.add_ladder``; never overwriting one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path

from csdraft.errors import CsdraftError
from csdraft.ladder import add_ladder, load_ladders, user_config_path
from csdraft.spec import LadderSpec
from csdraft.tune.search import Candidate


def unique_name(base: str, taken: Iterable[str]) -> str:
    """``base``, or ``base-2``, ``base-3``, ... : the first name not taken."""
    taken = set(taken)
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def tuned_spec(spec: LadderSpec, cand: Candidate, name: str, description: str = "") -> LadderSpec:
    """The ladder a candidate describes (``Candidate.spec_of``) under a new name; a lossy one
    (its rungs' deferral rules) says so in its description."""
    new = cand.spec_of(spec, name, description)
    if not new.lossless and not new.description.startswith("LOSSY"):
        rules = "; ".join(f"{r.name}: {r.deferral}" for r in new.rungs if r.lossy)
        new = new.replace(description=f"LOSSY ({rules}): {new.description}")
    return new


def store_ladder(
    base_name: str, config: Path | None, make: Callable[[str], LadderSpec]
) -> tuple[Path, str]:
    """Append the ladder ``make(name)`` to ``config`` (or the user config), named
    ``base_name`` or, when that is taken, ``base_name-2``, ``-3``, ...; never overwrites.
    Returns the file and the name used."""
    path = Path(config) if config is not None else user_config_path()
    others: dict[str, LadderSpec] = {}
    with contextlib.suppress(CsdraftError):
        others = load_ladders(config) if config is not None else load_ladders()
    final = unique_name(base_name, others)
    add_ladder(path, make(final), others)
    return path, final


def write_winner(
    spec: LadderSpec,
    cand: Candidate,
    name: str | None,
    config: Path | None,
    description: str = "",
) -> tuple[Path, str]:
    """Append the winner as a new ladder to ``config`` (or the user config); the name is
    ``name`` or ``<ladder>-tuned``, suffixed -2, -3, ... if taken. Never overwrites."""
    return store_ladder(
        name or f"{spec.name}-tuned",
        config,
        lambda final: tuned_spec(spec, cand, final, description),
    )
