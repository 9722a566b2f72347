"""The methods bench compares, each one small object that turns prompt ids into an ``Outcome``.

Engine methods are spec transforms: each turns the loaded ladder's spec (made lossless) into the
spec it runs (a sub-ladder, another k-matrix, a rung setting changed), validated like any ladder,
and runs it over the same loaded models (``Ladder.cascade(spec)``). A transform that the ladder
cannot take is the method's skip reason. ``csd@LADDER`` runs another ladder's settings on the
same models; ``METHOD+RULE@ALPHA[,ALPHA...]`` makes an engine method lossy on purpose with a
speculative-cascades rule (one alpha per reviewer: target, then each neural drafter).
``bench/baselines.py`` holds the methods that are not the engine (transformers, llama.cpp).

The names, one transform each (``NAMED``, ``PARAMETRISED``): ar, sd, pld, csd, csd-vertical,
csd-horizontal, csd-tree[@BUDGET/TOP_K/MIN_PROB[/EXTEND]], csd-window@TOKENS, csd-vocab@IDS|all,
csd-branch@BRANCHES, csd@LADDER, METHOD+RULE@ALPHA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from csdraft.api import Ladder
from csdraft.bench.baselines import HFMethod, LlamaCppMethod
from csdraft.bench.data import AnswerStop
from csdraft.bench.settings import Settings
from csdraft.engine import Sampling, kmatrix
from csdraft.engine.tree import TreeSettings
from csdraft.errors import UsageError
from csdraft.ladder import get_ladder, ladder_to_yaml
from csdraft.runs import Runner, cascade_runner
from csdraft.spec import LadderSpec, deferral_of

DEFAULT_TREE = TreeSettings(12, 1, 0.8, 3)
"""The tree settings of the ``csd-tree`` method: 12 nodes, the drafter's second choice where it
gives its token under 80%, every leaf extended by up to 3 tokens (chosen on GSM8K test rows
100-107: the most tokens per target forward for the fewest nodes among the settings tried)."""
DEFAULT_METHODS = (
    "ar",
    "sd",
    "pld",
    "csd-vertical",
    "csd-horizontal",
    "csd",
    "csd-tree",
    "hf-generate",
    "hf-assisted",
    "hf-lookup",
)

Transform = Callable[[LadderSpec, Settings], LadderSpec]
"""A method's spec transform; a UsageError (or a ``Skip``) says why it does not apply."""


class Skip(UsageError):
    """A method that does not apply to this ladder, and why."""


class EngineMethod:
    """A method that is a spec transform run through the csdraft engine."""

    def __init__(
        self, name: str, description: str, transform: Transform, lossless: bool = True
    ) -> None:
        self.name = name
        self.description = description
        self.transform = transform
        self.lossless = lossless

    def plan(self, spec: LadderSpec, settings: Settings) -> LadderSpec | str:
        """The spec this method runs on the ladder ``spec`` (its deferral rules dropped: only a
        lossy method is lossy), or why it does not apply."""
        base = dataclasses.replace(
            spec, rungs=tuple(dataclasses.replace(r, deferral=None) for r in spec.rungs)
        )
        try:
            return self.transform(base, settings)
        except UsageError as e:
            return str(e).removeprefix(f"ladder '{spec.name}': ")

    def skip_reason(self, spec: LadderSpec, settings: Settings) -> str | None:
        """Why this method does not apply to the ladder, or None."""
        plan = self.plan(spec, settings)
        return plan if isinstance(plan, str) else None

    def config(self, spec: LadderSpec, settings: Settings) -> dict[str, Any]:
        """What this method runs, for the results file: the spec itself and a few keys the
        reports read (its rungs, k-matrix, the target's tree, its lossy rules)."""
        plan = self.plan(spec, settings)
        assert isinstance(plan, LadderSpec)
        k = [list(r) for r in plan.k_matrix]
        out: dict[str, Any] = {"rungs": plan.rung_names, "k_matrix": k}
        if plan.target.tree is not None:
            out["tree"] = [dataclasses.asdict(plan.target.tree)]
        out["lossless"] = plan.lossless
        if not plan.lossless:
            out["deferral"] = {
                r.name: {"rule": r.deferral.rule, "alpha": r.deferral.alpha}
                for r in plan.rungs
                if r.deferral is not None
            }
        return out | {"spec": ladder_to_yaml(plan)}

    def runner(self, ladder: Ladder, settings: Settings) -> Runner:
        """Build the cascade once; each call generates one prompt (seeded alike)."""
        plan = self.plan(ladder.spec, settings)
        assert isinstance(plan, LadderSpec)
        cascade = ladder.cascade(plan, Sampling(settings.temperature), settings.seed)
        tok = ladder.tokenizer
        stop = (lambda: AnswerStop(tok)) if settings.until_answer else None
        return cascade_runner(cascade, ladder.eos_ids, settings.seed, stop)


