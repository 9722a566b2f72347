"""The methods bench compares, each one small object that turns prompt ids into an ``Outcome``.

Engine methods are sub-ladders of the loaded ladder run through the one engine
(``Ladder.cascade``); ``hf-*`` methods are transformers' own ``generate`` on the same
loaded models. Adding a method is one entry in ``METHODS``; ``csd@LADDER`` runs another ladder's
settings on the same models. ``METHOD+RULE@ALPHA`` (e.g. ``csd+opt@0.1``, ``sd+chow@0.2``) is an
engine method made lossy on purpose by a speculative-cascades deferral rule at the target's
review; ``csd+opt@0.1,0.2`` gives one alpha per reviewer (target, then each neural drafter).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from csdraft.api import Ladder
from csdraft.bench.data import AnswerStop, answer_cut
from csdraft.console import quiet_transformers
from csdraft.engine import Sampling, kmatrix
from csdraft.engine.deferral import Deferral
from csdraft.engine.tree import TreeSettings
from csdraft.errors import UsageError
from csdraft.ladder import TREE_BACKENDS, LadderSpec, check_extender
from csdraft.runs import Outcome, Runner, cascade_runner

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


@dataclass(frozen=True)
class Settings:
    """What every method of one bench run shares."""

    sd_block: int = 4
    pld_block: int = 10
    temperature: float = 0.0
    seed: int = 0
    until_answer: bool = False
    """End each generation at its first finished '#### <number>' line (GSM8K)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class EngineConfig:
    """A sub-ladder: which drafting rungs (ladder indices), the k-matrix over them, and the
    neural drafters' lenience and min_confidence (None: the loaded ladder's)."""

    rungs: list[int]
    k_matrix: list[list[int]]
    lenience: list[float] | None = None
    min_confidence: list[float] | None = None
    tree: list[TreeSettings | None] | None = None  # per reviewer, target first
    deferral: list[Deferral | None] | None = None
    """Per reviewer of the loaded ladder (target, then each neural drafter); None: lossless."""
    window: int | None = None
    """Prompt tokens every neural drafter sees (None: as the ladder's models say)."""
    maxgram_branches: int | None = None
    """Max-Gram's drafts as token trees of that many branches (None: the ladder's)."""
    vocab: int | None = None
    """Every neural drafter's draft vocabulary (None: as the ladder's models say)."""


# ------------------------------------------------------------------------------ methods


class EngineMethod:
    """A method that is a sub-ladder run through the csdraft engine."""

    lossless = True

    def __init__(
        self,
        name: str,
        description: str,
        configure: Callable[[LadderSpec, Settings], EngineConfig | str],
    ) -> None:
        self.name = name
        self.description = description
        self._configure = configure

    def skip_reason(self, spec: LadderSpec, settings: Settings) -> str | None:
        """Why this method does not apply to the ladder, or None."""
        plan = self._configure(spec, settings)
        return plan if isinstance(plan, str) else None

    def config(self, spec: LadderSpec, settings: Settings) -> dict[str, Any]:
        """What this method runs, for the results file."""
        plan = self._configure(spec, settings)
        assert isinstance(plan, EngineConfig)
        names = spec.rung_names
        out = {"rungs": [names[0], *(names[i] for i in plan.rungs)], "k_matrix": plan.k_matrix}
        if plan.lenience is not None:
            out |= {"lenience": plan.lenience, "min_confidence": plan.min_confidence}
        if plan.tree is not None:
            out["tree"] = [None if t is None else vars(t) for t in plan.tree]
        if plan.window is not None:
            out["window"] = plan.window
        if plan.maxgram_branches is not None:
            out["maxgram_branches"] = plan.maxgram_branches
        if plan.vocab is not None:
            out["vocab"] = plan.vocab
        out["lossless"] = self.lossless
        if plan.deferral is not None:
            reviewers = [names[0], *(d.name for d in spec.drafters)]
            out["deferral"] = {
                reviewers[i]: {"rule": d.rule, "alpha": d.alpha}
                for i, d in enumerate(plan.deferral)
                if d is not None
            }
        return out

    def runner(self, ladder: Ladder, settings: Settings) -> Runner:
        """Build the cascade once; each call generates one prompt (seeded alike)."""
        plan = self._configure(ladder.spec, settings)
        assert isinstance(plan, EngineConfig)
        cascade = ladder.cascade(
            rungs=plan.rungs,
            k_matrix=plan.k_matrix,
            lenience=plan.lenience,
            min_confidence=plan.min_confidence,
            sampling=Sampling(settings.temperature),
            seed=settings.seed,
            tree=plan.tree,
            deferral=plan.deferral or [None] * (len(ladder.spec.drafters) + 1),
            window=plan.window,
            maxgram_branches=plan.maxgram_branches,
            vocab=plan.vocab,
        )
        tok = ladder.tokenizer
        stop = (lambda: AnswerStop(tok)) if settings.until_answer else None
        return cascade_runner(cascade, ladder.eos_ids, settings.seed, stop)


