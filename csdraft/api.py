"""The Python API: load a ladder, generate (greedy or sampled), get ids, text and stats, or
iterate over the events. The command line is a thin layer over this module.

    import csdraft

    ladder = csdraft.load()                       # the default ladder of cascades.yaml
    result = ladder.generate("Write a haiku about caches.", max_new_tokens=48)
    print(result.text, result.stats.tokens_per_forward)
    for event in ladder.stream("Count to five.", temperature=0.7, seed=1):
        ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csdraft import trace
from csdraft.engine import Cascade, MaxGram, ModelRung, Proposer, Sampling, learn_bigram
from csdraft.engine.deferral import Deferral
from csdraft.engine.tree import TreeSettings
from csdraft.errors import CsdraftError, UsageError
from csdraft.ladder import LadderSpec, check_sampling, get_ladder
from csdraft.text import StopStrings
from csdraft.trace import Commit, Event, Stats


@dataclass
class Result:
    """One generation: the text, its token ids, the prompt's ids, every event and the stats."""

    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    events: list[Event]
    stats: Stats

    @property
    def finish(self) -> str:
        """Why generation ended: eos, stop, length or interrupted."""
        return self.stats.finish

    @classmethod
    def of(cls, events: list[Event], prompt_ids: list[int], tokenizer: Any) -> Result:
        """The result a list of events describes."""
        ids = [t for e in events if isinstance(e, Commit) for t in e.tokens]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return cls(text, ids, list(prompt_ids), events, Stats.of(events))