# ------------------------------------------------------------------------------ transforms


def _drafting(spec: LadderSpec, least: int = 1) -> None:
    """A Skip unless the ladder has at least ``least`` drafting rungs."""
    have = spec.drafting_rungs
    if have < least:
        more = ", so it would be csd itself" if have == 1 else ""
        raise Skip(f"needs {least} drafting rungs; the ladder has {have}{more}")


def _ar(spec: LadderSpec, s: Settings) -> LadderSpec:
    return spec.keep([], [])


def _sd(spec: LadderSpec, s: Settings) -> LadderSpec:
    if not spec.drafters:
        raise Skip("needs a neural drafter; the ladder has none")
    return spec.keep([spec.drafters[0].name], [[s.sd_block]])


def _pld(spec: LadderSpec, s: Settings) -> LadderSpec:
    if not spec.maxgram:
        raise Skip("needs Max-Gram; the ladder has none")
    return spec.keep([spec.maxgram.name], [[s.pld_block]])


def _csd(spec: LadderSpec, s: Settings) -> LadderSpec:
    _drafting(spec)
    return spec


def _variant(change: Callable[[Any], Any]) -> Transform:
    """The whole ladder with its k-matrix changed (vertical or horizontal only)."""

    def transform(spec: LadderSpec, s: Settings) -> LadderSpec:
        _drafting(spec, 2)
        return spec.replace(k_matrix=change(spec.k_matrix))

    return transform


def _drafters_with(why: str, **settings: Any) -> Transform:
    """The ladder with ``settings`` on every neural drafter (``why``: what they do)."""

    def transform(spec: LadderSpec, s: Settings) -> LadderSpec:
        if not spec.drafters:
            raise Skip(f"needs a neural drafter: {why}")
        return spec.with_drafters(**settings)

    return transform


def _rung_with(rung: Callable[[LadderSpec], Any], missing: str, **settings: Any) -> Transform:
    """The ladder with ``settings`` on the rung ``rung(spec)`` picks (``missing``: why the
    method does not apply when the ladder lacks what it needs)."""

    def transform(spec: LadderSpec, s: Settings) -> LadderSpec:
        picked = rung(spec)
        if picked is None:
            raise Skip(missing)
        return spec.with_rung(picked.name, **settings)

    return transform


def _tree(tree: TreeSettings) -> Transform:
    """The ladder with token trees ``tree`` at the target's review (it needs a neural drafter,
    whose probabilities say where to branch)."""
    missing = "needs a neural drafter: trees branch where its probabilities are unsure"
    return _rung_with(lambda spec: spec.target if spec.drafters else None, missing, tree=tree)


def _branches(branches: int) -> Transform:
    """The ladder with Max-Gram's drafts as token trees of ``branches`` branches."""
    missing = "needs Max-Gram; the ladder has none"
    return _rung_with(lambda spec: spec.maxgram, missing, branches=branches)


def _other_ladder(other: LadderSpec) -> Transform:
    """``csd@LADDER``: another ladder's rungs and settings, each model rung mapped onto the
    loaded rung with the same model, dtype and device, its statistical rungs as they are (a
    skip reason when a model or Max-Gram's learned bigram table is missing)."""

    def transform(spec: LadderSpec, s: Settings) -> LadderSpec:
        def model(r: Any) -> tuple:
            return (r.ref, r.dtype, r.device, r.backend)

        free = list(spec.rungs)
        rungs = []
        for rung in other.rungs:
            if not rung.reviews:  # a statistical rung: nothing loaded but Max-Gram's table
                loaded = spec.maxgram.bigram_text if spec.maxgram else None
                if rung.bigram_text != loaded:
                    raise Skip(f"ladder '{other.name}' has a bigram table '{spec.name}' lacks")
                rungs.append(rung)
                continue
            match = next((r for r in free if r.reviews and model(r) == model(rung)), None)
            if not rungs and match is not spec.target:
                raise Skip(f"ladder '{other.name}' has another target than '{spec.name}'")
            if match is None:
                lacks = f"drafts with {rung.ref}, which '{spec.name}' lacks"
                raise Skip(f"ladder '{other.name}' {lacks}")
            free.remove(match)
            rungs.append(dataclasses.replace(rung, name=match.name))
        return other.replace(name=other.name, rungs=tuple(rungs))

    return transform


