"""The event stream a generation emits.

Every consumer (live view, ``--json``, bench statistics, tune, saved traces) reads these events;
none reaches into the engine. Rungs are numbered in ladder order: 0 is the target, then the
neural drafters largest first, then Max-Gram when the ladder has it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from csdraft import jsonl


def node_depths(parents: Sequence[int]) -> list[int]:
    """Each node's depth in a tree given by its parents (-1: a child of the root, depth 1);
    parents come before their children."""
    depth: list[int] = []
    for p in parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    return depth


@dataclass
class Start:
    """Generation began: the rung names, in ladder order, the prompt length, and each rung's
    kind ('target', 'model' for neural drafters, or a cheap drafter's kind such as
    'statistical')."""

    rungs: list[str]
    prompt_tokens: int
    t: float = 0.0
    kinds: list[str] = field(default_factory=list)
    deferral: list[dict | None] = field(default_factory=list)
    """Per rung: ``{"rule": R, "alpha": A}`` where its reviews are lossy on purpose (a deferral
    rule, engine/deferral.py), else None; empty for lossless runs and older traces."""


@dataclass
class Review:
    """Rung ``reviewer`` scored ``proposed`` in one forward pass and kept ``accepted`` of them,
    then appended ``token`` of its own. ``origins`` names the rung that drafted each proposal.
    A tree draft also has ``parents`` (each node's parent, -1 for the root's children) and
    ``path`` (the kept nodes, root first); a chain has neither (its kept nodes are the first
    ``accepted``). A tree's extension pass (``TreeSettings.extend``) reviews one block below
    each leaf: each block starts at parent -1, ``path`` lists the kept nodes of all of them, and
    ``own`` the reviewer's token below each (``token`` is the first)."""

    reviewer: int
    proposed: list[int]
    origins: list[int]
    accepted: int
    token: int
    forward_s: float
    t: float
    parents: list[int] | None = None
    path: list[int] | None = None
    own: list[int] | None = None

    def kept(self) -> list[int]:
        """Indices of the kept proposals, root first."""
        return list(range(self.accepted)) if self.path is None else list(self.path)

    def depth(self) -> int:
        """How deep the draft goes (its length for a chain)."""
        if self.parents is None:
            return len(self.proposed)
        return max(node_depths(self.parents), default=0)


@dataclass
class Commit:
    """The target's review made these tokens final (already cut at eos, stop strings, limits)."""

    tokens: list[int]
    origins: list[int]
    rejected: list[int] = field(default_factory=list)
    rejected_origins: list[int] = field(default_factory=list)
    t: float = 0.0


@dataclass
class Finish:
    """Generation ended: ``reason`` is ``eos``, ``stop`` (a stop string), ``length`` or
    ``interrupted``."""

    reason: str
    t: float = 0.0


Event = Start | Review | Commit | Finish
_KINDS = {cls.__name__: cls for cls in (Start, Review, Commit, Finish)}


def to_dict(event: Event) -> dict:
    """A JSON-ready dict of an event, tagged with its kind."""
    return {"event": type(event).__name__, **asdict(event)}


def from_dict(data: dict) -> Event:
    """The event a ``to_dict`` result describes; a ValueError saying what is wrong otherwise
    (an unknown kind, a missing or unknown field, a value of the wrong type)."""
    data = dict(data)
    kind = data.pop("event", None)
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event {kind!r} (expected one of {', '.join(_KINDS)})")
    known = {f.name: f for f in fields(cls)}
    if unknown := [k for k in data if k not in known]:
        raise ValueError(f"a {kind} event has an unknown field {unknown[0]!r}")
    for name, f in known.items():
        required = f.default is MISSING and f.default_factory is MISSING
        if name not in data:
            if required:
                raise ValueError(f"a {kind} event without {name!r}")
        elif not _has_type(data[name], str(f.type)):
            raise ValueError(f"a {kind} event's {name!r} is not {f.type}: {data[name]!r:.60}")
    return cls(**data)


def _has_type(value: object, annotation: str) -> bool:
    """Whether a JSON value fits an event field's annotation ('int', 'list[int] | None',
    'list[dict | None]', ...)."""
    if annotation.endswith(" | None"):
        return value is None or _has_type(value, annotation.removesuffix(" | None"))
    if annotation.startswith("list["):
        return isinstance(value, list) and all(_has_type(v, annotation[5:-1]) for v in value)
    kinds = {"int": int, "float": int | float, "str": str, "dict": dict}
    return not isinstance(value, bool) and isinstance(value, kinds.get(annotation, object))


def save(events: Iterable[Event], path: Path, header: dict | None = None) -> None:
    """Write a trace as JSON lines (an optional header line first), atomically."""
    from csdraft.outputs import write_text

    lines = [json.dumps({"event": "Header", **header})] if header is not None else []
    lines += [json.dumps(to_dict(event)) for event in events]
    write_text(Path(path), "\n".join(lines) + "\n")


