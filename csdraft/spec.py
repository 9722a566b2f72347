"""What a ladder is: a list of rungs (``RungSpec``, each with its own settings), a k-matrix and
generation defaults (``LadderSpec``); ``validate``, which holds every rule a ladder must keep, once;
and ``build_cascade``, the one constructor of the engine's ``Cascade`` from a spec.

Everything that changes a ladder (the YAML, command-line flags, bench's methods, tune's
candidates, a request's own settings) is a transform ``spec -> spec`` followed by ``validate``.
A per-rung setting is one field of ``RungSpec``: its YAML key, parser and kinds live in the
field's metadata, its rules in ``validate``, its use in ``build_cascade``.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csdraft.engine import Cascade, MaxGram, ModelRung, Proposer, Sampling, kmatrix
from csdraft.engine.crossing import Crossing
from csdraft.engine.deferral import RULES, Deferral
from csdraft.engine.recycling import Recycling, shared_table
from csdraft.engine.tree import TreeSettings
from csdraft.errors import UsageError

MODEL = "model"
MAX_GRAM = "max-gram"
RECYCLE = "recycle"


@dataclass(frozen=True)
class RungKind:
    """A kind of rung: whether it runs a model (and so can review the rungs below it)."""

    reviews: bool
    description: str


RUNG_KINDS: dict[str, RungKind] = {
    MODEL: RungKind(True, "a neural model: reviews the rungs below it, drafts for those above"),
    MAX_GRAM: RungKind(False, "Max-Gram: copies what followed the longest earlier match"),
    RECYCLE: RungKind(False, "token recycling: walks each token's top successors in past logits"),
}
"""Every kind of rung a ladder may hold (``kind:`` in the YAML; a rung with ``model:`` is a
model). A new kind is one entry here, its settings in ``RungSpec`` and its ``_PROPOSERS``."""


# ------------------------------------------------------------------------------ value parsers


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: expected text, got {reprlib.repr(value)}")
    return value


def _count(least: int, what: str, optional: bool = False) -> Callable[[Any, str], Any]:
    def parse(value: Any, where: str) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(
                f"{where}: expected a whole number of {what} >= {least}, got {reprlib.repr(value)}"
            )
        return value

    return parse


def _number(low: float, high: float, what: str, high_open: bool = False) -> Callable:
    def parse(value: Any, where: str) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and low <= value
        if not ok or not (value < high if high_open else value <= high):
            raise UsageError(f"{where}: expected {what}, got {reprlib.repr(value)}")
        return float(value)

    return parse


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{where}: expected true or false, got {reprlib.repr(value)}")
    return value


def _tree(value: Any, where: str) -> TreeSettings | None:
    if value is None or isinstance(value, TreeSettings):
        return value
    keys = TreeSettings.__dataclass_fields__
    if not isinstance(value, Mapping) or set(value) - set(keys):
        raise UsageError(f"{where}: expected a mapping of {', '.join(keys)}, or null")
    given = dict(value)  # unset keys take TreeSettings' own defaults
    for key in ("budget", "top_k", "extend"):
        if key in given:
            given[key] = _count(0, "nodes")(given[key], f"{where}.{key}")
    if "min_prob" in given:
        in_range = _number(0, 1, "a number in [0, 1]")
        given["min_prob"] = in_range(given["min_prob"], f"{where}.min_prob")
    try:
        return TreeSettings(**given)
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None


def _deferral(value: Any, where: str) -> Deferral | None:
    if value is None or isinstance(value, Deferral):
        return value
    if not isinstance(value, Mapping) or set(value) - {"rule", "alpha"} or "rule" not in value:
        raise UsageError(f"{where}: expected {{rule: R, alpha: A}} or null, got {value!r}")
    return deferral_of(str(value["rule"]), value.get("alpha"), where)


def deferral_of(rule: str, alpha: Any, where: str) -> Deferral:
    """A deferral rule from a rule name and its alpha, or a one-line UsageError: every rule but
    ``none`` needs an alpha (there is no neutral one: ``chow`` at 0 is lossless, ``diff`` at 0
    is not), within the rule's range."""
    if rule not in RULES:
        raise UsageError(f"{where}: unknown deferral rule {rule!r}; rules: {', '.join(RULES)}")
    if alpha is None and rule != "none":
        raise UsageError(f"{where}: {rule} needs an alpha ({rule}@ALPHA); {RULES[rule]}")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float)):
        raise UsageError(f"{where}: alpha must be a number, got {reprlib.repr(alpha)}")
    try:
        return Deferral(rule, float(alpha or 0.0))
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None


