"""Methods that are not the csdraft engine: transformers' own ``generate`` (plain, assisted, prompt
lookup) on the ladder's loaded target, and llama.cpp's plain greedy decoding of its GGUF. Each is
one small object with ``skip_reason``, ``config`` and ``runner``, as the engine methods are."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from csdraft.bench.data import AnswerStop, answer_cut
from csdraft.console import quiet_transformers
from csdraft.runs import Outcome, Runner
from csdraft.spec import LadderSpec

if TYPE_CHECKING:
    from csdraft.api import Ladder
    from csdraft.bench.settings import Settings


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
    the largest drafter (transformers' default schedule; universal assisted generation, with
    both tokenizers, where the drafter's tokenizer is not the target's), or prompt lookup."""

    lossless = True

    def __init__(self, name: str, description: str, mode: str) -> None:
        self.name = name
        self.description = description
        self.mode = mode  # "generate" | "assisted" | "universal" | "lookup"

    @property
    def assisted(self) -> bool:
        """Whether the ladder's largest drafter assists (``universal``: with its own tokenizer,
        transformers' universal assisted generation)."""
        return self.mode in ("assisted", "universal")

    def skip_reason(self, spec: LadderSpec, settings: Settings) -> str | None:
        models = [spec.target, *spec.drafters[: 1 if self.assisted else 0]]
        if any(m.backend != "transformers" for m in models):
            return "runs transformers' generate, so needs models on the transformers backend"
        if self.mode == "universal" and not settings.greedy:
            return "transformers' universal assisted generation is greedy here"
        if self.assisted and not spec.drafters:
            return "needs a neural drafter as assistant; the ladder has none"
        return None

    def config(self, spec: LadderSpec, settings: Settings) -> dict[str, Any]:
        out: dict[str, Any] = {"rungs": [spec.target.name], "transformers": "generate"}
        out["lossless"] = True
        if self.assisted:
            out["rungs"].append(spec.drafters[0].name)
            out["assistant_model"] = spec.drafters[0].name
        if self.mode == "universal":
            out["assistant_tokenizer"] = spec.drafters[0].name
        if self.mode == "lookup":
            out["prompt_lookup_num_tokens"] = settings.pld_block
        return out

    def runner(self, ladder: Ladder, settings: Settings) -> Runner:
        target = ladder.target.model
        names = [ladder.spec.target.name]
        kwargs: dict[str, Any] = {}
        assistant = None
        if self.assisted:
            helper = ladder.models[ladder.spec.drafters[0].name]
            assistant = helper.model
            names.append(ladder.spec.drafters[0].name)
            kwargs["assistant_model"] = assistant
        foreign = self.assisted and helper.tokenizer is not ladder.tokenizer  # needs both
        if self.mode == "universal" or foreign:
            kwargs.update(assistant_tokenizer=helper.tokenizer, tokenizer=ladder.tokenizer)
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
        seq2seq = bool(target.config.is_encoder_decoder)  # its output: start token, new tokens

        def run(prompt_ids: list[int], max_new_tokens: int) -> Outcome:
            ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
            if not settings.greedy:
                torch.manual_seed(settings.seed)
            if settings.until_answer:
                skip = 1 if seq2seq else len(prompt_ids)
                kwargs["stopping_criteria"] = [_answer_criterion(tok, skip)]
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
            new = out[0, 1 if seq2seq else len(prompt_ids) :].tolist()
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


def _answer_criterion(tokenizer: Any, prompt_tokens: int) -> Any:
    """transformers' StoppingCriteria ending generate at a finished answer (``FINISHED_ANSWER``)
    in the generated text (the runner then cuts at the same token ``answer_cut`` finds);
    ``prompt_tokens``: the ids before the generated ones (an encoder-decoder's: its start token)."""
    from transformers import StoppingCriteria

    from csdraft.bench.data import FINISHED_ANSWER

    class Answer(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            new = input_ids[0, prompt_tokens:].tolist()
            text = tokenizer.decode(new, skip_special_tokens=True)
            done = bool(FINISHED_ANSWER.search(text))
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

    return Answer()
