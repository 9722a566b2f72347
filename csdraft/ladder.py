"""cascades.yaml <-> ladder specs: reading ladders (a list of rungs; the older target/drafters/
maxgram shape is read too), writing them back, and the config files they live in."""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from csdraft.errors import CsdraftError, UsageError
from csdraft.models.load import backend_class
from csdraft.spec import (
    MAX_GRAM,
    MODEL,
    RUNG_KINDS,
    GenerationDefaults,
    LadderSpec,
    RungSpec,
    rung_settings,
    spread,
    validate,
)

_LADDER_KEYS = (
    "description",
    "rungs",
    "k_matrix",
    "drafts_below",
    "dtype",
    "device",
    "backend",
    "generation",
)
_OLD_KEYS = ("target", "drafters", "maxgram", "lenience", "min_confidence", "tree", "deferral")


def parse_ladder(name: str, raw: Any) -> LadderSpec:
    """One ladder's YAML mapping as a validated spec; messages name the ladder and the key."""
    where = f"ladder '{name}'"
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping with rungs and k_matrix")
    if any(k in raw for k in _OLD_KEYS):
        if "rungs" in raw:
            old = ", ".join(k for k in _OLD_KEYS if k in raw)
            raise UsageError(f"{where}: {old} belong to the old shape; give each rung its settings")
        raw = _from_old_shape(raw, where)
    unknown = set(raw) - set(_LADDER_KEYS)
    if unknown:
        raise UsageError(
            f"{where}: unknown keys {sorted(unknown)} (allowed: {', '.join(_LADDER_KEYS)})"
        )
    rungs_raw = raw.get("rungs")
    if not isinstance(rungs_raw, list) or not rungs_raw:
        raise UsageError(f"{where}: rungs: expected a list, the target first, then its drafters")
    defaults = {k: raw[k] for k in ("dtype", "device", "backend") if k in raw}
    rungs = tuple(_rung(r, f"{where}: rungs[{i}]", defaults) for i, r in enumerate(rungs_raw))
    k_raw = raw.get("k_matrix", [] if len(rungs) == 1 else None)
    if k_raw is None:
        d = len(rungs) - 1
        raise UsageError(f"{where}: k_matrix: missing; a {d}x{d} matrix is needed")
    spec = LadderSpec(
        name,
        rungs,
        k_raw,
        _generation(raw.get("generation"), f"{where}: generation"),
        str(raw.get("description", "")),
        raw.get("drafts_below"),
    )
    return validate(spec, where)


def _rung(raw: Any, where: str, defaults: dict[str, Any]) -> RungSpec:
    """One rung's mapping (or a bare model reference) with the ladder's defaults filled in."""
    if isinstance(raw, str):
        raw = {"model": raw}
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping such as {{name: N, model: REF}}")
    kind = raw.get("kind", MODEL)
    if kind not in RUNG_KINDS:
        raise UsageError(f"{where}: kind: expected one of {', '.join(RUNG_KINDS)}, got {kind!r}")
    settings = rung_settings(kind)
    values: dict[str, Any] = {"kind": kind}
    if kind == MODEL:
        if not isinstance(raw.get("model"), str) or not raw["model"]:
            raise UsageError(f"{where}: model: missing (a pack, a folder, a .gguf file, a hub id)")
        values["name"] = str(raw.get("name") or Path(raw["model"]).name)
    else:
        values["name"] = str(raw.get("name") or kind)
    where = f"{where} ({values['name']})"
    unknown = set(raw) - {"kind", "name", *settings}
    if unknown:
        raise UsageError(
            f"{where}: unknown keys {sorted(unknown)} for a {kind} rung "
            f"(allowed: kind, name, {', '.join(settings)})"
        )
    if kind == MODEL:
        try:
            name = raw.get("backend", defaults.get("backend", RungSpec.backend))
            backend = backend_class(str(name))
        except UsageError as e:
            raise UsageError(f"{where}: backend: {e}") from None
        dtype = defaults.get("dtype", RungSpec.dtype)
        if len(backend.dtypes) == 1:  # a backend with its own format (llama.cpp: the GGUF's)
            dtype = backend.dtypes[0]
        raw = {**defaults, "dtype": dtype, **raw}
    for key, f in settings.items():
        if key in raw:
            values[f.name] = f.metadata["parse"](raw[key], f"{where}: {key}")
    return RungSpec(**values)


