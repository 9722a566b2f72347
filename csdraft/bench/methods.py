"""The methods bench compares, each one small object that turns prompt ids into an ``Outcome``.

Engine methods are sub-ladders of the loaded ladder run through the one engine
(``LoadedLadder.cascade``); ``hf-*`` methods are transformers' own ``generate`` on the same
loaded models. Adding a method is one entry in ``METHODS``; ``csd@LADDER`` runs another ladder's
settings on the same models.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from csdraft.engine import Sampling
from csdraft.generation import LoadedLadder
from csdraft.ladder import LadderSpec
from csdraft.trace import Commit, Stats

DEFAULT_METHODS = (
    "ar",
    "sd",
    "pld",
    "csd-vertical",
    "csd-horizontal",
    "csd",
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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Outcome:
    """One generation: its token ids, wall time and the counters metrics need (see
    ``csdraft.bench.metrics``)."""

    ids: list[int]
    wall_s: float
    target_forwards: int
    forwards: dict[str, int]
    forward_s: dict[str, float] = field(default_factory=dict)
    reviews: dict[str, list[int]] = field(default_factory=dict)
    by_position: list[list[int]] = field(default_factory=list)
    finish: str = ""

    def record(self) -> dict[str, Any]:
        """The JSON-ready per-prompt record (without ids, answers or mismatch)."""
        return {
            "new_tokens": len(self.ids),
            "wall_s": self.wall_s,
            "target_forwards": self.target_forwards,
            "forwards": self.forwards,
            "forward_s": self.forward_s,
            "reviews": self.reviews,
            "by_position": self.by_position,
            "finish": self.finish,
        }


Runner = Callable[[list[int], int], Outcome]
"""Prompt ids and max_new_tokens -> outcome."""


# ------------------------------------------------------------------------------ k-matrices


def vertical_k(k: Sequence[Sequence[int]]) -> list[list[int]]:
    """Only the diagonal: each reviewer's block comes whole from the rung right below it. A row
    whose diagonal is 0 keeps its block length (its row sum) on the diagonal."""
    n = len(k)
    return [
        [(k[r][r] or sum(k[r][r:]) or sum(k[0])) if c == r else 0 for c in range(n)]
        for r in range(n)
    ]


def horizontal_k(k: Sequence[Sequence[int]]) -> list[list[int]]:
    """Only the target's row: its block mixes drafters, and every neural drafter writes its
    segment autoregressively (rows below zeroed)."""
    return [list(k[0])] + [[0] * len(k) for _ in k[1:]]


@dataclass(frozen=True)
class EngineConfig:
    """A sub-ladder: which neural drafters (1-based), Max-Gram or not, the k-matrix, and the
    drafters' lenience and min_confidence (None: the loaded ladder's)."""

    drafters: list[int]
    maxgram: bool
    k_matrix: list[list[int]]
    lenience: list[float] | None = None
    min_confidence: list[float] | None = None


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
        names = [spec.target.name] + [spec.drafters[i - 1].name for i in plan.drafters]
        out = {"rungs": names + (["max-gram"] if plan.maxgram else []), "k_matrix": plan.k_matrix}
        if plan.lenience is not None:
            out |= {"lenience": plan.lenience, "min_confidence": plan.min_confidence}
        return out

    def runner(self, ladder: LoadedLadder, settings: Settings) -> Runner:
        """Build the cascade once; each call generates one prompt."""
        plan = self._configure(ladder.spec, settings)
        assert isinstance(plan, EngineConfig)
        cascade = ladder.cascade(
            drafters=plan.drafters,
            maxgram=plan.maxgram,
            k_matrix=plan.k_matrix,
            lenience=plan.lenience,
            min_confidence=plan.min_confidence,
            sampling=Sampling(settings.temperature),
            seed=settings.seed,
        )
        eos = ladder.eos_ids

        def run(prompt_ids: list[int], max_new_tokens: int) -> Outcome:
            cascade.generator.manual_seed(settings.seed)
            start = time.perf_counter()
            events = list(cascade.generate(prompt_ids, max_new_tokens, eos))
            wall = time.perf_counter() - start
            for rung in cascade.rungs:
                rung.reset()  # free the KV caches between prompts
            stats = Stats.of(events)
            name = stats.rungs.__getitem__
            return Outcome(
                ids=[t for e in events if isinstance(e, Commit) for t in e.tokens],
                wall_s=wall,
                target_forwards=stats.target_forwards,
                forwards={name(r): n for r, n in sorted(stats.forwards.items())},
                forward_s={name(r): s for r, s in sorted(stats.forward_s.items())},
                reviews={
                    name(r): [stats.proposed.get(r, 0), stats.accepted.get(r, 0)]
                    for r in sorted(stats.proposed)
                    if stats.proposed[r]
                },
                by_position=[list(p) for p in stats.by_position],
                finish=stats.finish,
            )

        return run


def _ar(spec: LadderSpec, s: Settings) -> EngineConfig | str:
    return EngineConfig([], False, [])


def _sd(spec: LadderSpec, s: Settings) -> EngineConfig | str:
    if not spec.drafters:
        return "needs a neural drafter; the ladder has none"
    return EngineConfig([1], False, [[s.sd_block]])


def _pld(spec: LadderSpec, s: Settings) -> EngineConfig | str:
    if not spec.maxgram:
        return "needs Max-Gram; the ladder has none"
    return EngineConfig([], True, [[s.pld_block]])


def _full(transform: Callable[[Sequence[Sequence[int]]], list[list[int]]] | None, least: int):
    def configure(spec: LadderSpec, s: Settings) -> EngineConfig | str:
        if spec.drafting_rungs < least:
            have = spec.drafting_rungs
            return f"needs {least} drafting rungs; the ladder has {have}" + (
                ", so it would be csd itself" if have == 1 else ""
            )
        k = [list(r) for r in spec.k_matrix]
        drafters = list(range(1, len(spec.drafters) + 1))
        return EngineConfig(drafters, bool(spec.maxgram), transform(k) if transform else k)

    return configure


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
        return EngineConfig(
            drafters,
            other.maxgram is not None,
            [list(r) for r in other.k_matrix],
            list(other.lenience),
            list(other.min_confidence),
        )

    return configure


def method(name: str, config: Path | None = None) -> EngineMethod | HFMethod:
    """The method named ``name``: one of ``METHODS``, or ``csd@LADDER`` (another ladder of
    the config run on the loaded ladder's models, to compare settings in one run)."""
    if name in METHODS:
        return METHODS[name]
    from csdraft.ladder import get_ladder

    other = get_ladder(name.removeprefix("csd@"), config)
    return EngineMethod(name, f"ladder '{other.name}' on the same models", _ladder(other))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings (about its own generate internals) inside the block."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


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


class HFMethod:
    """transformers' own ``generate`` on the ladder's loaded target: plain greedy, assisted by
    the largest drafter (transformers' default schedule), or prompt lookup."""

    lossless = True

    def __init__(self, name: str, description: str, mode: str) -> None:
        self.name = name
        self.description = description
        self.mode = mode  # "generate" | "assisted" | "lookup"

    def skip_reason(self, spec: LadderSpec, settings: Settings) -> str | None:
        if self.mode == "assisted" and not spec.drafters:
            return "needs a neural drafter as assistant; the ladder has none"
        return None

    def config(self, spec: LadderSpec, settings: Settings) -> dict[str, Any]:
        out: dict[str, Any] = {"rungs": [spec.target.name], "transformers": "generate"}
        if self.mode == "assisted":
            out["rungs"].append(spec.drafters[0].name)
            out["assistant_model"] = spec.drafters[0].name
        if self.mode == "lookup":
            out["prompt_lookup_num_tokens"] = settings.pld_block
        return out

    def runner(self, ladder: LoadedLadder, settings: Settings) -> Runner:
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

        def run(prompt_ids: list[int], max_new_tokens: int) -> Outcome:
            ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
            if not settings.greedy:
                torch.manual_seed(settings.seed)
            with (
                quiet_transformers(),
                count_forwards(target) as n_target,
                count_forwards(assistant) as n_assist,
            ):
                start = time.perf_counter()
                out = target.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    **kwargs,
                )
                wall = time.perf_counter() - start
            new = out[0, len(prompt_ids) :].tolist()
            cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
            forwards = {names[0]: n_target[0]}
            if assistant is not None:
                forwards[names[1]] = n_assist[0]
            finish = "eos" if any(t in eos for t in new) else "length"
            return Outcome(new[:cut], wall, n_target[0], forwards, finish=finish)

        return run


