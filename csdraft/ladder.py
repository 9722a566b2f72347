"""cascades.yaml -> validated ladder specs (the models, Max-Gram, k-matrix and settings of each
ladder), and writing ladders back."""

from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from csdraft.engine import kmatrix
from csdraft.engine.deferral import RULES, Deferral
from csdraft.engine.tree import TreeSettings
from csdraft.errors import CsdraftError, UsageError

DTYPES = ("bfloat16", "float16", "float32", "int8")
BACKENDS = ("transformers", "llama.cpp")
"""What can run a model rung (``backend:`` in the YAML); see ``csdraft.models.load``.
``llama.cpp`` runs a GGUF file as it is (its own quantization: no ``dtype``), on the CPU."""

TREE_BACKENDS = ("transformers",)
"""Backends whose scorers score token trees (``score_tree``, ``keep_path``)."""

GGUF_DTYPE = "gguf"
"""The ``dtype`` of a llama.cpp model: the GGUF's own quantization runs."""


@dataclass(frozen=True)
class ModelSpec:
    """One neural rung: what to load, what to call it, where it runs, and which backend runs it."""

    ref: str
    name: str
    dtype: str = "bfloat16"
    device: str = "cpu"
    backend: str = "transformers"
    window: int | None = None
    """A drafter's view of a long prompt: only its last ``window`` tokens (and every token
    after the prompt). A cheaper pass over the prompt; drafts may change, output never."""
    vocab: int | None = None
    """A drafter's draft vocabulary: its output head cut to the ``vocab`` lowest token ids and
    the special tokens (``models.draft_vocab``). A cheaper pass; drafts may change, output
    never. None: the whole head."""


@dataclass(frozen=True)
class MaxGramSpec:
    """Max-Gram settings; ``bigram_text`` is an optional text file to learn the fallback from;
    ``branches`` > 1 makes its drafts token trees (``engine.maxgram.MaxGram``)."""

    max_ngram: int = 8
    min_ngram: int = 1
    bigram_text: str | None = None
    branches: int = 1