def _generation(raw: Any, where: str) -> GenerationDefaults:
    if raw is None:
        return GenerationDefaults()
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping")
    allowed = [f.name for f in dataclasses.fields(GenerationDefaults)]
    if set(raw) - set(allowed):
        unknown = sorted(set(raw) - set(allowed))
        raise UsageError(f"{where}: unknown keys {unknown} (allowed: {', '.join(allowed)})")
    stop = raw.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else stop
    return GenerationDefaults(**{**raw, "stop": stop})


def _from_old_shape(raw: dict, where: str) -> dict:
    """A ladder in the old shape (target, drafters, maxgram, per-drafter lists) as a rung list."""
    unknown = set(raw) - set(_LADDER_KEYS) - set(_OLD_KEYS)
    if unknown:
        allowed = ", ".join(sorted({*_LADDER_KEYS, *_OLD_KEYS} - {"rungs"}))
        raise UsageError(f"{where}: unknown keys {sorted(unknown)} (allowed: {allowed})")
    if "target" not in raw:
        raise UsageError(f"{where}: target: missing (the model whose output you want)")
    drafters = raw.get("drafters") or []
    if not isinstance(drafters, list):
        raise UsageError(f"{where}: drafters: expected a list, largest model first")
    places = ["target", *(f"drafters[{i}]" for i in range(len(drafters)))]
    models = [
        _as_mapping(m, f"{where}: {place}")
        for m, place in zip((raw["target"], *drafters), places, strict=True)
    ]
    names = ", ".join(str(m.get("name") or Path(str(m.get("model"))).name) for m in models)
    for key in ("lenience", "min_confidence"):  # one number for all drafters, or one each
        if key in raw:
            _spread(raw[key], models[1:], key, where, "one per neural drafter")
    for key in ("tree", "deferral"):  # one mapping for the target, or one per reviewer
        if raw.get(key) is not None:
            value = raw[key] if isinstance(raw[key], list) else [raw[key]]
            if len(value) == 1:
                value = value + [None] * (len(models) - 1)
            _spread(value, models, key, where, f"one per reviewer: {names}")
    maxgram = raw.get("maxgram", False)
    if maxgram is True:
        models.append({"kind": MAX_GRAM})
    elif isinstance(maxgram, dict):
        models.append({"kind": MAX_GRAM, **maxgram})
    elif maxgram not in (False, None):
        raise UsageError(f"{where}: maxgram: expected true, false or a mapping")
    new = {k: raw[k] for k in _LADDER_KEYS if k in raw}
    return {**new, "rungs": models}


def _as_mapping(model: Any, where: str) -> dict:
    if isinstance(model, str):
        return {"model": model}
    if not isinstance(model, dict):
        raise UsageError(f"{where}: expected a model reference or {{model: REF, name: NAME}}")
    return dict(model)


def _spread(value: Any, models: list[dict], key: str, where: str, each: str) -> None:
    """Set ``key`` on each model from one value for all or a list of one per model."""
    values = spread(value, len(models), f"{where}: {key} ({each})")
    for model, v in zip(models, values, strict=True):
        if v is not None:
            model[key] = v


def ladder_to_yaml(spec: LadderSpec) -> dict:
    """A ladder as the mapping ``parse_ladder`` reads back: every rung with the settings that
    differ from a fresh rung's (a model rung always names its model, dtype and device)."""
    fresh = RungSpec()
    rungs = []
    for rung in spec.rungs:
        out: dict[str, Any] = {"kind": rung.kind} if rung.kind != MODEL else {}
        out["name"] = rung.name
        for key, f in rung_settings(rung.kind).items():
            value = getattr(rung, f.name)
            if value != getattr(fresh, f.name) or key in ("model", "dtype", "device"):
                out[key] = _plain(value)
        rungs.append(out)
    g = spec.generation
    out = {"description": spec.description} if spec.description else {}
    return out | {
        "rungs": rungs,
        "k_matrix": [list(row) for row in spec.k_matrix],
        **({"drafts_below": spec.drafts_below} if spec.drafts_below is not None else {}),
        "generation": {**dataclasses.asdict(g), "stop": list(g.stop)},
    }