class LossyMethod(EngineMethod):
    """An engine method whose reviewers follow a deferral rule: lossy on purpose, so its
    differences from ar are its quality cost, not errors."""

    lossless = False

    def __init__(self, name: str, base: EngineMethod, rule: str, alphas: list[float]) -> None:
        def configure(spec: LadderSpec, s: Settings) -> EngineConfig | str:
            plan = base._configure(spec, s)
            if isinstance(plan, str):
                return plan
            if len(alphas) > len(spec.drafters) + 1:
                return f"{len(alphas)} alphas for {len(spec.drafters) + 1} reviewers"
            if plan.tree is not None:
                return "token trees and deferral rules do not combine yet"
            rules = [Deferral(rule, a) for a in alphas]
            return replace(plan, deferral=rules + [None] * (len(spec.drafters) + 1 - len(rules)))

        alpha = ",".join(f"{a:g}" for a in alphas)
        super().__init__(name, f"{base.description}; LOSSY: {rule} alpha={alpha}", configure)


def lossy_method(name: str, config: Path | None = None) -> LossyMethod:
    """``BASE+RULE@ALPHA[,ALPHA...]`` as a method, or a one-line UsageError. BASE is an engine
    method: one of ``METHODS``, a parametrised one (``csd-vocab@N``) or ``csd@LADDER``, so a
    rule can be measured over another ladder's k-matrix and min_confidence in the same run."""
    base_name, _, rest = name.partition("+")
    rule, _, alpha_text = rest.partition("@")
    base: Any = METHODS.get(base_name)
    if base is None and base_name.startswith("csd@"):
        base = method(base_name, config)
    elif base is None and base_name:
        base = parametrised(base_name, config)
    if not isinstance(base, EngineMethod):
        raise UsageError(
            f"--methods: {name}: a lossy method needs an engine method before '+' "
            f"({', '.join(n for n, m in METHODS.items() if isinstance(m, EngineMethod))})"
        )
    try:
        alphas = [float(a) for a in alpha_text.split(",")] if alpha_text else [0.0]
        for a in alphas:
            Deferral(rule, a)
    except ValueError as e:
        raise UsageError(f"--methods: {name}: {e}") from None
    return LossyMethod(name, base, rule, alphas)


def _ar(spec: LadderSpec, s: Settings) -> EngineConfig | str:
    return EngineConfig([], [])


def _sd(spec: LadderSpec, s: Settings) -> EngineConfig | str:
    if not spec.drafters:
        return "needs a neural drafter; the ladder has none"
    return EngineConfig([1], [[s.sd_block]])


def _pld(spec: LadderSpec, s: Settings) -> EngineConfig | str:
    if not spec.maxgram:
        return "needs Max-Gram; the ladder has none"
    return EngineConfig([spec.drafting_rungs], [[s.pld_block]])


def _full(transform: Callable[[Sequence[Sequence[int]]], list[list[int]]] | None, least: int):
    def configure(spec: LadderSpec, s: Settings) -> EngineConfig | str:
        if spec.drafting_rungs < least:
            have = spec.drafting_rungs
            return f"needs {least} drafting rungs; the ladder has {have}" + (
                ", so it would be csd itself" if have == 1 else ""
            )
        k = [list(r) for r in spec.k_matrix]
        rungs = list(range(1, spec.drafting_rungs + 1))
        return EngineConfig(rungs, transform(k) if transform else k)

    return configure


def _csd_with(why: str, **changes: Any) -> Callable[[LadderSpec, Settings], EngineConfig | str]:
    """The ladder's own settings (``csd``) with ``changes`` to its ``EngineConfig``, for a
    setting that acts through a neural drafter (``why``: the skip reason without one)."""

    def configure(spec: LadderSpec, s: Settings) -> EngineConfig | str:
        if not spec.drafters:
            return f"needs a neural drafter: {why}"
        if "tree" in changes and spec.target.backend not in TREE_BACKENDS:
            return f"the target's backend ({spec.target.backend}) does not score token trees"
        if "tree" in changes and changes["tree"][0].extend:
            try:
                check_extender(spec, 0, "the target's tree")
            except UsageError as e:
                return str(e)
        plan = _full(None, 1)(spec, s)
        assert isinstance(plan, EngineConfig)
        return replace(plan, **changes)

    return configure