METHODS: dict[str, EngineMethod | HFMethod] = {
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
            _full(vertical_k, 2),
        ),
        EngineMethod(
            "csd-horizontal",
            "the full ladder, the target's row only: drafters below draft autoregressively",
            _full(horizontal_k, 2),
        ),
        EngineMethod("csd", "the ladder with its own k-matrix", _full(None, 1)),
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
    )
}


@torch.inference_mode()
def top2_margin(model: torch.nn.Module, context: Sequence[int]) -> float:
    """Gap between the two best next-token logits of ``model`` after ``context`` (one forward
    pass), to tell a floating-point near-tie from a bug at a divergence."""
    device = next(model.parameters()).device
    logits = model(torch.tensor([list(context)], dtype=torch.long, device=device)).logits[0, -1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def parse_methods(text: str | None) -> list[str]:
    """'sd,csd' -> ['ar', 'sd', 'csd']: names checked against ``METHODS`` (or of the form
    ``csd@LADDER``), duplicates dropped, and ``ar`` added when missing, since every speedup
    and output check is against it."""
    from csdraft.errors import UsageError

    if text is None:
        return list(DEFAULT_METHODS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS and not n.startswith("csd@")]
    if unknown or not names:
        raise UsageError(
            f"--methods: unknown {', '.join(unknown) or 'empty list'}; "
            f"choose from {', '.join(METHODS)}, or csd@LADDER"
        )
    names = list(dict.fromkeys(names))
    return names if "ar" in names else ["ar", *names]
