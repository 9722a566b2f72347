"""Writing the winner: the ladder a candidate describes (only the rungs its k-matrix uses) and
storing it under a new name with ``csdraft.ladder.add_ladder``; never overwriting one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from csdraft.engine import kmatrix
from csdraft.errors import CsdraftError
from csdraft.ladder import (
    LadderSpec,
    add_ladder,
    check_k_matrix,
    check_lenience,
    check_min_confidence,
    load_ladders,
    parse_config,
    user_config_path,
)
from csdraft.tune import settings
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
    """The ladder a candidate describes: only the rungs its k-matrix uses, its k-matrix over
    them, its lenience and min_confidence, under a new name."""
    kept, sub = kmatrix.sub_ladder(cand.k)
    n = len(spec.drafters)
    neural = [r for r in kept if r <= n]
    new = replace(
        spec,
        name=name,
        drafters=tuple(spec.drafters[r - 1] for r in neural),
        maxgram=spec.maxgram if any(r > n for r in kept) else None,
        k_matrix=(),
        lenience=(),
        min_confidence=(),
        tree=(cand.tree, *(None for _ in neural)),
        description=description or spec.description,
    )
    where = f"ladder '{name}'"
    return replace(
        new,
        k_matrix=check_k_matrix(sub, new, where),
        lenience=check_lenience(settings.for_rungs(cand.lenience, neural), len(neural), where),
        min_confidence=check_min_confidence(
            settings.for_rungs(cand.floor, neural), len(neural), where
        ),
    )


def store_ladder(
    base_name: str, config: Path | None, make: Callable[[str], LadderSpec]
) -> tuple[Path, str]:
    """Append the ladder ``make(name)`` to ``config`` (or the user config), named
    ``base_name`` or, when that is taken, ``base_name-2``, ``-3``, ...; never overwrites.
    Returns the file and the name used."""
    path = Path(config) if config is not None else user_config_path()
    taken: set[str] = set()
    with contextlib.suppress(CsdraftError):
        taken |= set(load_ladders(config))
    if path.is_file():
        taken |= set(parse_config(path.read_text(), str(path)))
    final = unique_name(base_name, taken)
    add_ladder(path, make(final))
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
