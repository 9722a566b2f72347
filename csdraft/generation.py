"""A loaded ladder: its models, its tokenizer, prompts, stop strings, and the cascades it builds."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csdraft.engine import Cascade, HFRung, MaxGram, Sampling, learn_bigram
from csdraft.errors import CsdraftError, UsageError
from csdraft.ladder import LadderSpec, ModelSpec


class Detokenizer:
    """Turns token ids into text one token at a time, holding back incomplete characters.

    Each step decodes only a few recent tokens, never the whole generation.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, token: int) -> str:
        """Append one token; return the text it completes (possibly empty)."""
        self.ids.append(int(token))
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""


class StopStrings:
    """A stop check for the cascade: stop after the token that completes any stop string."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.detok = Detokenizer(tokenizer)
        self.text = ""

    def __call__(self, tokens: list[int]) -> int | None:
        for i, token in enumerate(tokens):
            piece = self.detok.add(token)
            self.text += piece
            window = self.text[-(len(piece) + self.longest) :] if piece else ""
            if any(s in window for s in self.stops):
                return i + 1
        return None


@dataclass
class LoadedLadder:
    """A ladder with its models loaded and its tokenizers checked against the target's."""

    spec: LadderSpec
    models: list[Any]  # csdraft.models.LoadedModel, target first
    bigram: dict[int, int] | None = None

    @property
    def tokenizer(self) -> Any:
        return self.models[0].tokenizer

    @classmethod
    def load(cls, spec: LadderSpec, progress: bool = True) -> LoadedLadder:
        """Load every neural rung (preparing offline packs once) and check tokenizers match."""
        from csdraft.models import load_model, tokenizer_fingerprint

        def load(m: ModelSpec, share: Any = None) -> Any:
            return load_model(m.ref, m.dtype, m.device, progress, share_tokenizer=share)

        models = [load(spec.target)]
        target_print = None  # computed only if some drafter's tokenizer files differ
        for d in spec.drafters:
            loaded = load(d, share=models[0])
            if loaded.tokenizer is models[0].tokenizer:
                models.append(loaded)
                continue
            target_print = target_print or tokenizer_fingerprint(models[0].tokenizer)
            if tokenizer_fingerprint(loaded.tokenizer) != target_print:
                raise CsdraftError(
                    f"ladder '{spec.name}': drafter '{d.name}' ({d.ref}) uses a different "
                    f"tokenizer from the target '{spec.target.name}' ({spec.target.ref}); every "
                    "rung must share the target's tokenizer"
                )
            models.append(loaded)
        bigram = None
        if spec.maxgram and spec.maxgram.bigram_text:
            path = Path(spec.maxgram.bigram_text).expanduser()
            if not path.is_file():
                raise UsageError(f"ladder '{spec.name}': maxgram.bigram_text: {path} not found")
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            bigram = learn_bigram(models[0].tokenizer(lines)["input_ids"])
        return cls(spec, models, bigram)

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end generation (the generation config's and the tokenizer's)."""
        ids: set[int] = set()
        eos = self.models[0].model.generation_config.eos_token_id
        ids.update([eos] if isinstance(eos, int) else (eos or []))
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    @property
    def context_length(self) -> int | None:
        """The target's maximum context, when its config says."""
        return getattr(self.models[0].model.config, "max_position_embeddings", None)

    def encode(self, text: str, raw: bool = False) -> list[int]:
        """Prompt ids: through the chat template for instruct models unless ``raw``."""
        if not text.strip():
            raise UsageError("the prompt is empty; pass --prompt TEXT or pipe text on stdin")
        tok = self.tokenizer
        if not raw and getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        return tok(text)["input_ids"]

    def check_length(self, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
        """A prompt that leaves no room for ``max_new_tokens`` is a usage error."""
        limit = self.context_length
        if limit and len(prompt_ids) + max_new_tokens > limit:
            raise UsageError(
                f"the prompt is {len(prompt_ids)} tokens; with --max-new-tokens {max_new_tokens} "
                f"it exceeds the target's context of {limit} tokens; shorten it or lower "
                "--max-new-tokens"
            )

    def cascade(
        self,
        drafters: Sequence[int] | None = None,
        maxgram: bool | None = None,
        k_matrix: Sequence[Sequence[int]] | None = None,
        lenience: float | Sequence[float] | None = None,
        sampling: Sampling | None = None,
        seed: int = 0,
        min_confidence: float | Sequence[float] | None = None,
    ) -> Cascade:
        """A cascade over this ladder, or over a sub-ladder (``drafters``: which neural drafters
        to keep, 1-based; ``maxgram``: keep Max-Gram) for baselines such as bench's."""
        spec = self.spec
        keep = list(range(1, len(spec.drafters) + 1)) if drafters is None else list(drafters)
        use_maxgram = bool(spec.maxgram) if maxgram is None else maxgram
        if use_maxgram and not spec.maxgram:
            raise UsageError(f"ladder '{spec.name}' has no Max-Gram rung")
        rungs = [HFRung(self.models[0].model, spec.target.name)]
        rungs += [HFRung(self.models[i].model, spec.drafters[i - 1].name) for i in keep]
        mg = spec.maxgram
        mag = MaxGram(mg.max_ngram, mg.min_ngram, self.bigram) if use_maxgram and mg else None
        if k_matrix is None:
            k_matrix = spec.k_matrix
        if lenience is None:
            lenience = [spec.lenience[i - 1] for i in keep]
        if min_confidence is None:
            min_confidence = [spec.min_confidence[i - 1] for i in keep]
        try:
            return Cascade(
                rungs, mag, k_matrix, lenience, sampling or Sampling(), seed, min_confidence
            )
        except ValueError as e:
            raise UsageError(f"ladder '{spec.name}': {e}") from None


def sampling_for(
    spec: LadderSpec, temperature: float | None, top_k: int | None, top_p: float | None
) -> Sampling:
    """Sampling settings: flags over the ladder's generation defaults, validated."""
    from csdraft.ladder import check_sampling

    g = spec.generation
    t = g.temperature if temperature is None else temperature
    k = g.top_k if top_k is None else top_k
    p = g.top_p if top_p is None else top_p
    check_sampling(t, k, p, "sampling")
    return Sampling(float(t), int(k), float(p))


def run_generate(
    prompt: str,
    ladder: str | None = None,
    config: Path | None = None,
    max_new_tokens: int | None = None,
    k_matrix: str | None = None,
    lenience: float | list[float] | None = None,
    min_confidence: float | list[float] | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    raw: bool = False,
    as_json: bool = False,
    quiet: bool = False,
    save_trace: Path | None = None,
) -> int:
    """``csdraft generate``: load the ladder, stream the cascade's output, return the exit code."""
    import json
    import sys

    from rich.console import Console

    from csdraft import trace
    from csdraft.ladder import get_ladder
    from csdraft.trace import Finish, Stats
    from csdraft.viz import LiveView, PlainView, summary_table

    spec = get_ladder(ladder, config).with_settings(
        k_matrix=k_matrix, lenience=lenience, min_confidence=min_confidence
    )
    sampling = sampling_for(spec, temperature, top_k, top_p)
    gen = spec.generation
    n_new = max_new_tokens or gen.max_new_tokens
    loaded = LoadedLadder.load(spec, progress=not quiet)
    prompt_ids = loaded.encode(prompt, raw=raw)
    loaded.check_length(prompt_ids, n_new)
    cascade = loaded.cascade(sampling=sampling, seed=gen.seed if seed is None else seed)
    stops = list(gen.stop) + list(stop or [])
    stop_check = StopStrings(loaded.tokenizer, stops) if stops else None

    console = Console()
    live = console.is_terminal and not (quiet or as_json)
    view: Any = (
        None
        if as_json
        else (LiveView(loaded.tokenizer, console) if live else PlainView(loaded.tokenizer))
    )
    events: list = []
    interrupted = False
    with view if view is not None else nullcontext():
        try:
            for event in cascade.generate(prompt_ids, n_new, loaded.eos_ids, stop_check):
                events.append(event)
                if view is not None:
                    view.add(event)
        except KeyboardInterrupt:
            interrupted = True
            events.append(Finish("interrupted", t=cascade.elapsed()))
    stats = Stats.of(events)
    token_ids = [t for e in events if isinstance(e, trace.Commit) for t in e.tokens]
    if save_trace:
        trace.save(
            events,
            save_trace,
            header={"ladder": spec.name, "prompt": prompt, "prompt_ids": prompt_ids},
        )
    if as_json:
        text = loaded.tokenizer.decode(token_ids, skip_special_tokens=True)
        result = {
            "text": text,
            "token_ids": token_ids,
            "stats": {"ladder": spec.name, **stats.as_dict()},
        }
        sys.stdout.write(json.dumps(result) + "\n")
    elif live:
        console.print(summary_table(stats))
    if interrupted:
        print("csdraft: interrupted; the text above is what was generated so far", file=sys.stderr)
        return 130
    return 0
