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

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csdraft import trace
from csdraft.engine import Cascade, Sampling, learn_bigram
from csdraft.engine.batch import Batcher
from csdraft.errors import CsdraftError, UsageError
from csdraft.ladder import get_ladder
from csdraft.models.interface import LoadedModel
from csdraft.models.pooled import pooled_models
from csdraft.models.prefixes import PrefixStore
from csdraft.spec import LadderSpec, build_cascade
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

    def as_json(self, ladder: str) -> dict[str, Any]:
        """What ``csdraft generate --json`` prints for it (one line per request with --batch)."""
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "lossless": self.stats.lossless,
            "stats": {"ladder": ladder, **self.stats.as_dict()},
        }


class Ladder:
    """A ladder with its models loaded and their tokenizers checked against the target's.

    ``models`` maps each model rung's name to its loaded model (the target first), each from
    the backend its ``RungSpec`` names. Cascades are built afresh for every generation
    (``build_cascade``), so they never share a cache; any validated spec whose model rungs were
    loaded here (a sub-ladder, other settings) runs over the same models."""

    def __init__(
        self, spec: LadderSpec, models: dict[str, LoadedModel], bigram: dict[int, int] | None
    ) -> None:
        self.spec = spec
        self.models = models
        self.bigram = bigram
        self.batcher = Batcher()
        """Batches the passes of generations running at once (``stream`` in several threads,
        ``generate_many``): ``csdraft.engine.batch``."""

    @classmethod
    def load(cls, spec: LadderSpec, progress: bool = True) -> Ladder:
        """Load every model rung (preparing offline packs once) and check tokenizers match."""
        from csdraft.models import load, tokenizer_fingerprint
        from csdraft.models.seq2seq import check_ladder as check_encoder_decoder

        invariant = spec.target.batch_invariant is not False  # a target's default
        target = load(spec.target, progress, batch_invariant=invariant)
        models = {spec.target.name: target}
        known: dict[str, Any] = {}  # fingerprint -> tokenizer, computed only where files differ
        for d in spec.drafters:
            loaded = load(d, progress, target, batch_invariant=d.batch_invariant is True)
            if loaded.tokenizer is not target.tokenizer:
                known = known or {tokenizer_fingerprint(target.tokenizer): target.tokenizer}
                mark = tokenizer_fingerprint(loaded.tokenizer)
                if mark not in known:  # another family: its drafts cross as text
                    check_crossing(spec, d.name, d.ref, loaded.tokenizer)
                known.setdefault(mark, loaded.tokenizer)
                loaded.tokenizer = known[mark]  # one object per tokenizer: one token space
            check_vocab(spec.name, d.name, loaded.vocab_size, len(loaded.tokenizer))
            if d.vocab is not None:  # cut now (seconds), not in the first request (``serve``)
                loaded.draft_head(d.vocab)
            models[d.name] = loaded
        if len(known) > 1:
            check_crossing(spec, spec.target.name, spec.target.ref, target.tokenizer)
            _check_extenders(spec, models)
        check_encoder_decoder(spec, models)
        bigram = None
        if spec.maxgram and spec.maxgram.bigram_text:
            lines = Path(spec.maxgram.bigram_text).expanduser().read_text().splitlines()
            bigram = learn_bigram(target.tokenizer([ln for ln in lines if ln.strip()])["input_ids"])
        if spec.drafting_rungs:
            _warn_slow_blocks(spec, models)
        return cls(spec, models, bigram)

    @property
    def tokenizer(self) -> Any:
        return self.target.tokenizer

    @property
    def target(self) -> LoadedModel:
        """The target's loaded model."""
        return self.models[self.spec.target.name]

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end generation (the generation config's and the tokenizer's)."""
        return self.target.eos_ids

    @property
    def prefix_stores(self) -> dict[str, PrefixStore]:
        """Each model rung's store of recent prompts' cache rows, by rung name: a request
        streamed here starts from the longest stored start of its prompt where that is exact
        (``csdraft.models.prefixes``)."""
        return {n: m.prefixes for n, m in self.models.items() if hasattr(m, "prefixes")}

    def forget_prompts(self) -> None:
        """Empty every prefix store (``prefix_stores``)."""
        for store in self.prefix_stores.values():
            store.clear()

    @property
    def context_length(self) -> int | None:
        """The target's maximum context, when its config says."""
        return self.target.context_length

    def encode(self, text: str, raw: bool = False) -> list[int]:
        """Prompt ids: through the chat template for instruct models unless ``raw``."""
        return encode(self.tokenizer, text, raw)

    def check_length(self, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
        """A prompt that leaves no room for ``max_new_tokens`` is a usage error (for an
        encoder-decoder rung: an input or output past its own limits)."""
        from csdraft.models.seq2seq import is_encoder_decoder, length_problem

        check_length(len(prompt_ids), max_new_tokens, self.context_length)
        for name, model in self.models.items():
            problem = is_encoder_decoder(model) and length_problem(
                name, model, len(prompt_ids), max_new_tokens
            )
            if problem:
                raise UsageError(problem)

    def cascade(
        self,
        spec: LadderSpec | None = None,
        sampling: Sampling | None = None,
        seed: int | None = None,
    ) -> Cascade:
        """A fresh cascade for ``spec`` (default: the ladder's own) over the loaded models:
        bench's baselines, tune's candidates and a request's own settings are specs."""
        spec = self.runnable(spec)
        return build_cascade(spec, self.models, sampling, seed, self.bigram)

    def runnable(self, spec: LadderSpec | None) -> LadderSpec:
        """``spec`` (default: the ladder's), checked to run on the models loaded here: every
        model rung's model, dtype, device and backend as loaded, Max-Gram's bigram table the
        loaded one (statistical rungs need nothing else loaded), and what encoder-decoder
        models allow (``seq2seq.check_ladder``) (a one-line UsageError)."""
        from csdraft.models.seq2seq import check_ladder as check_encoder_decoder

        if spec is None:
            return self.spec
        check_encoder_decoder(spec, self.models)
        loaded = {r.name: r for r in self.spec.rungs}
        key = ("ref", "dtype", "device", "backend")
        for rung in (r for r in spec.rungs if r.reviews):
            have = loaded.get(rung.name)
            same = have is not None and have.reviews
            if not (same and all(getattr(have, k) == getattr(rung, k) for k in key)):
                raise UsageError(
                    f"ladder '{spec.name}': rung {rung.name} is not loaded in ladder "
                    f"'{self.spec.name}' as it is given; load a ladder that has it"
                )
        own = self.spec.maxgram.bigram_text if self.spec.maxgram else None
        if spec.maxgram and spec.maxgram.bigram_text != own:
            raise UsageError(f"ladder '{spec.name}': max-gram's bigram_text is not the loaded one")
        return spec

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
        spec: LadderSpec | None = None,
    ) -> Iterator[Event]:
        """The events of one generation (text is encoded with the chat template unless
        ``raw``; token ids are used as they are). Settings default to the ladder's, or to
        ``spec``'s: any validated spec over the loaded models (``spec.keep``, ``with_rung``...).
        Generations streamed at once from several threads have their model passes batched
        (``csdraft.engine.batch``), each output exactly what it is alone (a greedy one stops
        drafting while the spec's ``drafts_below`` requests or more run)."""
        ids, spec = self._request(
            prompt,
            raw,
            spec,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        gen = spec.generation
        pooled = pooled_models(self.models, spec, self.batcher)
        cascade = build_cascade(spec, pooled, gen.sampling, None, self.bigram, self._busy(spec))
        stops = StopStrings(self.tokenizer, list(gen.stop)) if gen.stop else None
        events = cascade.generate(ids, gen.max_new_tokens, self.eos_ids, stops)
        yield from self.batcher.run(events)

    def _busy(self, spec: LadderSpec) -> Callable[[], bool] | None:
        """``spec.drafts_below`` as a cascade's ``busy``: whether that many requests run now."""
        below = spec.drafts_below
        return None if below is None else lambda: self.batcher.members_now() >= below

    def generate_many(
        self,
        prompts: Sequence[str | Sequence[int] | Mapping[str, Any]],
        max_new_tokens: int | None = None,
        *,
        concurrency: int = 4,
        **options: Any,
    ) -> list[Result]:
        """``generate`` for every prompt, ``concurrency`` at a time, their passes batched
        (``csdraft.engine.batch``): results in input order, each exactly what ``generate``
        gives for its prompt alone. A prompt may be a mapping: ``{"prompt": ..., "seed": 3}``,
        its own settings over ``options``. Every request is checked before any runs."""
        return list(self.iter_many(prompts, max_new_tokens, concurrency=concurrency, **options))

    def iter_many(
        self,
        prompts: Sequence[str | Sequence[int] | Mapping[str, Any]],
        max_new_tokens: int | None = None,
        *,
        concurrency: int = 4,
        **options: Any,
    ) -> Iterator[Result]:
        """``generate_many``'s results one by one, in input order, each as soon as it and those
        before it are done (``generate --batch`` writes each at once). An error, Ctrl-C or
        closing the iterator early cancels the requests not started and stops those running
        at their next token (their caches freed)."""
        import inspect

        keys = set(inspect.signature(self.stream).parameters)  # what one request may set
        jobs = []
        for item in prompts:
            settings = {"max_new_tokens": max_new_tokens, **options}
            settings |= dict(item) if isinstance(item, Mapping) else {"prompt": item}
            if unknown := sorted(set(settings) - keys):
                raise UsageError(f"unknown request setting(s) {', '.join(unknown)}")
            if "prompt" not in settings:
                raise UsageError("a request without a 'prompt'")
            raw = settings.pop("raw", False)
            ids = self.prompt_ids(settings.pop("prompt"), raw)
            jobs.append((ids, settings))
        for ids, settings in jobs:  # bad settings fail here, before anything runs
            self._request(ids, **settings)
        return self._run_many(jobs, concurrency)

    def _run_many(
        self, jobs: list[tuple[list[int], dict[str, Any]]], concurrency: int
    ) -> Iterator[Result]:
        """``iter_many``'s generations of checked ``jobs`` (prompt ids, ``stream`` settings)."""
        import threading
        from concurrent.futures import Future, ThreadPoolExecutor

        stop = threading.Event()

        def run(job: tuple[list[int], dict[str, Any]]) -> Result | None:
            ids, settings = job
            events = []
            stream = self.stream(ids, **settings)
            try:
                for event in stream:
                    if stop.is_set():
                        return None
                    events.append(event)
            finally:
                stream.close()  # frees its caches now, also when stopped
            return Result.of(events, ids, self.tokenizer)

        pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="csdraft")
        futures: list[Future[Result | None]] = []

        def start() -> None:  # the first drive starts them all
            if not futures:
                futures.extend(pool.submit(run, job) for job in jobs)

        try:
            for n in range(len(jobs)):  # every pass in this thread until result n is done
                self.batcher.drive(start, lambda n=n: futures[n].done())
                result = futures[n].result()
                assert result is not None  # only a stopped request gives None
                yield result
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

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

    def _request(
        self,
        prompt: str | Sequence[int],
        raw: bool = False,
        spec: LadderSpec | None = None,
        stop: Sequence[str] = (),
        **generation: Any,
    ) -> tuple[list[int], LadderSpec]:
        """One request's prompt ids and spec (``stream``'s settings over ``spec``'s), checked
        to run here (a one-line UsageError), nothing built yet."""
        spec = self.runnable(spec).with_generation(stop=stop or None, **generation)
        ids = self.prompt_ids(prompt, raw)
        self.check_length(ids, spec.generation.max_new_tokens)
        return ids, spec