def _lossy(base: Transform, rule: str, alphas: list[float]) -> Transform:
    """``base`` with deferral ``rule`` at each reviewer an alpha is given for (target first)."""

    def transform(spec: LadderSpec, s: Settings) -> LadderSpec:
        plan = base(spec, s)
        reviewers = 1 + len(plan.drafters)
        if len(alphas) > reviewers:
            raise Skip(f"{len(alphas)} alphas for {reviewers} reviewers")
        rules = [deferral_of(rule, a, "deferral") for a in alphas]
        return plan.with_settings(deferral=rules + [None] * (reviewers - len(rules)))

    return transform


# ------------------------------------------------------------------------------ the names


def _number(text: str, name: str, expect: str, least: int = 1) -> int:
    if not text.isdigit() or int(text) < least:
        raise UsageError(f"--methods {name}: expected {expect}")
    return int(text)


def _tree_method(name: str, text: str) -> EngineMethod:
    try:
        budget, top_k, min_prob, *extend = text.split("/")
        if len(extend) > 1:
            raise ValueError
        tree = TreeSettings(int(budget), int(top_k), float(min_prob), *map(int, extend))
    except ValueError as e:
        detail = str(e) if "must" in str(e) else "expected csd-tree@BUDGET/TOP_K/MIN_PROB[/EXTEND]"
        raise UsageError(f"--methods {name}: {detail}") from None
    return EngineMethod(name, f"the ladder with {tree.explain()}", _tree(tree))


def _window_method(name: str, text: str) -> EngineMethod:
    n = _number(text, name, "csd-window@TOKENS, TOKENS >= 1")
    transform = _drafters_with("only drafters see part of the prompt", window=n)
    description = f"the ladder, its drafters seeing the last {n} prompt tokens"
    return EngineMethod(name, description, transform)


def _vocab_method(name: str, text: str) -> EngineMethod:
    size = None if text == "all" else _number(text, name, "csd-vocab@IDS (IDS >= 1) or @all")
    what = "their whole heads" if size is None else f"draft vocabularies of {size} ids"
    transform = _drafters_with("a draft vocabulary cuts a neural drafter's head", vocab=size)
    return EngineMethod(name, f"the ladder, its drafters with {what}", transform)


def _branch_method(name: str, text: str) -> EngineMethod:
    n = _number(text, name, "csd-branch@BRANCHES, BRANCHES >= 1")
    description = f"the ladder, Max-Gram proposing token trees of {n} branches"
    return EngineMethod(name, description, _branches(n))


def _ladder_method(name: str, text: str, config: Path | None) -> EngineMethod:
    other = get_ladder(text, config)
    rules = "; ".join(str(r.deferral) for r in other.rungs if r.lossy)
    lossy = f"; LOSSY: {rules}" if rules else ""
    description = f"ladder '{other.name}' on the same models{lossy}"
    return EngineMethod(name, description, _other_ladder(other), other.lossless)


def _lossy_method(name: str, config: Path | None) -> EngineMethod:
    base_name, _, rest = name.partition("+")
    rule, _, alpha_text = rest.partition("@")
    base = method(base_name, config) if base_name else None
    if not isinstance(base, EngineMethod):
        engine = ", ".join(n for n, m in NAMED.items() if isinstance(m, EngineMethod))
        why = f"a lossy method needs an engine method before '+' ({engine})"
        raise UsageError(f"--methods: {name}: {why}")
    try:
        alphas = [float(a) for a in alpha_text.split(",")] if alpha_text else [None]
    except ValueError:
        raise UsageError(f"--methods: {name}: alphas must be numbers") from None
    rules = [deferral_of(rule, a, f"--methods: {name}") for a in alphas]
    for d in rules:
        if problem := d.range_problem():
            raise UsageError(f"--methods: {name}: {problem}")
    lossless = base.lossless and all(d.lossless for d in rules)
    alpha = ",".join(f"{a:g}" for a in alphas)
    label = f"{rule} alpha={alpha}" if lossless else f"LOSSY: {rule} alpha={alpha}"
    transform = _lossy(base.transform, rule, [a or 0.0 for a in alphas])
    return EngineMethod(name, f"{base.description}; {label}", transform, lossless)