class Ladder:
    """A ladder with its models loaded and their tokenizers checked against the target's.

    ``models`` holds one loaded model per neural rung (target first), each from the backend its
    ``ModelSpec`` names; drafting rungs are built afresh for every cascade, so cascades over the
    same ladder never share a cache."""

    def __init__(self, spec: LadderSpec, models: list[Any], bigram: dict[int, int] | None) -> None:
        self.spec = spec
        self.models = models
        self.bigram = bigram

    @classmethod
    def load(cls, spec: LadderSpec, progress: bool = True) -> Ladder:
        """Load every neural rung (preparing offline packs once) and check tokenizers match."""
        from csdraft.models import load, tokenizer_fingerprint

        target = load(spec.target, progress, batch_invariant=True)
        models = [target]
        target_print = None  # computed only if some drafter's tokenizer files differ
        for d in spec.drafters:
            loaded = load(d, progress, share_tokenizer=target)
            if loaded.tokenizer is not target.tokenizer:
                target_print = target_print or tokenizer_fingerprint(target.tokenizer)
                if tokenizer_fingerprint(loaded.tokenizer) != target_print:
                    raise CsdraftError(
                        f"ladder '{spec.name}': drafter '{d.name}' ({d.ref}) uses a different "
                        f"tokenizer from the target '{spec.target.name}' ({spec.target.ref}); "
                        "every rung must share the target's tokenizer"
                    )
            check_vocab(spec.name, d.name, loaded.vocab_size, len(target.tokenizer))
            models.append(loaded)
        bigram = None
        if spec.maxgram and spec.maxgram.bigram_text:
            path = Path(spec.maxgram.bigram_text).expanduser()
            if not path.is_file():
                raise UsageError(f"ladder '{spec.name}': maxgram.bigram_text: {path} not found")
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            bigram = learn_bigram(target.tokenizer(lines)["input_ids"])
        if spec.drafters or spec.maxgram:
            _warn_slow_blocks(spec, models)
        return cls(spec, models, bigram)

    @property
    def tokenizer(self) -> Any:
        return self.models[0].tokenizer

    @property
    def target(self) -> Any:
        """The target's loaded model."""
        return self.models[0]

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end generation (the generation config's and the tokenizer's)."""
        return self.models[0].eos_ids

    @property
    def context_length(self) -> int | None:
        """The target's maximum context, when its config says."""
        return self.models[0].context_length

    def encode(self, text: str, raw: bool = False) -> list[int]:
        """Prompt ids: through the chat template for instruct models unless ``raw``."""
        return encode(self.tokenizer, text, raw)

    def check_length(self, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
        """A prompt that leaves no room for ``max_new_tokens`` is a usage error."""
        check_length(len(prompt_ids), max_new_tokens, self.context_length)

    def sampling(
        self, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None
    ) -> Sampling:
        """Sampling settings: these over the ladder's generation defaults, validated."""
        g = self.spec.generation
        t = g.temperature if temperature is None else temperature
        k = g.top_k if top_k is None else top_k
        p = g.top_p if top_p is None else top_p
        check_sampling(t, k, p, "sampling")
        return Sampling(float(t), int(k), float(p))

    def proposer(
        self,
        rung: int,
        lenience: float,
        min_confidence: float,
        tree: TreeSettings | None = None,
        deferral: Deferral | None = None,
        window: int | None = None,
        branches: int | None = None,
        vocab: int | None = None,
    ) -> Proposer:
        """A fresh drafting rung for ladder index ``rung`` (1..D); ``tree``: how the drafts it
        reviews branch, ``deferral``: its review's rule, ``window``: how much of a long prompt
        it sees, ``vocab``: its draft vocabulary (defaults: its model's ``window`` and
        ``vocab``) (neural rungs only); ``branches``: Max-Gram's (default: the ladder's)."""
        spec = self.spec
        if rung <= len(spec.drafters):
            m = spec.drafters[rung - 1]
            session = self.models[rung].session(m.name, m.vocab if vocab is None else vocab)
            return ModelRung(
                session,
                m.name,
                lenience,
                min_confidence,
                tree=tree,
                deferral=deferral,
                window=m.window if window is None else window,
            )
        mg = spec.maxgram
        assert mg is not None
        return MaxGram(mg.max_ngram, mg.min_ngram, self.bigram, branches or mg.branches)

    def cascade(
        self,
        rungs: Sequence[int] | None = None,
        k_matrix: Sequence[Sequence[int]] | None = None,
        lenience: float | Sequence[float] | None = None,
        min_confidence: float | Sequence[float] | None = None,
        sampling: Sampling | None = None,
        seed: int | None = None,
        tree: Sequence[TreeSettings | None] | None = None,
        deferral: Deferral | Sequence[Deferral | None] | None = None,
        window: int | None = None,
        maxgram_branches: int | None = None,
        vocab: int | None = None,
    ) -> Cascade:
        """A cascade over this ladder, or over a sub-ladder: ``rungs`` lists the drafting rungs
        to keep (ladder indices 1..D; default all), for baselines such as bench's. ``lenience``
        and ``min_confidence`` (one value, or one per kept neural drafter) default to the
        ladder's; ``tree`` (per reviewer: the target, then each kept neural drafter; a shorter
        list leaves the rest linear) to the ladder's. ``deferral`` (the target's rule, or one
        per reviewer of the full ladder: target, then each neural drafter) defaults to the
        ladder's; any lossy rule makes the output lossy on purpose (``Cascade.lossless`` is
        then False). ``window``: every neural drafter sees only the last ``window`` prompt
        tokens (default: each drafter model's own ``window``). ``maxgram_branches``: Max-Gram's
        drafts as token trees of that many branches (default: the ladder's ``branches``).
        ``vocab``: every neural drafter's draft vocabulary (``models.draft_vocab``; default:
        each drafter model's own ``vocab``)."""
        spec = self.spec
        if deferral is not None:
            spec = spec.with_settings(deferral=deferral, where=f"ladder '{spec.name}'")
        keep = list(range(1, spec.drafting_rungs + 1)) if rungs is None else list(rungs)
        if any(not 1 <= r <= spec.drafting_rungs for r in keep):
            raise UsageError(f"ladder '{spec.name}' has no drafting rung {keep}")
        neural = [r for r in keep if r <= len(spec.drafters)]
        lenience = _per_rung(lenience, [spec.lenience[r - 1] for r in neural], "lenience")
        floors = _per_rung(
            min_confidence, [spec.min_confidence[r - 1] for r in neural], "min_confidence"
        )
        if tree is None:
            tree = [spec.tree[0], *(spec.tree[r] for r in neural)]
        trees = list(tree) + [None] * (1 + len(neural) - len(tree))
        try:
            target = ModelRung(
                self.models[0].session(spec.target.name),
                spec.target.name,
                vocab_size=self.models[0].vocab_size,
                tree=trees[0],
                deferral=spec.deferral[0],
            )
            drafters: list[Proposer] = []
            for r in keep:
                if r in neural:
                    i = neural.index(r)
                    drafters.append(
                        self.proposer(
                            r,
                            lenience[i],
                            floors[i],
                            trees[i + 1],
                            spec.deferral[r],
                            window,
                            vocab=vocab,
                        )  # fmt: skip
                    )
                else:
                    drafters.append(self.proposer(r, 1.0, 0.0, branches=maxgram_branches))
            return Cascade(
                [target, *drafters],
                spec.k_matrix if k_matrix is None else k_matrix,
                sampling or Sampling(),
                spec.generation.seed if seed is None else seed,
            )
        except ValueError as e:
            raise UsageError(f"ladder '{spec.name}': {e}") from None

    def stream(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = None,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        raw: bool = False,
    ) -> Iterator[Event]:
        """The events of one generation (text is encoded with the chat template unless
        ``raw``; token ids are used as they are). Settings default to the ladder's."""
        prompt_ids, n_new, cascade, stops = self._prepare(
            prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, raw
        )
        yield from cascade.generate(prompt_ids, n_new, self.eos_ids, stops)

    def generate(
        self, prompt: str | Sequence[int], max_new_tokens: int | None = None, **options: Any
    ) -> Result:
        """Generate and return the text, ids, events and stats; ``options`` as for ``stream``."""
        ids = self.prompt_ids(prompt, options.pop("raw", False))
        return Result.of(list(self.stream(ids, max_new_tokens, **options)), ids, self.tokenizer)

    def prompt_ids(self, prompt: str | Sequence[int], raw: bool = False) -> list[int]:
        """Text through ``encode``; token ids as they are."""
        ids = self.encode(prompt, raw) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise UsageError("the prompt is empty")
        return ids

    def _prepare(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str],
        raw: bool,
    ) -> tuple[list[int], int, Cascade, StopStrings | None]:
        gen = self.spec.generation
        n_new = max_new_tokens or gen.max_new_tokens
        ids = self.prompt_ids(prompt, raw)
        self.check_length(ids, n_new)
        cascade = self.cascade(sampling=self.sampling(temperature, top_k, top_p), seed=seed)
        stops = [*gen.stop, *stop]
        return ids, n_new, cascade, (StopStrings(self.tokenizer, stops) if stops else None)