def _tree(tree: TreeSettings) -> Callable[[LadderSpec, Settings], EngineConfig | str]:
    """The ladder's own settings with token trees ``tree`` at the target's review."""
    return _csd_with("trees branch where its probabilities say it is unsure", tree=[tree])


def _window(tokens: int) -> Callable[[LadderSpec, Settings], EngineConfig | str]:
    """The ladder's own settings with every neural drafter seeing the last ``tokens`` prompt
    tokens only."""
    return _csd_with("only drafters see part of the prompt", window=tokens)


def window_method(name: str) -> EngineMethod:
    """``csd-window@N``: the ladder with each neural drafter seeing only the last N prompt
    tokens (a cheaper drafter pass over a long prompt; output unchanged)."""
    text = name.removeprefix("csd-window@")
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--methods {name}: expected csd-window@TOKENS, TOKENS >= 1")
    tokens = int(text)
    return EngineMethod(
        name, f"the ladder, its drafters seeing the last {tokens} prompt tokens", _window(tokens)
    )


def vocab_method(name: str) -> EngineMethod:
    """``csd-vocab@N``: the ladder with each neural drafter's head cut to a draft vocabulary of
    N ids (``models.draft_vocab``; ``csd-vocab@all``: the whole head); output unchanged."""
    from csdraft.models.draft_vocab import WHOLE

    text = name.removeprefix("csd-vocab@")
    if text != "all" and (not text.isdigit() or int(text) < 1):
        raise UsageError(f"--methods {name}: expected csd-vocab@IDS (IDS >= 1) or csd-vocab@all")
    size = WHOLE if text == "all" else int(text)
    plan = _csd_with("a draft vocabulary cuts a neural drafter's head", vocab=size)

    def configure(spec: LadderSpec, s: Settings) -> EngineConfig | str:
        if any(d.backend != "transformers" for d in spec.drafters):
            return "a draft vocabulary needs drafters on the transformers backend"
        return plan(spec, s)

    what = "their whole heads" if text == "all" else f"draft vocabularies of {size} ids"
    return EngineMethod(name, f"the ladder, its drafters with {what}", configure)


def branch_method(name: str) -> EngineMethod:
    """``csd-branch@N``: the ladder with Max-Gram's drafts as token trees of N branches (its
    reviewers check each tree in one pass; output unchanged)."""
    text = name.removeprefix("csd-branch@")
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--methods {name}: expected csd-branch@BRANCHES, BRANCHES >= 1")
    branches = int(text)

    def configure(spec: LadderSpec, s: Settings) -> EngineConfig | str:
        if not spec.maxgram:
            return "needs Max-Gram; the ladder has none"
        if any(m.backend not in TREE_BACKENDS for m in (spec.target, *spec.drafters)):
            return "every neural rung must score token trees (the transformers backend)"
        if any(x != 1 for x in spec.lenience):
            return "Max-Gram's trees need reviewers with lenience 1"
        plan = _full(None, 1)(spec, s)
        return plan if isinstance(plan, str) else replace(plan, maxgram_branches=branches)

    return EngineMethod(
        name, f"the ladder, Max-Gram proposing token trees of {branches} branches", configure
    )


def tree_method(name: str) -> EngineMethod:
    """``csd-tree@BUDGET/TOP_K/MIN_PROB[/EXTEND]``: the ladder with those tree settings at the
    target's review (a one-line error for a malformed name)."""
    try:
        budget, top_k, min_prob, *extend = name.removeprefix("csd-tree@").split("/")
        if len(extend) > 1:
            raise ValueError
        tree = TreeSettings(int(budget), int(top_k), float(min_prob), *map(int, extend))
    except ValueError as e:
        detail = str(e) if "must" in str(e) else "expected csd-tree@BUDGET/TOP_K/MIN_PROB[/EXTEND]"
        raise UsageError(f"--methods {name}: {detail}") from None
    return EngineMethod(name, f"the ladder with {tree.explain()}", _tree(tree))