def deferrals_of(names: list[str], alphas: Any, where: str) -> Deferral | list[Deferral]:
    """Rules ``names`` (one per reviewer), ``alphas`` one for all or one each, in range."""
    values = spread(alphas, len(names), f"{where} alpha (one per rule)")
    out = [deferral_of(n, a, where) for n, a in zip(names, values, strict=True)]
    for d in out:
        if problem := d.range_problem():
            raise UsageError(f"{where}: {problem}")
    return out[0] if len(out) == 1 else out


def _setting(default: Any, parse: Callable, kinds: Iterable[str] = (MODEL,), key: str = ""):
    """A RungSpec field: its default, YAML parser, kinds of rung and YAML key (if not its name)."""
    return field(default=default, metadata={"parse": parse, "kinds": tuple(kinds), "key": key})


@dataclass(frozen=True)
class RungSpec:
    """One rung of a ladder with all of its own settings. Model rungs review the rungs below
    them (``tree``, ``deferral``) and draft for those above (``lenience``, ``min_confidence``,
    ``window``, ``vocab``); the target (the first rung) only reviews."""

    kind: str = MODEL
    name: str = ""
    ref: str = _setting("", _text, key="model")
    """The model: an offline pack, a local folder, a .gguf file or a Hugging Face hub id."""
    backend: str = _setting("transformers", _text)
    dtype: str = _setting("bfloat16", _text)
    device: str = _setting("cpu", _text)
    batch_invariant: bool | None = _setting(None, _flag)
    """Load the model so that a block pass computes exactly what one-token passes do, where
    the backend can (int8 on transformers). None: yes for the target, no for drafters (whose
    rounding never reaches the output); ``false`` on an int8 target trades that for speed."""
    lenience: float = _setting(1.0, _number(1, math.inf, "a finite number >= 1", True))
    """Loosens this drafter's own reviews of the rungs below it (inner reviews only)."""
    min_confidence: float = _setting(0.0, _number(0, 1, "a number in [0, 1)", True))
    """This drafter's draft ends after a token it gives less than this probability."""
    window: int | None = _setting(None, _count(1, "tokens", optional=True))
    """A drafter sees only the last ``window`` prompt tokens (drafts may change, output never)."""
    vocab: int | None = _setting(None, _count(1, "token ids", optional=True))
    """A drafter's draft vocabulary: its head cut to the ``vocab`` lowest ids (draft_vocab)."""
    tree: TreeSettings | None = _setting(None, _tree)
    """How the drafts this rung reviews branch (None: linear drafts)."""
    deferral: Deferral | None = _setting(None, _deferral)
    """This rung's review follows a speculative-cascades rule (lossy when not ``lossless``)."""
    max_ngram: int = _setting(8, _count(1, "tokens"), (MAX_GRAM,))
    min_ngram: int = _setting(1, _count(1, "tokens"), (MAX_GRAM,))
    bigram_text: str | None = _setting(None, _text, (MAX_GRAM,))
    """A text file Max-Gram learns its fallback bigram table from."""
    branches: int = _setting(1, _count(1, "branches"), (MAX_GRAM, RECYCLE))
    """Max-Gram's or recycle's drafts as token trees of this many branches (1: linear)."""
    successors: int = _setting(8, _count(1, "tokens"), (RECYCLE,))
    """Token recycling: successors kept per token (the top-k of the logits harvested)."""
    persist: bool = _setting(True, _flag, (RECYCLE,))
    """Token recycling: the table outlives a generation (per loaded target, per process)."""
    harvest_drafters: bool = _setting(True, _flag, (RECYCLE,))
    """Token recycling: learn from the drafters' reviews too (else from the target's only)."""
    copy_ngram: int = _setting(0, _count(0, "tokens"), (RECYCLE,))
    """Token recycling: first copy what followed an earlier match of the context's last
    ``copy_ngram``+ tokens (Max-Gram's rule), then walk the table (0: never copy)."""

    @property
    def reviews(self) -> bool:
        """Whether this rung runs a model (and so can review the rungs below it)."""
        return RUNG_KINDS[self.kind].reviews

    @property
    def lossy(self) -> bool:
        """Whether this rung's reviews follow a lossy deferral rule."""
        return self.deferral is not None and not self.deferral.lossless