@dataclass(frozen=True)
class GenerationDefaults:
    """Generation settings a ladder starts from; command-line flags override them."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class LadderSpec:
    """A validated ladder: target, neural drafters (largest first), optional Max-Gram."""

    name: str
    target: ModelSpec
    drafters: tuple[ModelSpec, ...] = ()
    maxgram: MaxGramSpec | None = None
    k_matrix: tuple[tuple[int, ...], ...] = ()
    lenience: tuple[float, ...] = ()
    min_confidence: tuple[float, ...] = ()
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    description: str = ""
    tree: tuple[TreeSettings | None, ...] = ()
    """Per reviewing rung (target, then each neural drafter): how the drafts it reviews branch
    (None: linear drafts)."""
    deferral: tuple[Deferral | None, ...] = ()
    """Per reviewer (target first, then each neural drafter): its deferral rule, or None for
    the lossless review."""

    def __post_init__(self) -> None:
        # Per-drafter settings left empty mean the neutral value for every drafter.
        if not self.lenience:
            object.__setattr__(self, "lenience", (1.0,) * len(self.drafters))
        if not self.min_confidence:
            object.__setattr__(self, "min_confidence", (0.0,) * len(self.drafters))
        if not self.tree:
            object.__setattr__(self, "tree", (None,) * (len(self.drafters) + 1))
        if not self.deferral:
            object.__setattr__(self, "deferral", (None,) * (len(self.drafters) + 1))

    @property
    def lossless(self) -> bool:
        """Whether no reviewer has a lossy deferral rule."""
        return all(d is None or d.lossless for d in self.deferral)

    @property
    def rung_names(self) -> list[str]:
        """Names in ladder order: target, drafters, then max-gram if present."""
        return [self.target.name, *(d.name for d in self.drafters)] + (
            ["max-gram"] if self.maxgram else []
        )

    @property
    def drafting_rungs(self) -> int:
        """How many rungs draft for someone: the k-matrix is this square."""
        return len(self.drafters) + (1 if self.maxgram else 0)

    def with_settings(
        self,
        k_matrix: Any = None,
        lenience: Any = None,
        name: str | None = None,
        min_confidence: Any = None,
        where: str = "command line",
        deferral: Any = None,
    ) -> LadderSpec:
        """A copy with another k-matrix, lenience, min_confidence and/or deferral rules,
        validated like the YAML."""
        spec = self
        if deferral is not None:
            spec = replace(spec, deferral=check_deferral(deferral, len(self.drafters), where))
        if k_matrix is not None:
            spec = replace(spec, k_matrix=check_k_matrix(k_matrix, self, where))
        if lenience is not None:
            spec = replace(spec, lenience=check_lenience(lenience, len(self.drafters), where))
        if min_confidence is not None:
            floors = check_min_confidence(min_confidence, len(self.drafters), where)
            spec = replace(spec, min_confidence=floors)
        check_lenient_or_lossy(spec, where)
        return replace(spec, name=name) if name else spec

    def explain_k_matrix(self) -> list[str]:
        """The k-matrix in words, one line per reviewing rung (``kmatrix.explain``)."""
        neural = [True] * (len(self.drafters) + 1) + ([False] if self.maxgram else [])
        return kmatrix.explain(self.k_matrix, self.rung_names, neural)


def _where(ladder: str, key: str) -> str:
    return f"ladder '{ladder}': {key}"


def check_k_matrix(value: Any, spec: LadderSpec, where: str) -> tuple[tuple[int, ...], ...]:
    """A k-matrix checked against the ladder (``kmatrix.check``), or a one-line UsageError."""
    try:
        return kmatrix.check(value, spec.rung_names, spec.rung_names[1:])
    except kmatrix.KMatrixError as e:
        raise UsageError(f"{where}: {e}") from None


def check_lenience(value: Any, drafters: int, where: str) -> tuple[float, ...]:
    """Lenience for inner reviews: one number for all, or one per neural drafter, each >= 1."""
    return _per_drafter(value, drafters, where, "lenience", lambda v: v >= 1, "numbers >= 1")


def check_min_confidence(value: Any, drafters: int, where: str) -> tuple[float, ...]:
    """Per neural drafter: its draft ends after a token it gave less than this probability."""
    return _per_drafter(
        value, drafters, where, "min_confidence", lambda v: 0 <= v < 1, "numbers in [0, 1)"
    )


def check_deferral(value: Any, drafters: int, where: str) -> tuple[Deferral | None, ...]:
    """Deferral rules: one ``{rule: R, alpha: A}`` for the target, or a list with one such
    mapping (or null) per reviewer, target first, then each neural drafter."""
    if isinstance(value, Deferral | dict):
        value = [value]
    elif not isinstance(value, list | tuple) or len(value) != drafters + 1:
        raise UsageError(
            f"{where}: deferral: expected {{rule: R, alpha: A}} for the target or a list of "
            f"{drafters + 1} (target, then each neural drafter), got {reprlib.repr(value)}"
        )
    out: list[Deferral | None] = []
    for v in value:
        if v is None or isinstance(v, Deferral):
            out.append(v)
            continue
        if not isinstance(v, dict) or set(v) - {"rule", "alpha"} or "rule" not in v:
            raise UsageError(
                f"{where}: deferral: expected {{rule: R, alpha: A}} or null, got {reprlib.repr(v)}"
            )
        alpha = v.get("alpha", 0.0)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise UsageError(f"{where}: deferral: alpha must be a number, got {alpha!r}")
        try:
            out.append(Deferral(str(v["rule"]), float(alpha)))
        except ValueError as e:
            raise UsageError(f"{where}: deferral: {e}; rules: {', '.join(RULES)}") from None
    return tuple(out + [None] * (drafters + 1 - len(out)))


def check_lenient_or_lossy(spec: LadderSpec, where: str) -> None:
    """A drafter may loosen its reviews by lenience or by a deferral rule, not both."""
    rows = zip(spec.drafters, spec.lenience, spec.deferral[1:], strict=True)
    for drafter, lenience, rule in rows:
        if lenience > 1 and rule is not None and not rule.lossless:
            raise UsageError(
                f"{where}: deferral: {drafter.name} has lenience {lenience:g} and deferral "
                f"{rule}; choose one"
            )


def _per_drafter(
    value: Any, drafters: int, where: str, key: str, valid: Any, expect: str
) -> tuple[float, ...]:
    values = value if isinstance(value, list | tuple) else [value] * drafters
    if len(values) != drafters:
        raise UsageError(
            f"{where}: {key}: expected one number or a list of {drafters} (one per neural "
            f"drafter), got {reprlib.repr(value)}"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not valid(v):
            raise UsageError(f"{where}: {key}: expected {expect}, got {reprlib.repr(v)}")
    return tuple(float(v) for v in values)


def _model(
    value: Any, where: str, dtype: str, device: str, backend: str = "transformers"
) -> ModelSpec:
    if isinstance(value, str):
        value = {"model": value}
    if not isinstance(value, dict) or not isinstance(value.get("model"), str):
        raise UsageError(f"{where}: expected a model reference or {{model: REF, name: NAME}}")
    unknown = set(value) - {"model", "name", "dtype", "device", "backend", "window", "vocab"}
    if unknown:
        raise UsageError(
            f"{where}: unknown keys {sorted(unknown)} (allowed: model, name, dtype, device, "
            "backend, window, vocab)"
        )
    for key, what in (("window", "tokens"), ("vocab", "token ids")):
        n = value.get(key)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
            raise UsageError(f"{where}: {key}: expected a whole number of {what}, got {n!r}")
        if n is not None and n < 1:
            raise UsageError(f"{where}: {key}: expected at least 1, got {n}")
    spec = ModelSpec(
        ref=value["model"],
        name=str(value.get("name") or Path(value["model"]).name),
        dtype=str(value.get("dtype", dtype)),
        device=str(value.get("device", device)),
        backend=str(value.get("backend", backend)),
        window=value.get("window"),
        vocab=value.get("vocab"),
    )
    if spec.backend not in BACKENDS:
        raise UsageError(
            f"{where}: backend: expected one of {', '.join(BACKENDS)}, got {spec.backend!r}"
        )
    if spec.backend == "llama.cpp":
        return _llamacpp_model(spec, value, where)
    if spec.dtype not in DTYPES:
        raise UsageError(f"{where}: dtype: expected one of {', '.join(DTYPES)}, got {spec.dtype!r}")
    return spec


def _llamacpp_model(spec: ModelSpec, value: dict, where: str) -> ModelSpec:
    """A llama.cpp model: a GGUF (offline pack or .gguf path) on the CPU. A ``dtype`` set on
    the model itself is refused (the GGUF's quantization runs); the ladder's ``dtype`` applies
    to its transformers models only and is ignored here."""
    if "dtype" in value and value["dtype"] != GGUF_DTYPE:
        raise UsageError(
            f"{where}: dtype does not apply to backend llama.cpp (it runs the GGUF's own "
            f"quantization); drop dtype {value['dtype']!r} from this model"
        )
    if spec.device != "cpu":
        raise UsageError(
            f"{where}: backend llama.cpp runs on the CPU here; got device {spec.device!r}"
        )
    if spec.vocab is not None:
        raise UsageError(f"{where}: vocab: a draft vocabulary needs the transformers backend")
    from csdraft.models.packs import has_gguf

    if not has_gguf(spec.ref):
        raise UsageError(
            f"{where}: backend llama.cpp runs GGUF files: {spec.ref!r} is neither an offline "
            "pack nor a path ending in .gguf"
        )
    return replace(spec, dtype=GGUF_DTYPE)


_LADDER_KEYS = {
    "description", "target", "drafters", "maxgram", "k_matrix", "lenience", "dtype", "device",
    "min_confidence", "tree", "deferral",
    "generation", "backend",
}  # fmt: skip


def parse_ladder(name: str, raw: Any) -> LadderSpec:
    """Validate one ladder's mapping from YAML; messages name the ladder and the key."""
    if not isinstance(raw, dict):
        raise UsageError(f"ladder '{name}': expected a mapping with target, drafters, k_matrix")
    unknown = set(raw) - _LADDER_KEYS
    if unknown:
        raise UsageError(
            f"ladder '{name}': unknown keys {sorted(unknown)} "
            f"(allowed: {', '.join(sorted(_LADDER_KEYS))})"
        )
    if "target" not in raw:
        raise UsageError(f"ladder '{name}': target: missing (the model whose output you want)")
    dtype, device = str(raw.get("dtype", "bfloat16")), str(raw.get("device", "cpu"))
    if dtype not in DTYPES:
        raise UsageError(
            f"{_where(name, 'dtype')}: expected one of {', '.join(DTYPES)}, got {dtype!r}"
        )
    backend = str(raw.get("backend", "transformers"))
    target = _model(raw["target"], _where(name, "target"), dtype, device, backend)
    if target.window is not None:
        raise UsageError(
            f"{_where(name, 'target')}: window: only drafters may see part of the prompt; "
            "the target sees all of it"
        )
    if target.vocab is not None:
        raise UsageError(
            f"{_where(name, 'target')}: vocab: only drafters may have a draft vocabulary; "
            "the target's output head decides the output and is never cut"
        )
    drafters_raw = raw.get("drafters") or []
    if not isinstance(drafters_raw, list):
        raise UsageError(f"{_where(name, 'drafters')}: expected a list, largest model first")
    drafters = tuple(
        _model(d, _where(name, f"drafters[{i}]"), dtype, device, backend)
        for i, d in enumerate(drafters_raw)
    )
    mg_raw = raw.get("maxgram", False)
    maxgram = None
    if mg_raw is True:
        maxgram = MaxGramSpec()
    elif isinstance(mg_raw, dict):
        try:
            maxgram = MaxGramSpec(**mg_raw)
        except TypeError:
            raise UsageError(
                f"{_where(name, 'maxgram')}: allowed keys are max_ngram, min_ngram, bigram_text, "
                "branches"
            ) from None
        if not (isinstance(maxgram.min_ngram, int) and isinstance(maxgram.max_ngram, int)) or not (
            1 <= maxgram.min_ngram <= maxgram.max_ngram
        ):
            raise UsageError(
                f"{_where(name, 'maxgram')}: need integers 1 <= min_ngram <= max_ngram"
            )
        if not isinstance(maxgram.branches, int) or maxgram.branches < 1:
            raise UsageError(
                f"{_where(name, 'maxgram')}: branches: expected an integer >= 1 (1: linear "
                f"drafts), got {maxgram.branches!r}"
            )
    elif mg_raw not in (False, None):
        raise UsageError(f"{_where(name, 'maxgram')}: expected true, false or a mapping")
    names = [target.name, *(d.name for d in drafters)]
    if len(set(names)) != len(names) or "max-gram" in names:
        raise UsageError(f"ladder '{name}': model names must be unique and not 'max-gram': {names}")
    spec = LadderSpec(name, target, drafters, maxgram, description=str(raw.get("description", "")))
    k_raw = raw.get("k_matrix", [] if spec.drafting_rungs == 0 else None)
    if k_raw is None:
        raise UsageError(
            f"{_where(name, 'k_matrix')}: missing; "
            f"a {spec.drafting_rungs}x{spec.drafting_rungs} matrix is needed"
        )
    gen_raw = raw.get("generation") or {}
    if not isinstance(gen_raw, dict):
        raise UsageError(f"{_where(name, 'generation')}: expected a mapping")
    try:
        gen = GenerationDefaults(**{**gen_raw, "stop": tuple(gen_raw.get("stop") or ())})
    except TypeError:
        allowed = ", ".join(GenerationDefaults.__dataclass_fields__)
        raise UsageError(f"{_where(name, 'generation')}: allowed keys are {allowed}") from None
    check_sampling(gen.temperature, gen.top_k, gen.top_p, _where(name, "generation"))
    spec = replace(
        spec,
        k_matrix=check_k_matrix(k_raw, spec, f"ladder '{name}'"),
        lenience=check_lenience(raw.get("lenience", 1.0), len(drafters), f"ladder '{name}'"),
        min_confidence=check_min_confidence(
            raw.get("min_confidence", 0.0), len(drafters), f"ladder '{name}'"
        ),
        generation=gen,
    )
    spec = replace(spec, tree=check_tree(raw.get("tree"), spec, f"ladder '{name}'"))
    if raw.get("deferral") is not None:
        rules = check_deferral(raw["deferral"], len(drafters), f"ladder '{name}'")
        spec = replace(spec, deferral=rules)
    check_lenient_or_lossy(spec, f"ladder '{name}'")
    if any(t is not None for t in spec.tree) and not spec.lossless:
        raise UsageError(f"ladder '{name}': tree and a lossy deferral rule do not combine yet")
    return spec


def check_tree(value: Any, spec: LadderSpec, where: str) -> tuple[TreeSettings | None, ...]:
    """Tree settings: one mapping (the target's review), or a list with one mapping or null per
    reviewing rung (target, then each neural drafter); absent or null means linear drafts."""
    reviewers = [spec.target.name, *(d.name for d in spec.drafters)]
    if value is None:
        return (None,) * len(reviewers)
    values = value if isinstance(value, list) else [value]
    values = values + [None] * (len(reviewers) - len(values)) if len(values) == 1 else values
    if len(values) != len(reviewers):
        raise UsageError(
            f"{where}: tree: expected a mapping (the target's) or a list of {len(reviewers)} "
            f"(one per reviewer: {', '.join(reviewers)}), got {len(values)}"
        )
    out: list[TreeSettings | None] = []
    allowed = ", ".join(TreeSettings.__dataclass_fields__)
    for i, (reviewer, raw) in enumerate(zip(reviewers, values, strict=True)):
        if raw is None:
            out.append(None)
            continue
        if not isinstance(raw, dict) or set(raw) - set(TreeSettings.__dataclass_fields__):
            raise UsageError(f"{where}: tree ({reviewer}): expected a mapping of {allowed}")
        given = dict(raw)  # unset keys take TreeSettings' own defaults
        counts = [given[k] for k in ("budget", "top_k", "extend") if k in given]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise UsageError(
                f"{where}: tree ({reviewer}): budget, top_k and extend must be integers"
            )
        if "min_prob" in given:
            p = given["min_prob"]
            if isinstance(p, bool) or not isinstance(p, int | float):
                raise UsageError(f"{where}: tree ({reviewer}): min_prob must be a number in [0, 1]")
            given["min_prob"] = float(p)
        try:
            out.append(TreeSettings(**given))
        except ValueError as e:
            raise UsageError(f"{where}: tree ({reviewer}): {e}") from None
        backend = [spec.target, *spec.drafters][i].backend
        if backend not in TREE_BACKENDS:
            raise UsageError(
                f"{where}: tree ({reviewer}): backend {backend} does not score token trees; "
                f"drop {reviewer}'s tree"
            )
        if i and spec.lenience[i - 1] != 1:
            raise UsageError(
                f"{where}: tree ({reviewer}): lenience needs linear drafts; "
                f"set {reviewer}'s lenience to 1 or drop its tree"
            )
        if out[-1].extend:
            check_extender(spec, i, f"{where}: tree ({reviewer})")
    return tuple(out)


def check_extender(spec: LadderSpec, reviewer: int, where: str) -> None:
    """A reviewer whose trees ``extend`` has a neural drafter that scores trees first in its
    block (that drafter extends them), or a one-line UsageError."""
    first = kmatrix.first_drafter(spec.k_matrix, reviewer)
    drafter = spec.drafters[first - 1] if first and first <= len(spec.drafters) else None
    if drafter is None or drafter.backend not in TREE_BACKENDS:
        raise UsageError(
            f"{where}: extend needs a neural drafter that scores token trees first in its "
            "block (the k-matrix row)"
        )


def check_sampling(temperature: float, top_k: int, top_p: float, where: str) -> None:
    """Sampling settings in range, or a one-line UsageError."""
    if not isinstance(temperature, int | float) or temperature < 0:
        raise UsageError(f"{where}: temperature must be >= 0 (0 is greedy), got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise UsageError(f"{where}: top_k must be an integer >= 0 (0 is off), got {top_k!r}")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise UsageError(f"{where}: top_p must be in (0, 1], got {top_p!r}")


def default_config_text() -> str:
    """The ladders shipped with csdraft."""
    return resources.files("csdraft").joinpath("cascades.yaml").read_text()


def user_config_path() -> Path:
    """Where ``tune --write`` stores ladders when no ``--config`` is given."""
    if os.environ.get("CSDRAFT_CONFIG"):
        return Path(os.environ["CSDRAFT_CONFIG"])
    from platformdirs import user_config_dir

    return Path(user_config_dir("csdraft")) / "cascades.yaml"


def parse_config(text: str, source: str) -> dict[str, LadderSpec]:
    """All ladders in one YAML text, in file order."""
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise UsageError(f"{source}: malformed YAML: nested too deep") from None
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


def load_ladders(config: Path | None = None) -> dict[str, LadderSpec]:
    """Ladders from ``config`` alone, or the shipped ones followed by the user's own file."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise UsageError(f"config file {path} not found")
        ladders = parse_config(path.read_text(), str(path))
        if not ladders:
            raise UsageError(f"{path}: holds no ladders")
        return ladders
    ladders = parse_config(default_config_text(), "csdraft/cascades.yaml")
    user = user_config_path()
    if user.is_file():
        ladders.update(parse_config(user.read_text(), str(user)))
    return ladders


def get_ladder(name: str | None = None, config: Path | None = None) -> LadderSpec:
    """The named ladder, or the first (default) one."""
    ladders = load_ladders(config)
    if name is None:
        return next(iter(ladders.values()))
    if name not in ladders:
        raise UsageError(f"unknown ladder '{name}'; known ladders: {', '.join(ladders)}")
    return ladders[name]


def ladder_to_yaml(spec: LadderSpec) -> dict:
    """A ladder as the mapping ``parse_ladder`` reads back."""

    def model(m: ModelSpec) -> dict:
        out = {"model": m.ref, "name": m.name, "dtype": m.dtype, "device": m.device}
        if m.backend == "llama.cpp":
            del out["dtype"]
        out |= {"backend": m.backend} if m.backend != "transformers" else {}
        out |= {"window": m.window} if m.window is not None else {}
        return out | ({"vocab": m.vocab} if m.vocab is not None else {})

    out: dict[str, Any] = {"description": spec.description} if spec.description else {}
    out["target"] = model(spec.target)
    out["drafters"] = [model(d) for d in spec.drafters]
    out["maxgram"] = (
        {k: v for k, v in vars(spec.maxgram).items() if v is not None} if spec.maxgram else False
    )
    out["k_matrix"] = [list(r) for r in spec.k_matrix]
    out["lenience"] = list(spec.lenience)
    out["min_confidence"] = list(spec.min_confidence)
    if any(t is not None for t in spec.tree):
        out["tree"] = [None if t is None else vars(t) for t in spec.tree]
    if any(d is not None for d in spec.deferral):
        out["deferral"] = [d and {"rule": d.rule, "alpha": d.alpha} for d in spec.deferral]
    g = spec.generation
    out["generation"] = {**vars(g), "stop": list(g.stop)}
    return out


def add_ladder(path: Path, spec: LadderSpec) -> None:
    """Append a ladder to a config file; never overwrites an existing name."""
    path = Path(path)
    existing = parse_config(path.read_text(), str(path)) if path.is_file() else {}
    if spec.name in existing:
        raise CsdraftError(f"{path} already has a ladder named '{spec.name}'; choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    block = yaml.safe_dump({spec.name: ladder_to_yaml(spec)}, sort_keys=False, width=100)
    with path.open("a") as f:
        if path.stat().st_size and not path.read_text().endswith("\n"):
            f.write("\n")
        f.write("\n" + block)
