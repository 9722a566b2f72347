"""Response bodies and stream chunks in the OpenAI API's shapes, each with csdraft's own
``csdraft`` object: what the cascade did for this request (from ``trace.Stats``)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from csdraft.runs import Outcome
from csdraft.trace import Event, Stats

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
"""The engine's finish reasons as the OpenAI API names them."""


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def csdraft_object(events: list[Event], token_ids: list[int], queue_s: float) -> dict[str, Any]:
    """The request's speculation record: its token ids, lossless or not (and how lossy), the
    stats of ``csdraft generate --json`` (tokens per target forward, proposed and accepted by
    reviewer, acceptance by draft position...), and where the time went."""
    stats = Stats.of(events)
    outcome = Outcome.of(events, stats.wall_s)
    return {
        "token_ids": token_ids,
        **stats.as_dict(),
        "lossy": stats.lossy_label(),
        "queue_s": round(queue_s, 4),
        "prompt_s": round(outcome.prefill_s or 0.0, 4),
        "decode_s": round(outcome.decode_s or 0.0, 4),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """Token counts as the target's tokenizer counts them."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _choice(kind: str, text: str | None, finish: str | None, delta: bool) -> dict[str, Any]:
    if kind == "completion":
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    if delta:
        return {
            "index": 0,
            "delta": {} if text is None else {"content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    message = {"role": "assistant", "content": text, "refusal": None}
    return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}


def body(
    kind: str,
    rid: str,
    model: str,
    text: str,
    finish: str,
    counts: dict[str, int],
    record: dict[str, Any],
) -> dict[str, Any]:
    """A whole (not streamed) response."""
    return {
        "id": rid,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(kind, text, finish, delta=False)],
        "usage": counts,
        "csdraft": record,
    }


def chunk(
    kind: str,
    rid: str,
    model: str,
    text: str | None = None,
    finish: str | None = None,
    counts: dict[str, int] | None = None,
    record: dict[str, Any] | None = None,
    role: bool = False,
) -> dict[str, Any]:
    """One streamed chunk: a text delta, the finish (with the ``csdraft`` record), or the
    usage chunk (no choices) that ``stream_options.include_usage`` asks for."""
    choices = [] if counts is not None else [_choice(kind, text, finish, delta=True)]
    if role and kind == "chat":
        choices[0]["delta"] = {"role": "assistant", "content": text or ""}
    out: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if counts is not None:
        out["usage"] = counts
    if record is not None:
        out["csdraft"] = record
    return out
