"""Encoder-decoder rungs (T5, FLAN-T5, mT5, BART): the engine's one token context mapped onto an
encoder input and a decoder sequence.

The engine works on one context, prompt + generated tokens. An encoder-decoder scorer reads the
prompt with its encoder once per generation (``begin``; kept while the prompt stays the same)
and scores the decoder sequence [decoder_start_token_id] + context[len(prompt):] with a KV cache
that crops after a rejection exactly as a decoder-only scorer's does (the cross-attention cache,
a function of the prompt alone, is kept). The logits of the first output token are those after
the decoder start token. Max-Gram needs nothing: it matches over prompt + output already.

Which ladders may hold such rungs (``check_ladder``: all rungs of one kind, no token trees, no
draft vocabulary) and how long an input they take (``length_problem``) are said here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from csdraft.engine.proposer import common_prefix
from csdraft.errors import UsageError

EXPLAIN = (
    "encoder-decoder ladder: each model rung passes the prompt through its encoder once per "
    "generation; drafts, reviews and caches are over decoder tokens (the output so far after "
    "the decoder start token); Max-Gram matches over the prompt and the output"
)
"""What ``inspect`` says of an encoder-decoder ladder."""


def is_encoder_decoder(model: Any) -> bool:
    """Whether a loaded model (any backend) is an encoder-decoder."""
    return bool(getattr(model, "encoder_decoder", False))


class Seq2SeqScorer:
    """An encoder-decoder model as a rung's scorer (``Scorer``): ``score(seq, start)`` over the
    context ``seq``, whose first ``len(prompt)`` tokens are the prompt ``begin`` gave (or, when
    none was given since ``reset``, the first ``start`` tokens of the first ``seq`` scored)."""

    scores_trees: ClassVar[bool] = False

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        self.model = model
        self.name = name
        self.device = next(model.parameters()).device
        self.start_id = int(model.config.decoder_start_token_id)
        self.prompt: np.ndarray | None = None
        self.encoded: torch.Tensor | None = None  # the encoder's output over ``prompt``
        self.cache: Any = None
        self.tokens = np.empty(0, dtype=np.int64)  # the decoder tokens the cache holds
        self.encoder_passes = 0
        """Encoder passes run so far (tests count them)."""

    def reset(self) -> None:
        """Forget the prompt, its encoding and the decoder cache."""
        self.prompt, self.encoded, self.cache = None, None, None
        self.tokens = np.empty(0, dtype=np.int64)

    def begin(self, prompt: Sequence[int]) -> None:
        """A generation over ``prompt`` starts: its encoding is kept if the prompt is the one
        already encoded, else recomputed at the next ``score``."""
        prompt = np.asarray(prompt, dtype=np.int64)
        if self.prompt is None or not np.array_equal(prompt, self.prompt):
            self.prompt, self.encoded = prompt, None
        self.cache, self.tokens = None, np.empty(0, dtype=np.int64)

    @torch.inference_mode()
    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        """Logits [len(seq) - start + 1, vocab] predicting each of seq[start:] and the next
        (``start`` is at least the prompt's length: only output tokens are scored)."""
        from transformers import DynamicCache, EncoderDecoderCache

        if self.prompt is None:
            self.begin(seq[:start])
        assert self.prompt is not None
        p = len(self.prompt)
        dec = np.concatenate([[self.start_id], seq[p:]]).astype(np.int64)
        if self.encoded is None:
            ids = torch.from_numpy(self.prompt).to(self.device)[None]
            self.encoded = self.model.get_encoder()(input_ids=ids).last_hidden_state
            self.encoder_passes += 1
            self.cache = None
        if self.cache is None:
            self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            keep = 0
        else:  # the row predicting seq[start] (decoder index start - p) is fed again
            keep = min(common_prefix(self.tokens, dec), start - p)
            cached = self.cache.get_seq_length()
            if keep < cached:
                self.cache.crop(keep - cached)  # negative: drop that many from the end
        new = torch.from_numpy(np.ascontiguousarray(dec[keep:])).to(self.device)[None]
        out = self.model(
            encoder_outputs=(self.encoded,),
            decoder_input_ids=new,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache, self.tokens = out.past_key_values, dec
        return out.logits[0, -(len(seq) - start + 1) :].float().cpu()


def next_logits(
    model: torch.nn.Module, context: Sequence[int], prompt_tokens: int | None = None
) -> torch.Tensor:
    """float32 logits of the token after ``context``, whose first ``prompt_tokens`` (None: all)
    are the input and the rest the output so far (a fresh scorer: no cache kept)."""
    seq = np.asarray(context, dtype=np.int64)
    scorer = Seq2SeqScorer(model, "next")
    scorer.begin(seq[: len(seq) if prompt_tokens is None else prompt_tokens])
    return scorer.score(seq, len(seq))[-1]


def limits(config: Any) -> int | None:
    """The longest input and the longest decoder sequence an encoder-decoder's config allows
    (learned positions, as BART's), or None (relative positions, as T5's: no hard limit)."""
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def length_problem(name: str, model: Any, prompt_tokens: int, max_new_tokens: int) -> str | None:
    """Why an encoder-decoder rung cannot take a ``prompt_tokens`` input and decode
    ``max_new_tokens`` tokens (its encoder and decoder limits), or None."""
    limit = limits(model.model.config)
    if limit is None:
        return None
    if prompt_tokens > limit:
        return (
            f"the prompt is {prompt_tokens} tokens; model '{name}' (an encoder-decoder) reads "
            f"at most {limit}; shorten it"
        )
    if max_new_tokens > limit:
        return (
            f"--max-new-tokens {max_new_tokens} exceeds model '{name}''s decoder limit of "
            f"{limit} tokens; lower it"
        )
    return None


def check_ladder(spec: Any, models: Mapping[str, Any]) -> None:
    """Refuse, in one line, a ladder that mixes encoder-decoder and decoder-only models, or
    that asks an encoder-decoder ladder for token trees or a draft vocabulary."""
    kinds = {name: is_encoder_decoder(m) for name, m in models.items()}
    if not any(kinds.values()):
        return
    target = spec.target.name
    for name, seq2seq in kinds.items():
        if seq2seq != kinds[target]:
            kind = "an encoder-decoder" if kinds[target] else "a decoder-only"
            raise UsageError(
                f"ladder '{spec.name}': model '{name}' and the target '{target}' ({kind} "
                "model) are not of one kind; mixed encoder-decoder and decoder-only ladders "
                "are not supported"
            )
    for rung in spec.rungs:
        what = (
            "a tree"
            if rung.tree is not None or rung.branches > 1
            else "a draft vocabulary"
            if rung.vocab is not None
            else None
        )
        if what:
            raise UsageError(
                f"ladder '{spec.name}': rung '{rung.name}' has {what}; encoder-decoder "
                "ladders draft linear chains over the whole vocabulary (drop it)"
            )
