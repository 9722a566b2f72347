"""Bench results files: written atomically, read back with their shape checked (a damaged or
hand-edited file is one line naming what is wrong and where), their one-line title, and the
first difference between two runs' settings (what ``--resume`` refuses)."""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csdraft.errors import UsageError
from csdraft.outputs import write_text

SCHEMA = "csdraft-bench/1"

NUMBER = (int, float)


@dataclass(frozen=True)
class Each:
    """A mapping whose every value has ``shape``, holding at least the keys ``required``."""

    shape: Any
    required: tuple[str, ...] = ()


RECORD = {"new_tokens": int, "wall_s": NUMBER, "forwards": dict}
SHAPE = {
    "settings": {
        "dataset": str,
        "temperature": NUMBER,
        "max_new_tokens": int,
        "sd_block": int,
        "pld_block": int,
    },
    "ladder": {"name": str, "rungs": [str], "dtype": str, "k_matrix": list},
    "machine": {"platform": object, "processor": object, "torch": object},
    "methods": [str],
    "skipped": dict,
    "costs": dict,
    "prompts": [{"index": int, "results": Each(RECORD, ("ar",))}],
}
"""What the reports read from a results file, unconditionally: a dict lists required keys, a
one-element list a list of such items, a type (or tuple of types) the value's type, ``object``
only that the key is there."""


def shape_problem(value: Any, shape: Any, where: str = "") -> str | None:
    """The first place ``value`` does not have ``shape`` (see ``SHAPE``), in words, or None."""
    at = where or "the file"
    if isinstance(shape, dict | Each):
        if not isinstance(value, dict):
            return f"{at}: expected an object, got {_kind(value)}"
        keys = shape.required if isinstance(shape, Each) else tuple(shape)
        for key in keys:
            if key not in value:
                return f"no '{key}'" + (f" in {where}" if where else "")
        items = (
            value.items()
            if isinstance(shape, Each)
            else ((k, value[k]) for k in shape if shape[k] is not object)
        )
        for key, item in items:
            sub = shape.shape if isinstance(shape, Each) else shape[key]
            if found := shape_problem(item, sub, f"{where}.{key}" if where else str(key)):
                return found
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{at}: expected a list, got {_kind(value)}"
        for i, item in enumerate(value):
            if found := shape_problem(item, shape[0], f"{where}[{i}]"):
                return found
        return None
    if shape is object or (isinstance(value, shape) and not isinstance(value, bool)):
        return None
    return f"{at}: expected {_kind_of(shape)}, got {_kind(value)}"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), reprlib.repr(value)
    )


def _kind_of(shape: Any) -> str:
    return {str: "a string", int: "an integer", NUMBER: "a number", dict: "an object"}.get(
        shape, "a list"
    )


def write_results(results: Mapping[str, Any], path: Path) -> None:
    """The results JSON (indented), written atomically, parent folders created."""
    write_text(Path(path), json.dumps(results, indent=1) + "\n")


def read_results(path: Path, flag: str = "--compare") -> dict[str, Any]:
    """A results file written by ``run_bench``, its shape checked; anything else is a one-line
    UsageError naming ``flag``, the file and what is wrong where."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{flag}: {path} not found") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{flag}: {path} is not UTF-8 text (byte offset {e.start})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{flag}: cannot read {path}: {e}") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise UsageError(f"{flag}: {path} is not a csdraft bench results file")
    if problem := shape_problem(results, SHAPE):
        raise UsageError(f"{flag}: {path} is damaged: {problem}")
    return results


def title(results: Mapping[str, Any]) -> str:
    """One line naming the dataset, ladder and generation settings."""
    s, lad, n = results["settings"], results["ladder"], len(results["prompts"])
    mode = "greedy" if not s["temperature"] else f"temperature {s['temperature']}"
    return (
        f"csdraft bench · {s['dataset']} · {n} prompt{'' if n == 1 else 's'} · ladder "
        f"{lad['name']} ({' > '.join(lad['rungs'])}, {lad['dtype']}) · {s['max_new_tokens']} "
        f"new tokens · {mode}"
    )


def as_json(value: Any) -> Any:
    """``value`` as it reads back from a results file (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def first_difference(old: Any, new: Any, where: str = "") -> str | None:
    """The first place two JSON values differ, as 'target.dtype 'int8' -> 'bfloat16'' (the
    key path, then the old and the new value), or None when they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                was = reprlib.repr(old[key]) if key in old else "(none)"
                now = reprlib.repr(new[key]) if key in new else "(none)"
                return f"{sub} {was} -> {now}"
            if found := first_difference(old[key], new[key], sub):
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if found := first_difference(a, b, f"{where}[{i}]"):
                return found
        return None
    if old == new:
        return None
    return f"{where or 'value'} {reprlib.repr(old)} -> {reprlib.repr(new)}"