def parametrised(name: str, config: Path | None = None) -> EngineMethod | None:
    """The method a parametrised name makes (``METHOD+RULE@ALPHA``, ``csd-tree@...``,
    ``csd-window@N``, ``csd-branch@N``, ``csd-vocab@N``; a one-line UsageError when
    malformed), or None for any other name."""
    if "+" in name:
        return lossy_method(name, config)
    if name.startswith("csd-tree@"):
        return tree_method(name)
    if name.startswith("csd-window@"):
        return window_method(name)
    if name.startswith("csd-branch@"):
        return branch_method(name)
    if name.startswith("csd-vocab@"):
        return vocab_method(name)
    return None


def _ladder(other: LadderSpec) -> Callable[[LadderSpec, Settings], EngineConfig | str]:
    """``csd@LADDER``: another ladder's k-matrix, lenience and min_confidence over the same
    models, which must all be among the loaded ladder's (same reference, dtype and device)."""

    def same(a: Any, b: Any) -> bool:
        return (a.ref, a.dtype, a.device) == (b.ref, b.dtype, b.device)

    def configure(spec: LadderSpec, s: Settings) -> EngineConfig | str:
        if not same(other.target, spec.target):
            return f"ladder '{other.name}' has another target than '{spec.name}'"
        drafters: list[int] = []
        for d in other.drafters:
            i = next(
                (i for i, m in enumerate(spec.drafters, 1) if same(m, d) and i not in drafters),
                None,
            )
            if i is None:
                return f"ladder '{other.name}' drafts with {d.ref}, which '{spec.name}' lacks"
            drafters.append(i)
        if other.maxgram is not None and other.maxgram != spec.maxgram:
            return f"ladder '{other.name}' has other Max-Gram settings than '{spec.name}'"
        if other.maxgram is not None:
            drafters.append(spec.drafting_rungs)
        deferral = None
        if not other.lossless:  # other's reviewers (target, its drafters) onto the loaded ones
            deferral = [other.deferral[0]] + [None] * len(spec.drafters)
            for j, i in enumerate(drafters[: len(other.drafters)], 1):
                deferral[i] = other.deferral[j]
        return EngineConfig(
            drafters,
            [list(r) for r in other.k_matrix],
            list(other.lenience),
            list(other.min_confidence),
            tree=list(other.tree) if any(t is not None for t in other.tree) else None,
            deferral=deferral,
        )

    return configure


def method(name: str, config: Path | None = None) -> EngineMethod | HFMethod | LlamaCppMethod:
    """The method named ``name``: one of ``METHODS``, or ``csd@LADDER`` (another ladder of
    the config run on the loaded ladder's models, to compare settings in one run)."""
    if name in METHODS:
        return METHODS[name]
    if (made := parametrised(name, config)) is not None:
        return made
    from csdraft.ladder import get_ladder

    other = get_ladder(name.removeprefix("csd@"), config)
    if other.lossless:
        return EngineMethod(name, f"ladder '{other.name}' on the same models", _ladder(other))
    rules = "; ".join(f"{d}" for d in other.deferral if d is not None and not d.lossless)
    made = EngineMethod(
        name, f"ladder '{other.name}' on the same models; LOSSY: {rules}", _ladder(other)
    )
    made.lossless = False
    return made


@contextlib.contextmanager
def count_forwards(model: torch.nn.Module | None) -> Iterator[list[int]]:
    """Count forward calls of ``model`` while the block runs (a one-item list)."""
    count = [0]
    if model is None:
        yield count
        return

    def hook(*_: Any) -> None:
        count[0] += 1

    handle = model.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