def _warn_slow_blocks(spec: LadderSpec, models: dict[str, LoadedModel]) -> None:
    """One warning line when some model of a drafting ladder has block passes that cost about
    one pass per token on this CPU (``models.cpu``): speculation cannot pay for it here."""
    from csdraft.models.cache import warn
    from csdraft.models.cpu import slow_blocks_warning

    message = slow_blocks_warning(models)
    if message:
        warn(message)


def check_crossing(spec: LadderSpec, name: str, ref: str, tokenizer: Any) -> None:
    """A one-line error unless rung ``name``'s tokenizer can take part in a crossing (a ladder
    mixing tokenizers hands drafts over as text)."""
    from csdraft.engine.crossing import Codec

    if problem := Codec.problem(tokenizer):
        raise CsdraftError(
            f"ladder '{spec.name}': rung '{name}' ({ref}) has its own tokenizer, so drafts cross "
            f"to or from it as text, but {problem}"
        )


def _check_extenders(spec: LadderSpec, models: dict[str, LoadedModel]) -> None:
    """A tree's leaves are extended in its reviewer's tokens: never by a rung of another
    tokenizer (a one-line error)."""
    from csdraft.engine import kmatrix

    for r, rung in enumerate(spec.rungs):
        first = kmatrix.first_drafter(spec.k_matrix, r) if rung.tree and rung.tree.extend else None
        if first is None:
            continue
        drafter = spec.rungs[first]
        if models[drafter.name].tokenizer is not models[rung.name].tokenizer:
            raise UsageError(
                f"ladder '{spec.name}': {rung.name}'s tree extend runs {drafter.name}, whose "
                "tokenizer differs from its own; drop extend or put a same-tokenizer drafter first"
            )


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


def encode(tokenizer: Any, text: str, raw: bool = False) -> list[int]:
    """Prompt ids: through the chat template for instruct models unless ``raw``."""
    if not text.strip():
        raise UsageError("the prompt is empty; pass --prompt TEXT or pipe text on stdin")
    if not raw and getattr(tokenizer, "chat_template", None):
        return chat_ids(tokenizer, [{"role": "user", "content": text}])
    return tokenizer(text)["input_ids"]


def chat_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Prompt ids of chat ``messages`` through the tokenizer's chat template, the assistant's
    turn opened (``encode`` of one user message; the server's chat requests)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


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


__all__ = ["Ladder", "Result", "chat_ids", "check_length", "encode", "load", "trace"]