def _warn_slow_blocks(spec: LadderSpec, models: list[Any]) -> None:
    """One warning line when some model of a drafting ladder has block passes that cost about
    one pass per token on this CPU (``models.cpu``): speculation cannot pay for it here."""
    from csdraft.models.cache import warn
    from csdraft.models.cpu import slow_blocks_warning

    specs = [spec.target, *spec.drafters]
    message = slow_blocks_warning({s.name: m for s, m in zip(specs, models, strict=True)})
    if message:
        warn(message)


def check_vocab(ladder: str, drafter: str, rows: int, tokens: int) -> None:
    """A drafter must be able to read every token the tokenizer can produce. Rows beyond that
    (vocabulary padding, which differs between sizes of one family) are fine either way: the
    engine fits each drafter's logits to the target's width (``fit_vocab``)."""
    if rows < tokens:
        raise CsdraftError(
            f"ladder '{ladder}': drafter '{drafter}' has {rows} vocabulary rows but the "
            f"tokenizer has {tokens} tokens, so it cannot read every token; use a drafter whose "
            "vocabulary covers the tokenizer"
        )


def _per_rung(value: float | Sequence[float] | None, default: list[float], key: str) -> list[float]:
    if value is None:
        return default
    values = [float(value)] * len(default) if isinstance(value, int | float) else list(value)
    if len(values) != len(default):
        raise UsageError(f"{key}: expected one value or {len(default)} (one per neural drafter)")
    return values


def encode(tokenizer: Any, text: str, raw: bool = False) -> list[int]:
    """Prompt ids: through the chat template for instruct models unless ``raw``."""
    if not text.strip():
        raise UsageError("the prompt is empty; pass --prompt TEXT or pipe text on stdin")
    if not raw and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return tokenizer(text)["input_ids"]


def check_length(prompt_tokens: int, max_new_tokens: int, limit: int | None) -> None:
    """A prompt that leaves no room for ``max_new_tokens`` within ``limit`` is a usage error."""
    if limit and prompt_tokens + max_new_tokens > limit:
        raise UsageError(
            f"the prompt is {prompt_tokens} tokens; with --max-new-tokens {max_new_tokens} "
            f"it exceeds the target's context of {limit} tokens; shorten it or lower "
            "--max-new-tokens"
        )


EARLY_CHECK_BYTES = 16_384
"""Prompts longer than this (in UTF-8 bytes) are measured with the target's tokenizer alone
before any model loads, so an over-long prompt is refused in seconds, not after the load."""


def check_prompt_early(
    spec: LadderSpec, text: str, max_new_tokens: int, raw: bool = False, progress: bool = True
) -> None:
    """Refuse a long prompt that cannot fit the target's context before loading any model,
    with the target's tokenizer and config alone. Shorter prompts are only checked after
    loading (``Ladder.check_length``), where the cost of a load is small beside theirs."""
    from csdraft.models.transformers_backend import load_tokenizer, local_context_length

    if len(text.encode("utf-8")) <= EARLY_CHECK_BYTES or spec.target.backend != "transformers":
        return
    limit = local_context_length(spec.target.ref, progress)
    if limit:
        ids = encode(load_tokenizer(spec.target.ref, progress), text, raw)
        check_length(len(ids), max_new_tokens, limit)


def load(
    ladder: str | None = None, config: str | Path | None = None, progress: bool = False
) -> Ladder:
    """Load a ladder by name (default: the first) from the shipped ladders and your user
    config, or from the YAML file ``config``."""
    return Ladder.load(get_ladder(ladder, Path(config) if config else None), progress)


__all__ = ["Ladder", "Result", "check_length", "encode", "load", "trace"]