def rung_settings(kind: str) -> dict[str, dataclasses.Field]:
    """The YAML key -> RungSpec field of every setting a rung of ``kind`` accepts."""
    return {
        f.metadata["key"] or f.name: f
        for f in dataclasses.fields(RungSpec)
        if kind in f.metadata.get("kinds", ())
    }


@dataclass(frozen=True)
class GenerationDefaults:
    """Generation settings a ladder starts from; command-line flags and requests override them."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0

    @property
    def sampling(self) -> Sampling:
        """The engine's sampling settings (temperature, top-k, top-p) of these defaults."""
        return Sampling(float(self.temperature), int(self.top_k), float(self.top_p))


@dataclass(frozen=True)
class LadderSpec:
    """A ladder: its rungs (the target first, then drafters, largest first; cheap statistical
    rungs at the bottom), the k-matrix and generation defaults. Build one with ``validate``
    (``csdraft.ladder`` reads them from YAML); change one with ``replace``, ``with_rung`` or
    ``keep``, which validate again."""

    name: str
    rungs: tuple[RungSpec, ...]
    k_matrix: tuple[tuple[int, ...], ...] = ()
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    description: str = ""
    drafts_below: int | None = None
    """From this many requests at once, greedy lossless ones go undrafted (``Cascade.busy``)."""

    @property
    def target(self) -> RungSpec:
        return self.rungs[0]

    @property
    def drafters(self) -> tuple[RungSpec, ...]:
        """The neural drafters, largest first."""
        return tuple(r for r in self.rungs[1:] if r.reviews)

    @property
    def maxgram(self) -> RungSpec | None:
        """The Max-Gram rung, if the ladder has one."""
        return next((r for r in self.rungs if r.kind == MAX_GRAM), None)

    @property
    def rung_names(self) -> list[str]:
        return [r.name for r in self.rungs]

    @property
    def drafting_rungs(self) -> int:
        """How many rungs draft for someone: the k-matrix is this square."""
        return len(self.rungs) - 1

    @property
    def lossless(self) -> bool:
        """Whether no rung has a lossy deferral rule."""
        return not any(r.lossy for r in self.rungs)

    def rung(self, name: str) -> RungSpec:
        """The rung called ``name`` (a one-line UsageError naming the rungs otherwise)."""
        for r in self.rungs:
            if r.name == name:
                return r
        raise UsageError(f"ladder '{self.name}' has no rung {name!r}: {', '.join(self.rung_names)}")

    def replace(self, where: str = "", **changes: Any) -> LadderSpec:
        """A validated copy with ``changes`` (``rungs``, ``k_matrix``, ``generation``, ``name``,
        ``description``)."""
        if "k_matrix" in changes:
            changes["k_matrix"] = _k_matrix(changes["k_matrix"], where or f"ladder '{self.name}'")
        return validate(dataclasses.replace(self, **changes), where)

    def with_rung(self, name: str, where: str = "", **settings: Any) -> LadderSpec:
        """A validated copy whose rung ``name`` has ``settings`` changed."""
        self.rung(name)
        rungs = tuple(
            dataclasses.replace(r, **settings) if r.name == name else r for r in self.rungs
        )
        return self.replace(where, rungs=rungs)

    def with_drafters(self, where: str = "", **settings: Any) -> LadderSpec:
        """A validated copy with ``settings`` changed on every neural drafter."""
        rungs = tuple(
            dataclasses.replace(r, **settings) if i and r.reviews else r
            for i, r in enumerate(self.rungs)
        )
        return self.replace(where, rungs=rungs)

    def with_settings(
        self,
        where: str = "command line",
        k_matrix: Any = None,
        lenience: Any = None,
        min_confidence: Any = None,
        deferral: Any = None,
    ) -> LadderSpec:
        """A validated copy with the settings a command line or a request may override (None
        keeps the ladder's): ``lenience`` and ``min_confidence`` one value for every neural
        drafter or one each; ``deferral`` one rule (the target's) or one per reviewer (target,
        then each neural drafter; None entries lossless)."""
        reviewers = [self.target, *self.drafters]
        changes: dict[str, dict[str, Any]] = {r.name: {} for r in reviewers}
        for key, value, rungs in (
            ("lenience", lenience, reviewers[1:]),
            ("min_confidence", min_confidence, reviewers[1:]),
            ("deferral", deferral, reviewers),
        ):
            if value is None:
                continue
            if key == "deferral" and not isinstance(value, list | tuple):
                value = [value] + [None] * (len(rungs) - 1)
            for rung, v in zip(rungs, spread(value, len(rungs), f"{where}: {key}"), strict=True):
                changes[rung.name][key] = v
        rungs = tuple(dataclasses.replace(r, **changes.get(r.name, {})) for r in self.rungs)
        k = self.k_matrix if k_matrix is None else k_matrix
        return self.replace(where, rungs=rungs, k_matrix=k)

    def with_generation(self, where: str = "request", **overrides: Any) -> LadderSpec:
        """A validated copy with generation settings overridden (None keeps the ladder's;
        ``stop`` strings are added to the ladder's): a command line's or a request's."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {f.name for f in dataclasses.fields(GenerationDefaults)}
        if unknown:
            raise UsageError(f"{where}: unknown generation settings {sorted(unknown)}")
        if "stop" in given:
            extra = (given["stop"],) if isinstance(given["stop"], str) else tuple(given["stop"])
            given["stop"] = (*self.generation.stop, *extra)
        generation = dataclasses.replace(self.generation, **given)
        return self.replace(where, generation=generation)

    def keep(self, names: Sequence[str], k_matrix: Any, where: str = "") -> LadderSpec:
        """The sub-ladder of the target and the drafting rungs ``names`` (in ladder order), with
        ``k_matrix`` over them: bench's baselines and tune's candidates are built this way."""
        for n in names:
            self.rung(n)
        rungs = (self.target, *(r for r in self.rungs[1:] if r.name in names))
        return self.replace(where, rungs=rungs, k_matrix=k_matrix)

    def explain_k_matrix(self) -> list[str]:
        """The k-matrix in words, one line per reviewing rung (``kmatrix.explain``)."""
        return kmatrix.explain(self.k_matrix, self.rung_names, [r.reviews for r in self.rungs])


def spread(value: Any, count: int, where: str) -> list[Any]:
    """One value for all ``count`` rungs, or a list of one each (a one-line UsageError
    otherwise): the one reading of "a number or a list" for every per-rung setting."""
    values = list(value) if isinstance(value, list | tuple) else [value] * count
    if len(values) != count:
        raise UsageError(
            f"{where}: expected one value or a list of {count} (one per rung it applies to), "
            f"got {reprlib.repr(value)}"
        )
    return values


def _k_matrix(value: Any, where: str) -> Any:
    """k-matrix text as nested lists (``validate`` checks them, and any other value)."""
    if isinstance(value, str):
        try:
            return kmatrix.parse(value)
        except kmatrix.KMatrixError as e:
            raise UsageError(f"{where}: {e}") from None
    return value


# ------------------------------------------------------------------------------ validation


def validate(spec: LadderSpec, where: str = "") -> LadderSpec:
    """``spec`` if it keeps every rule of a ladder, else a one-line UsageError naming the ladder,
    the rung and the setting. The engine trusts a validated spec; this is the only place the
    rules are written."""
    where = where or f"ladder '{spec.name}'"

    def fail(message: str) -> None:
        raise UsageError(f"{where}: {message}")

    for rung in spec.rungs:
        if rung.kind not in RUNG_KINDS:
            fail(f"{rung.name}: kind: expected one of {', '.join(RUNG_KINDS)}, got {rung.kind!r}")
    if not spec.rungs or not spec.target.reviews:
        fail("the first rung must be the target model ({name: NAME, model: REF})")
    names = spec.rung_names
    if len(set(names)) != len(names) or not all(names):
        fail(f"rung names must be unique and non-empty: {names}")
    last_model = max(i for i, r in enumerate(spec.rungs) if r.reviews)
    if any(not r.reviews for r in spec.rungs[:last_model]):
        fail("statistical rungs (max-gram) go below every model rung: they cannot review")
    rungs = tuple(
        _validate_rung(rung, i, lambda m, r=rung: fail(f"{r.name}: {m}"))
        for i, rung in enumerate(spec.rungs)
    )
    spec = dataclasses.replace(spec, rungs=rungs)
    try:
        k = kmatrix.check(spec.k_matrix, names, names[1:])
    except kmatrix.KMatrixError as e:
        raise UsageError(f"{where}: {e}") from None
    for r, row in enumerate(k):
        if not spec.rungs[r].reviews and any(row):
            fail(f"k_matrix row {r + 1}: {names[r]} cannot review (it is not a model); zero it")
    _validate_trees(spec, k, fail)
    trees = [r.name for r in spec.rungs if r.tree or r.branches > 1]
    if trees and not spec.lossless:
        lossy = ", ".join(f"{r.name}'s {r.deferral}" for r in spec.rungs if r.lossy)
        fail(f"token trees ({', '.join(trees)}) and a lossy rule ({lossy}) do not combine yet")
    _validate_generation(spec.generation, lambda m: fail(f"generation: {m}"))
    if (below := spec.drafts_below) is not None and (type(below) is not int or below < 2):
        fail(f"drafts_below: expected a number of requests >= 2, got {reprlib.repr(below)}")
    return dataclasses.replace(spec, k_matrix=k)


def _validate_rung(rung: RungSpec, i: int, fail: Callable[[str], None]) -> RungSpec:
    """One rung's own rules: its kind, its settings' kinds and ranges, its backend's abilities;
    the rung with its values in their plain types (lenience 2 -> 2.0)."""
    defaults, plain = RungSpec(), {}
    for f in dataclasses.fields(RungSpec):
        value, key = getattr(rung, f.name), f.metadata.get("key") or f.name
        kinds = f.metadata.get("kinds", ())
        if kinds and rung.kind not in kinds and value != getattr(defaults, f.name):
            fail(f"{key}: not a setting of a {rung.kind} rung")
        elif kinds and value is not None and value != "":
            try:  # the YAML's checks again: a transform may have set any value
                plain[f.name] = f.metadata["parse"](value, key)
            except UsageError as e:
                fail(str(e))
    if rung.kind == MAX_GRAM:
        if rung.min_ngram > rung.max_ngram:
            fail(f"need min_ngram <= max_ngram, got {rung.min_ngram} > {rung.max_ngram}")
        if rung.bigram_text and not Path(rung.bigram_text).expanduser().is_file():
            fail(f"bigram_text: {rung.bigram_text} not found")
    if not rung.reviews:
        return dataclasses.replace(rung, **plain)
    if not rung.ref:
        fail("model: missing (an offline pack, a folder, a .gguf file or a hub id)")
    from csdraft.models.load import backend_class, device_problem

    try:
        backend = backend_class(rung.backend)
    except UsageError as e:
        fail(f"backend: {e}")
    if rung.dtype not in backend.dtypes:
        fail(f"dtype: backend {rung.backend} runs {', '.join(backend.dtypes)}, not {rung.dtype!r}")
    if problem := device_problem(backend, rung.backend, rung.device):
        fail(problem)
    if problem := backend.reference_problem(rung.ref):
        fail(problem)
    if rung.vocab is not None and not backend.supports_vocab:
        fail(f"vocab: backend {rung.backend} has no draft vocabulary; drop vocab")
    if rung.tree is not None and not backend.scores_trees:
        fail(f"tree: backend {rung.backend} does not score token trees; drop {rung.name}'s tree")
    if rung.tree is not None and rung.lenience != 1:
        fail("a lenient rung reviews linear drafts: set its lenience to 1 or drop its tree")
    if rung.lenience > 1 and rung.lossy:
        fail(f"lenience {rung.lenience:g} and deferral {rung.deferral}: choose one")
    if rung.deferral is not None and (problem := rung.deferral.range_problem()):
        fail(f"deferral: {problem}")
    if i == 0:
        for key, value in (("window", rung.window), ("vocab", rung.vocab)):
            if value is not None:
                fail(f"{key}: only drafters have one; the target sees and scores everything")
        if rung.lenience != 1 or rung.min_confidence != 0:
            fail("lenience and min_confidence are a drafter's; the target's review is exact")
    return dataclasses.replace(rung, **plain)


def _validate_trees(spec: LadderSpec, k: kmatrix.KMatrix, fail: Callable[[str], None]) -> None:
    """Whoever reviews a tree-proposing rung scores trees and is not lenient; a reviewer whose
    trees extend has a model that scores trees first in its block (which extends them)."""
    from csdraft.models.load import backend_class

    def scores_trees(rung: RungSpec) -> bool:
        return rung.reviews and backend_class(rung.backend).scores_trees

    for d, drafter in enumerate(spec.rungs):
        if drafter.branches <= 1:
            continue
        for r, row in enumerate(k[:d]):
            reviewer = spec.rungs[r]
            if row[d - 1] > 0 and not scores_trees(reviewer):
                fail(f"{reviewer.name} reviews {drafter.name}'s token trees but cannot score trees")
            if row[d - 1] > 0 and reviewer.lenience != 1:
                fail(f"{reviewer.name} reviews {drafter.name}'s token trees: set its lenience to 1")
    for r, reviewer in enumerate(spec.rungs):
        if reviewer.tree is None or not reviewer.tree.extend:
            continue
        first = kmatrix.first_drafter(k, r)
        if first is None or not scores_trees(spec.rungs[first]):
            fail(
                f"{reviewer.name}: tree extend needs a model that scores token trees first in "
                "its block (its k-matrix row)"
            )


def _validate_generation(g: GenerationDefaults, fail: Callable[[str], None]) -> None:
    for key, least in (("max_new_tokens", 1), ("top_k", 0), ("seed", 0)):
        value = getattr(g, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            fail(f"{key}: expected a whole number >= {least}, got {reprlib.repr(value)}")
    if g.seed >= 2**64:  # torch's generators take 64-bit seeds
        fail(f"seed: expected a whole number below 2**64, got {reprlib.repr(g.seed)}")
    check_sampling(g.temperature, g.top_k, g.top_p, fail)
    if not isinstance(g.stop, tuple) or not all(isinstance(s, str) and s for s in g.stop):
        fail(f"stop: expected a list of non-empty strings, got {reprlib.repr(g.stop)}")


def check_sampling(temperature: Any, top_k: Any, top_p: Any, fail: Callable[[str], None]) -> None:
    """Sampling settings in range, else ``fail(message)``."""
    number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
    if not number or not math.isfinite(temperature) or temperature < 0:
        fail(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        fail(f"top_k must be an integer >= 0 (0 is off), got {top_k!r}")
    number = isinstance(top_p, int | float) and not isinstance(top_p, bool)
    if not number or not 0 < top_p <= 1:
        fail(f"top_p must be in (0, 1], got {top_p!r}")


# ------------------------------------------------------------------------------ construction


def _model_rung(rung: RungSpec, model: Any, bigram: Any, target: bool) -> Proposer:
    session = model.session(rung.name, None if target else rung.vocab)
    vocab = model.vocab_size if target else None
    return ModelRung(
        session, rung.name, rung.lenience, rung.min_confidence, vocab_size=vocab,
        tree=rung.tree, deferral=rung.deferral, window=rung.window,
    )  # fmt: skip


def _max_gram(rung: RungSpec, model: Any, bigram: Any, target: bool) -> Proposer:
    return MaxGram(rung.max_ngram, rung.min_ngram, bigram, rung.branches)


def _recycle(rung: RungSpec, model: Any, bigram: Any, target: bool) -> Proposer:
    table = shared_table(model, rung.name, max(rung.successors, rung.branches), rung.persist)
    settings = (rung.successors, rung.branches, rung.persist, rung.harvest_drafters)
    return Recycling(*settings, table, rung.copy_ngram)


def _space_owner(spec: LadderSpec, i: int) -> str:
    """The model rung whose tokens rung ``i`` works in: itself, or the nearest model above."""
    return next(r.name for r in reversed(spec.rungs[: i + 1]) if r.reviews)


_PROPOSERS: dict[str, Callable[[RungSpec, Any, Any, bool], Proposer]] = {
    MODEL: _model_rung,
    MAX_GRAM: _max_gram,
    RECYCLE: _recycle,
}
"""Each kind's builder: (rung, its loaded model, or for a statistical rung the model whose
tokens it works in (``_space_owner``), Max-Gram's bigram, whether it is the target)."""