class FirstTokenClock:
    """A ``generate(streamer=...)`` object that notes when the first new token arrives:
    transformers calls ``put`` with the prompt, then with each new token (or accepted run)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_t: float | None = None
        self.first_tokens = 0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_t = time.perf_counter()
            self.first_tokens = int(value.numel()) if hasattr(value, "numel") else 1

    def end(self) -> None:
        pass


class HFMethod:
    """transformers' own ``generate`` on the ladder's loaded target: plain greedy, assisted by
    the largest drafter (transformers' default schedule), or prompt lookup."""

    lossless = True

    def __init__(self, name: str, description: str, mode: str) -> None:
        self.name = name
        self.description = description
        self.mode = mode  # "generate" | "assisted" | "lookup"

    def skip_reason(self, spec: LadderSpec, settings: Settings) -> str | None:
        models = [spec.target, *spec.drafters[: 1 if self.mode == "assisted" else 0]]
        if any(m.backend != "transformers" for m in models):
            return "runs transformers' generate, so needs models on the transformers backend"
        if self.mode == "assisted" and not spec.drafters:
            return "needs a neural drafter as assistant; the ladder has none"
        return None

    def config(self, spec: LadderSpec, settings: Settings) -> dict[str, Any]:
        out: dict[str, Any] = {"rungs": [spec.target.name], "transformers": "generate"}
        out["lossless"] = True
        if self.mode == "assisted":
            out["rungs"].append(spec.drafters[0].name)
            out["assistant_model"] = spec.drafters[0].name
        if self.mode == "lookup":
            out["prompt_lookup_num_tokens"] = settings.pld_block
        return out

    def runner(self, ladder: Ladder, settings: Settings) -> Runner:
        target = ladder.models[0].model
        names = [ladder.spec.target.name]
        kwargs: dict[str, Any] = {}
        assistant = None
        if self.mode == "assisted":
            assistant = ladder.models[1].model
            names.append(ladder.spec.drafters[0].name)
            kwargs["assistant_model"] = assistant
        elif self.mode == "lookup":
            kwargs["prompt_lookup_num_tokens"] = settings.pld_block
        eos = ladder.eos_ids
        pad = target.generation_config.pad_token_id
        kwargs.update(
            eos_token_id=eos,
            pad_token_id=eos[0] if pad is None and eos else pad,
            min_new_tokens=0,
            repetition_penalty=1.0,
        )
        if settings.greedy:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        else:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0)
        device = next(target.parameters()).device
        tok = ladder.tokenizer

        def run(prompt_ids: list[int], max_new_tokens: int) -> Outcome:
            ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
            if not settings.greedy:
                torch.manual_seed(settings.seed)
            if settings.until_answer:
                kwargs["stopping_criteria"] = [_answer_criterion(tok, len(prompt_ids))]
            with (
                quiet_transformers(),
                count_forwards(target) as n_target,
                count_forwards(assistant) as n_assist,
            ):
                clock = FirstTokenClock()
                start = time.perf_counter()
                out = target.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    streamer=clock,
                    **kwargs,
                )
                wall = time.perf_counter() - start
            new = out[0, len(prompt_ids) :].tolist()
            cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
            if settings.until_answer:
                cut = min(cut, answer_cut(tok, new) or cut)
            forwards = {names[0]: n_target[0]}
            if assistant is not None:
                forwards[names[1]] = n_assist[0]
            finish = "eos" if any(t in eos for t in new) else "length"
            first = clock.first_token_t
            prefill = wall if first is None else min(first - start, wall)
            return Outcome(
                new[:cut],
                wall,
                n_target[0],
                forwards,
                finish=finish,
                prefill_s=prefill,
                prefill_tokens=min(clock.first_tokens, cut),
            )

        return run


