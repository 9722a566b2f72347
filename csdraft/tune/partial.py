"""What ``tune k-matrix`` keeps when it is interrupted: the calibration, the predictions and the
real runs that finished, in a JSON file a person can read (``tune-LADDER-interrupted-*.json``
in the current folder, else in the temporary folder)."""

from __future__ import annotations

import datetime
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csdraft.errors import CsdraftError
from csdraft.outputs import write_text
from csdraft.tune.calibration import Calibration
from csdraft.tune.report import rungs_text
from csdraft.tune.search import Candidate
from csdraft.tune.verify import AR, RealRuns, wall

if TYPE_CHECKING:
    from rich.console import Console

SCHEMA = "csdraft-tune-partial/1"
PREDICTIONS = 20
"""The best predicted settings kept."""


def report(
    run: dict[str, Any],
    cal: Calibration,
    ranked: Sequence[Candidate] | None,
    chosen: Sequence[Candidate],
    runs: RealRuns | None,
) -> dict[str, Any]:
    """The partial report: ``run`` (what tune was asked: ladder, data, ...), the calibration,
    the best predictions (None: the search did not finish) and the finished real runs."""
    return {
        "schema": SCHEMA,
        "complete": False,
        **run,
        "calibration": calibration(cal),
        "predictions": None
        if ranked is None
        else [setting(c, cal.names) for c in ranked[:PREDICTIONS]],
        "real_runs": real_runs(runs, chosen, cal.names) if runs and runs.rounds else None,
    }


def calibration(cal: Calibration) -> dict[str, Any]:
    """The calibration's measurements: each prompt's reference run, each rung's forward cost."""
    return {
        "rungs": cal.names,
        "max_new_tokens": cal.max_new_tokens,
        "prompts": [
            {
                "prompt_tokens": len(r.prompt),
                "reference_tokens": len(r.ref),
                "finish": r.finish,
                "ar_wall_s": r.ar_wall_s,
                "reference_ids": r.ref,
            }
            for r in cal.records
        ],
        "forward_s_by_new_tokens": {
            name: dict(zip(map(str, c.lengths), c.seconds, strict=True))
            for name, c in zip(cal.names, cal.costs, strict=False)
        },
        "overhead_s_per_review": cal.overhead_s,
        "maxgram_s_per_proposal": cal.maxgram_s,
    }


def setting(c: Candidate, names: list[str]) -> dict[str, Any]:
    """One candidate setting and its predictions."""
    return {
        "label": c.label or None,
        "k_matrix": [list(r) for r in c.k],
        "rungs": rungs_text(c.k, c.names_in(names)),
        "lenience": c.lenience,
        "min_confidence": c.floor,
        "tree": None if c.tree is None else c.tree.short,
        "predicted_speedup": c.speedup if c.pred else None,
        "analytic_speedup": c.analytic,
    }


def real_runs(runs: RealRuns, chosen: Sequence[Candidate], names: list[str]) -> dict[str, Any]:
    """Each finished round: every setting's wall time and new tokens on each prompt it ran,
    whether its output equals ar's, and its speedup over ar on those prompts."""
    settings = {AR: "ar", **{str(i + 1): c for i, c in enumerate(chosen)}}
    rounds = []
    for outcomes in runs.rounds:
        done = min(len(v) for v in outcomes.values())  # prompts every setting finished
        if not done:
            continue
        ar = outcomes[AR][:done]
        rounds.append(
            {
                "prompts": list(range(done)),
                "settings": {
                    name: {
                        "wall_s": [o.wall_s for o in outs[:done]],
                        "new_tokens": [len(o.ids) for o in outs[:done]],
                        "same_as_ar": [o.ids == a.ids for o, a in zip(outs, ar, strict=False)],
                        "speedup": wall(ar) / wall(outs[:done]) if wall(outs[:done]) else None,
                    }
                    for name, outs in outcomes.items()
                },
            }
        )
    return {
        "settings": {
            n: c if isinstance(c, str) else setting(c, names) for n, c in settings.items()
        },
        "rounds": rounds,
    }


def interrupted(
    asked: dict[str, Any],
    cal: Calibration,
    ranked: Sequence[Candidate] | None,
    chosen: Sequence[Candidate],
    runs: RealRuns | None,
    err: Console,
) -> int:
    """Keep what an interrupted tune measured (``report``, ``save``), say where on ``err``,
    return 130. ``asked``: what tune was asked (its ``ladder`` names the file)."""
    kept = report(asked, cal, ranked, chosen, runs)
    path = save(kept, asked["ladder"])
    parts = ["the calibration"]
    if ranked is not None:
        parts.append(f"{min(len(ranked), PREDICTIONS)} predictions")
    if n := finished_prompts(kept):
        parts.append(f"{n} prompt{'' if n == 1 else 's'} of real runs")
    what = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    err.print(f"csdraft: interrupted; kept {what} in {path}", highlight=False, soft_wrap=True)
    return 130


def finished_prompts(partial: dict[str, Any]) -> int:
    """How many prompts of real runs the report keeps (over all rounds)."""
    real = partial.get("real_runs") or {}
    return sum(len(r["prompts"]) for r in real.get("rounds", []))


def save(partial: dict[str, Any], ladder: str, folder: Path | None = None) -> Path:
    """Write the report as ``tune-LADDER-interrupted-TIME.json`` in ``folder`` (default: the
    current one; the temporary folder when that cannot be written); returns its path."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"tune-{re.sub(r'[^A-Za-z0-9_.-]', '_', ladder)}-interrupted-{stamp}.json"
    text = json.dumps(partial, indent=1) + "\n"
    path = (Path(folder) if folder is not None else Path.cwd()) / name
    try:
        write_text(path, text)
    except CsdraftError:
        path = Path(tempfile.gettempdir()) / name
        write_text(path, text)
    return path