def load(path: Path) -> tuple[dict, list[Event]]:
    """Read a trace written by ``save``: its header (or ``{}``) and its events. Anything else
    (not UTF-8, a line that is no event, no events at all, no Start first) is a ValueError
    naming the line."""
    header: dict = {}
    events: list[Event] = []
    lines = jsonl.decode_lines(Path(path).read_bytes())
    for n, data in jsonl.objects(lines, "an event object"):
        if data.get("event") == "Header":
            header = {k: v for k, v in data.items() if k != "event"}
            continue
        try:
            events.append(from_dict(data))
        except ValueError as e:
            raise ValueError(f"line {n}: {e}") from None
    if not events:
        raise ValueError("it holds no events (an empty file?)")
    if not isinstance(events[0], Start):
        raise ValueError("its first event is not a Start (the rung names)")
    return header, events


def tokens_per_second(tokens: int, seconds: float) -> float | None:
    """Generated tokens per wall-clock second (None when no time was measured): the one place
    throughput is computed (``Stats``, ``runs.Outcome``, tune's and bench's totals)."""
    return tokens / seconds if seconds > 0 else None


@dataclass
class Stats:
    """Counters over one generation, computed from its events."""

    rungs: list[str]
    kinds: list[str] = field(default_factory=list)
    new_tokens: int = 0
    target_forwards: int = 0
    wall_s: float = 0.0
    finish: str = ""
    proposed: dict[int, int] = field(default_factory=dict)  # by reviewer: proposals it scored
    accepted: dict[int, int] = field(default_factory=dict)  # by reviewer: proposals it kept
    forwards: dict[int, int] = field(default_factory=dict)  # by rung: forward passes
    forward_s: dict[int, float] = field(default_factory=dict)  # by rung: seconds in forwards
    drafted: dict[int, int] = field(default_factory=dict)  # by origin: final tokens drafted
    by_position: list[list[int]] = field(default_factory=list)  # target: [reached, accepted]
    deferral: list[dict | None] = field(default_factory=list)  # by rung: lossy rule, or None

    def add(self, event: Event) -> None:
        """Fold one event into the counters."""
        if isinstance(event, Start):
            self.rungs = list(event.rungs)
            # traces saved before rungs had kinds: Max-Gram was the only non-model drafter
            self.kinds = list(event.kinds) or [
                "target",
                *("statistical" if n == "max-gram" else "model" for n in event.rungs[1:]),
            ]
            self.deferral = list(event.deferral)
        elif isinstance(event, Review):
            r = event.reviewer
            self.forwards[r] = self.forwards.get(r, 0) + 1
            self.forward_s[r] = self.forward_s.get(r, 0.0) + event.forward_s
            self.proposed[r] = self.proposed.get(r, 0) + len(event.proposed)
            self.accepted[r] = self.accepted.get(r, 0) + event.accepted
            if r == 0:
                self.target_forwards += 1
                reached = min(event.accepted + 1, event.depth())  # by depth for trees
                while len(self.by_position) < reached:
                    self.by_position.append([0, 0])
                for i in range(reached):
                    self.by_position[i][0] += 1
                    self.by_position[i][1] += i < event.accepted
        elif isinstance(event, Commit):
            self.new_tokens += len(event.tokens)
            for o in event.origins:
                self.drafted[o] = self.drafted.get(o, 0) + 1
            self.wall_s = event.t
        elif isinstance(event, Finish):
            self.finish = event.reason
            self.wall_s = event.t

    @classmethod
    def of(cls, events: Iterable[Event]) -> Stats:
        """Counters over a whole event list."""
        stats = cls(rungs=[])
        for event in events:
            stats.add(event)
        return stats

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per target forward pass."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per wall-clock second (0 when no time was measured)."""
        return tokens_per_second(self.new_tokens, self.wall_s) or 0.0

    @property
    def lossless(self) -> bool:
        """Whether no reviewer followed a lossy deferral rule."""
        return not any(self.deferral)

    def lossy_label(self) -> str:
        """'LOSSY: opt alpha=0.1 at qwen-1.5b' (each lossy reviewer), or '' for lossless runs."""
        at = [
            f"{d['rule']} alpha={d['alpha']:g} at {self.rungs[r]}"
            for r, d in enumerate(self.deferral)
            if d
        ]
        return "LOSSY: " + "; ".join(at) if at else ""

    def acceptance(self, reviewer: int) -> float:
        """Fraction of the proposals this reviewer scored that it kept."""
        n = self.proposed.get(reviewer, 0)
        return self.accepted.get(reviewer, 0) / n if n else 0.0

    def as_dict(self) -> dict:
        """The stats for ``--json``, keyed by rung name."""
        name = self.rungs.__getitem__
        return {
            "lossless": self.lossless,
            "deferral": {name(r): d for r, d in enumerate(self.deferral) if d},
            "new_tokens": self.new_tokens,
            "target_forwards": self.target_forwards,
            "tokens_per_target_forward": round(self.tokens_per_forward, 4),
            "wall_s": round(self.wall_s, 4),
            "tokens_per_s": round(self.tokens_per_s, 4),
            "finish": self.finish,
            "reviews": {
                name(r): {
                    "forwards": self.forwards.get(r, 0),
                    "proposed": self.proposed.get(r, 0),
                    "accepted": self.accepted.get(r, 0),
                    "acceptance": round(self.acceptance(r), 4),
                    "forward_s": round(self.forward_s.get(r, 0.0), 4),
                }
                for r in sorted(self.forwards)
            },
            "drafted": {name(o): n for o, n in sorted(self.drafted.items())},
            "target_acceptance_by_position": [
                round(a / n, 4) if n else 0.0 for n, a in self.by_position
            ],
        }