NAMED: dict[str, EngineMethod | HFMethod | LlamaCppMethod] = {
    m.name: m
    for m in (
        EngineMethod("ar", "the target alone, one token per forward pass (the baseline)", _ar),
        EngineMethod(
            "sd",
            "speculative decoding: the largest drafter drafts up to --sd-block tokens "
            "autoregressively (ending early as the ladder's min_confidence says)",
            _sd,
        ),
        EngineMethod("pld", "prompt lookup: Max-Gram drafts a fixed block (--pld-block)", _pld),
        EngineMethod(
            "csd-vertical",
            "the full ladder, k-matrix diagonal only: each block comes from the rung below",
            _variant(kmatrix.vertical),
        ),
        EngineMethod(
            "csd-horizontal",
            "the full ladder, the target's row only: drafters below draft autoregressively",
            _variant(kmatrix.horizontal),
        ),
        EngineMethod("csd", "the ladder with its own k-matrix", _csd),
        EngineMethod(
            "csd-tree",
            f"the ladder with {DEFAULT_TREE.explain()}, at the target's review",
            _tree(DEFAULT_TREE),
        ),
        HFMethod("hf-generate", "transformers greedy generate of the target", "generate"),
        HFMethod(
            "hf-assisted",
            "transformers assisted generation, largest drafter as assistant (default schedule)",
            "assisted",
        ),
        HFMethod(
            "hf-assisted-universal",
            "transformers universal assisted generation: the largest drafter as assistant with "
            "its own tokenizer (assistant_tokenizer, tokenizer)",
            "universal",
        ),
        HFMethod(
            "hf-lookup",
            "transformers prompt lookup (prompt_lookup_num_tokens=--pld-block)",
            "lookup",
        ),
        LlamaCppMethod(),
    )
}
"""The methods with plain names."""
METHODS = NAMED  # the name the rest of bench and its tests use

PARAMETRISED: dict[str, Callable[[str, str], EngineMethod]] = {
    "csd-tree@": _tree_method,
    "csd-window@": _window_method,
    "csd-vocab@": _vocab_method,
    "csd-branch@": _branch_method,
}
"""Prefix -> the method a name with that prefix makes (``csd@`` and ``+RULE@`` are below)."""

SYNTAX = (
    "csd@LADDER, csd-tree@BUDGET/TOP_K/MIN_PROB[/EXTEND], csd-window@TOKENS, "
    "csd-branch@BRANCHES, csd-vocab@IDS, or METHOD+RULE@ALPHA (lossy)"
)


def method(name: str, config: Path | None = None) -> EngineMethod | HFMethod | LlamaCppMethod:
    """The method ``name`` names, or a one-line UsageError (a malformed parametrised name, an
    unknown ladder, an unknown name)."""
    if "+" in name:
        return _lossy_method(name, config)
    if name in NAMED:
        return NAMED[name]
    for prefix, make in PARAMETRISED.items():
        if name.startswith(prefix):
            return make(name, name.removeprefix(prefix))
    if name.startswith("csd@"):
        return _ladder_method(name, name.removeprefix("csd@"), config)
    raise UsageError(f"--methods: unknown {name}; choose from {', '.join(NAMED)}, or {SYNTAX}")


def parse_methods(text: str | None, config: Path | None = None) -> list[str]:
    """'sd,csd' -> ['ar', 'sd', 'csd']: every name built once (a bad one is a one-line error
    before any loading; a bare number after a lossy method is its next alpha), duplicates
    dropped, and ``ar`` added when missing, since every speedup and output check is against
    it."""
    if text is None:
        return list(DEFAULT_METHODS)
    names: list[str] = []
    for n in (n.strip() for n in text.split(",")):
        if names and "+" in names[-1] and _is_number(n):
            names[-1] += f",{n}"
        elif n:
            names.append(n)
    if not names:
        raise UsageError(f"--methods: empty list; choose from {', '.join(NAMED)}, or {SYNTAX}")
    for n in names:
        method(n, config)
    names = list(dict.fromkeys(names))
    return names if "ar" in names else ["ar", *names]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