def _plain(value: Any) -> Any:
    """Settings objects (tree, deferral) as YAML mappings."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# ------------------------------------------------------------------------------ config files


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UsageError(f"{key!r} is given twice (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_config(text: str, source: str) -> dict[str, LadderSpec]:
    """All ladders in one YAML text, in file order."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except RecursionError:
        raise UsageError(f"{source}: malformed YAML: nested too deep") from None
    except UsageError as e:
        raise UsageError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise UsageError(f"{source}: malformed YAML{at}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: expected a mapping of ladder names to ladders")
    ladders = {}
    for name, body in raw.items():
        try:
            ladders[str(name)] = parse_ladder(str(name), body)
        except UsageError as e:
            raise UsageError(f"{source}: {e}") from None
    return ladders


SHIPPED = "csdraft/cascades.yaml"


def default_config_text() -> str:
    """The ladders shipped with csdraft."""
    return resources.files("csdraft").joinpath("cascades.yaml").read_text()


def user_config_path() -> Path:
    """Where ``tune --write`` stores ladders when no ``--config`` is given."""
    if os.environ.get("CSDRAFT_CONFIG"):
        return Path(os.environ["CSDRAFT_CONFIG"])
    from platformdirs import user_config_dir

    return Path(user_config_dir("csdraft")) / "cascades.yaml"


def load_ladders(config: Path | None = None) -> dict[str, LadderSpec]:
    """Ladders from ``config`` alone, or the shipped ones followed by the user's own file (a
    name in both is refused, naming both files)."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise UsageError(f"config file {path} not found")
        ladders = parse_config(_read(path), str(path))
        if not ladders:
            raise UsageError(f"{path}: holds no ladders")
        return ladders
    ladders = parse_config(default_config_text(), SHIPPED)
    user = user_config_path()
    if user.is_file():
        own = parse_config(_read(user), str(user))
        for name in own.keys() & ladders.keys():
            raise UsageError(
                f"{user}: ladder '{name}' is also shipped in {SHIPPED}; rename yours"
            )
        ladders.update(own)
    return ladders


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file {path}: {e}") from None


def get_ladder(name: str | None = None, config: Path | None = None) -> LadderSpec:
    """The named ladder, or the first (default) one."""
    ladders = load_ladders(config)
    if name is None:
        return next(iter(ladders.values()))
    if name not in ladders:
        raise UsageError(f"unknown ladder '{name}'; known ladders: {', '.join(ladders)}")
    return ladders[name]


def add_ladder(path: Path, spec: LadderSpec, others: dict[str, LadderSpec] | None = None) -> None:
    """Append a ladder to a config file, atomically, never overwriting a name: the whole new
    file is read back (every ladder in it validated, none named like one in ``others``) before
    it replaces the old one, so a write never leaves a config that cannot be read."""
    from csdraft.outputs import write_text

    path = Path(path)
    old = _read(path) if path.is_file() else ""
    existing = parse_config(old, str(path)) if old.strip() else {}
    if spec.name in existing:
        raise CsdraftError(f"{path} already has a ladder named '{spec.name}'; choose another name")
    if spec.name in (others or {}):
        raise CsdraftError(f"a ladder named '{spec.name}' is already known; choose another name")
    block = yaml.safe_dump({spec.name: ladder_to_yaml(spec)}, sort_keys=False, width=100)
    text = old + ("\n" if old and not old.endswith("\n") else "") + ("\n" if old else "") + block
    try:
        parse_config(text, str(path))
    except UsageError as e:  # a bug if it happens: say so rather than write a broken file
        raise CsdraftError(f"not written, the new ladder would not read back: {e}") from None
    write_text(path, text)