class LlamaCppMethod:
    """Plain greedy decoding of the target's GGUF by llama-cpp-python's own ``Llama`` (what a
    CPU user would run instead of csdraft): the same prompt ids, eos and token budget, one
    token per decode, its greedy sampler. Its output is compared with ar's like every method's
    when the target runs on llama.cpp too (the same numbers); with a transformers target it is
    another numeric model of the same weights, so differences are reported as its cost, not as
    errors."""

    name = "llama.cpp"
    description = "llama-cpp-python's plain greedy decoding of the target's GGUF (Llama.generate)"

    def skip_reason(self, spec: LadderSpec, settings: Settings) -> str | None:
        from csdraft.models.llamacpp_backend import EXTRA, available
        from csdraft.models.packs import has_gguf

        if not settings.greedy:
            return "plain greedy decoding only; this bench samples (--temperature > 0)"
        if not has_gguf(spec.target.ref):
            return f"the target ({spec.target.ref}) is neither an offline pack nor a .gguf file"
        if not available():
            return f"needs llama-cpp-python: {EXTRA}"
        return None

    @staticmethod
    def same_model(spec: LadderSpec) -> bool:
        """Whether ar runs the very numbers this method runs (a llama.cpp target)."""
        return spec.target.backend == "llama.cpp"

    def config(self, spec: LadderSpec, settings: Settings) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rungs": [spec.target.name],
            "llama.cpp": "Llama.generate, greedy (temp 0), one token per decode",
            "lossless": self.same_model(spec),
        }
        if not self.same_model(spec):
            out["lossy_why"] = (
                "the target's GGUF in llama.cpp, not the target as loaded (another numeric "
                "model of the same weights)"
            )
        return out

    def runner(self, ladder: Ladder, settings: Settings) -> Runner:
        from csdraft.models.llamacpp_backend import (
            CONTEXT_SLACK,
            N_BATCH,
            N_CTX,
            cpu_threads,
            gguf_source,
            import_llama_cpp,
        )

        import_llama_cpp()
        from llama_cpp import Llama

        target = ladder.target
        gguf = getattr(target, "gguf", None) or gguf_source(ladder.spec.target.ref, False).gguf
        limit = ladder.context_length or N_CTX
        threads = getattr(target, "n_threads", None) or cpu_threads()
        llm = Llama(
            model_path=str(gguf),
            n_ctx=min(limit, N_CTX) + CONTEXT_SLACK,
            n_batch=N_BATCH,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=0,
            verbose=False,
        )
        eos = set(ladder.eos_ids)
        tok = ladder.tokenizer

        def run(prompt_ids: list[int], max_new_tokens: int) -> Outcome:
            llm.reset()  # a cold prompt, as every other method gets: no prefix reuse
            stop = AnswerStop(tok) if settings.until_answer else None
            ids: list[int] = []
            finish = "length"
            first: float | None = None
            start = time.perf_counter()
            steps = llm.generate(
                prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0
            )
            for token in steps:
                if first is None:
                    first = time.perf_counter()
                ids.append(int(token))
                if ids[-1] in eos:
                    finish = "eos"
                    break
                if stop is not None and (cut := stop([ids[-1]])) is not None:
                    del ids[len(ids) - 1 + cut :]
                    finish = "stop"
                    break
                if len(ids) >= max_new_tokens:
                    break
            steps.close()
            wall = time.perf_counter() - start
            name = ladder.spec.target.name
            return Outcome(
                ids,
                wall,
                len(ids),
                {name: len(ids)},
                finish=finish,
                prefill_s=wall if first is None else first - start,
                prefill_tokens=min(1, len(ids)),
            )

        return run


METHODS: dict[str, EngineMethod | HFMethod | LlamaCppMethod] = {
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
            _full(kmatrix.vertical, 2),
        ),
        EngineMethod(
            "csd-horizontal",
            "the full ladder, the target's row only: drafters below draft autoregressively",
            _full(kmatrix.horizontal, 2),
        ),
        EngineMethod("csd", "the ladder with its own k-matrix", _full(None, 1)),
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
            "hf-lookup",
            "transformers prompt lookup (prompt_lookup_num_tokens=--pld-block)",
            "lookup",
        ),
        LlamaCppMethod(),
    )
}


def parse_methods(text: str | None, config: Path | None = None) -> list[str]:
    """'sd,csd' -> ['ar', 'sd', 'csd']: names checked against ``METHODS`` (or of the form
    ``csd@LADDER`` or ``METHOD+RULE@ALPHA[,ALPHA...]``: a bare number after a lossy method is
    its next alpha), duplicates dropped, and ``ar`` added when missing, since every speedup
    and output check is against it."""
    if text is None:
        return list(DEFAULT_METHODS)
    names: list[str] = []
    for n in (n.strip() for n in text.split(",")):
        if names and "+" in names[-1] and _is_number(n):
            names[-1] += f",{n}"
        elif n:
            names.append(n)
    # a parametrised name is built here, so a bad one is a one-line error before any loading
    unknown = [
        n
        for n in names
        if n not in METHODS and parametrised(n, config) is None and not n.startswith("csd@")
    ]
    if unknown or not names:
        raise UsageError(
            f"--methods: unknown {', '.join(unknown) or 'empty list'}; "
            f"choose from {', '.join(METHODS)}, or csd@LADDER, "
            "csd-tree@BUDGET/TOP_K/MIN_PROB[/EXTEND], csd-window@TOKENS, csd-branch@BRANCHES, "
            "csd-vocab@IDS, or METHOD+RULE@ALPHA (lossy)"
        )
    names = list(dict.fromkeys(names))
    return names if "ar" in names else ["ar", *names]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _answer_criterion(tokenizer: Any, prompt_tokens: int) -> Any:
    """transformers' StoppingCriteria ending generate at a finished answer (``FINISHED_ANSWER``)
    in the generated text (the runner then cuts at the same token ``answer_cut`` finds)."""
    from transformers import StoppingCriteria

    from csdraft.bench.data import FINISHED_ANSWER

    class Answer(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            new = input_ids[0, prompt_tokens:].tolist()
            text = tokenizer.decode(new, skip_special_tokens=True)
            done = bool(FINISHED_ANSWER.search(text))
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

    return Answer()