def build_cascade(
    spec: LadderSpec,
    models: Mapping[str, Any],
    sampling: Sampling | None = None,
    seed: int | None = None,
    bigram: Mapping[int, int] | None = None,
    busy: Callable[[], bool] | None = None,
) -> Cascade:
    """The engine's cascade for a validated ``spec``: every rung's proposer, fresh (its own
    cache), over the loaded models named by rung (``models[rung.name]``); ``bigram``: Max-Gram's
    fallback table. Sampling defaults to greedy, the seed to the spec's; ``Cascade.busy``."""
    crossing = _crossing(spec, models)
    if crossing is not None and crossing.space_of[-1]:
        bigram = None  # learned in the target's tokens; this Max-Gram works in another's
    rungs = [
        _PROPOSERS[r.kind](r, models.get(_space_owner(spec, i)), bigram, i == 0)
        for i, r in enumerate(spec.rungs)
    ]
    seed = spec.generation.seed if seed is None else seed
    return Cascade(rungs, spec.k_matrix, sampling or Sampling(), seed, crossing, busy)


def _crossing(spec: LadderSpec, models: Mapping[str, Any]) -> Crossing | None:
    """The token spaces of a ladder whose model rungs do not all share the target's tokenizer
    object (``Ladder.load`` gives rungs with equal tokenizers the same one), else None.
    Max-Gram works in the tokens of the model rung above it."""
    tokenizers = [
        getattr(models.get(r.name), "tokenizer", None) if r.reviews else None for r in spec.rungs
    ]
    if tokenizers[0] is None or all(t is None or t is tokenizers[0] for t in tokenizers):
        return None
    widths = [models[r.name].vocab_size if r.reviews else None for r in spec.rungs]
    return Crossing(tokenizers, widths)
