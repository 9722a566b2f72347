"""OpenAI-style requests read into a ladder spec: every field checked, every error an ``ApiError``
naming the field (a 400 unless said otherwise). Fields that would change results and that the
cascade does not do (``n`` > 1, ``logprobs``, ``tools``...) are refused, never ignored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from csdraft.api import Ladder, chat_ids
from csdraft.errors import UsageError
from csdraft.spec import LadderSpec, deferrals_of


class ApiError(Exception):
    """An error response: its status, message, the field it is about and a code."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(param: str | None, message: str, code: str | None = "invalid_value") -> ApiError:
    """A 400 about ``param``."""
    return ApiError(400, f"{param}: {message}" if param else message, param, code)


# Fields that change results which the cascade does not do: accepted only at their neutral
# value (None, or the value given here).
UNSUPPORTED: dict[str, Any] = {
    "n": 1,
    "best_of": 1,
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": None,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "repetition_penalty": 1,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "response_format": None,
    "echo": False,
    "suffix": None,
    "min_tokens": 0,
    "prediction": None,
    "audio": None,
    "modalities": None,
    "reasoning_effort": None,
    "web_search_options": None,
}
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options"}
"""Fields that change nothing in the output (``stream_options`` is read on its own)."""
GENERATION = {
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
}
SETTINGS = {"k_matrix", "lenience", "min_confidence", "deferral", "alpha"}
"""csdraft's extra fields: a request's own ladder settings, as ``csdraft generate`` takes them."""
COMMON = {"model", "stream", *GENERATION, *SETTINGS, *UNSUPPORTED, *IGNORED}
FIELDS = {"chat": COMMON | {"messages"}, "completion": COMMON | {"prompt"}}


SEED_LIMIT = 2**64


@dataclass
class Request:
    """A checked request: the prompt's ids, the spec it runs with, and how to answer."""

    kind: str  # "chat" or "completion"
    prompt_ids: list[int]
    spec: LadderSpec
    stream: bool = False
    include_usage: bool = False

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings the text is cut at (the ladder's and the request's)."""
        return self.spec.generation.stop


def parse_request(body: Any, kind: str, ladder: Ladder) -> Request:
    """The ``Request`` a JSON body describes for ``kind`` ("chat" or "completion"), or an
    ApiError: 400 naming the field, 404 for a model this server does not serve."""
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object")
    for key in body:
        if key not in FIELDS[kind]:
            raise bad(key, "unknown field", "unknown_field")
    for key, neutral in UNSUPPORTED.items():
        if body.get(key) not in (None, neutral):
            raise bad(key, f"not supported by csdraft (only {neutral!r})", "unsupported_field")
    model = body.get("model")
    if not isinstance(model, str):
        raise bad("model", "required: a string naming the model (see /v1/models)")
    if model != ladder.spec.name:
        raise ApiError(
            404,
            f"model '{model}' is not served here; this server serves '{ladder.spec.name}'",
            "model",
            "model_not_found",
        )
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise bad("stream_options", 'expected {"include_usage": true|false}')
    include_usage = _flag(options or {}, "include_usage", "stream_options.include_usage")
    if options is not None and not stream:
        raise bad("stream_options", "only allowed when stream is true")
    spec = request_spec(body, ladder.spec)
    ids = _prompt_ids(body, kind, ladder)
    try:
        ladder.check_length(ids, spec.generation.max_new_tokens)
    except UsageError as e:
        message = str(e).replace("--max-new-tokens", "max_tokens")
        param = "messages" if kind == "chat" else "prompt"
        raise bad(param, message, "context_length_exceeded") from None
    return Request(kind, ids, spec, stream, include_usage)


def request_spec(body: dict[str, Any], spec: LadderSpec) -> LadderSpec:
    """``spec`` with the request's generation settings and extra ladder settings, each checked
    by the spec's own rules; errors name the field."""
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise bad("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
    seed = body.get("seed")
    if isinstance(seed, int) and seed >= SEED_LIMIT:  # torch's generators take 64 bits
        raise bad("seed", f"must be below 2**64, got {seed}")
    limit = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    generation = {
        limit: "max_new_tokens",
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "seed": "seed",
        "stop": "stop",
    }
    for param, key in generation.items():
        value = _stop(body.get(param)) if param == "stop" else body.get(param)
        if value is not None:
            with about(param):
                spec = spec.with_generation(param, **{key: value})
    for param in ("k_matrix", "lenience", "min_confidence"):
        if body.get(param) is not None:
            with about(param):
                spec = spec.with_settings(param, **{param: body[param]})
    if body.get("deferral") is not None or body.get("alpha") is not None:
        with about("deferral"):
            rules = _deferral(body.get("deferral"), body.get("alpha"))
            spec = spec.with_settings("deferral", deferral=rules)
    return spec


@contextmanager
def about(param: str) -> Iterator[None]:
    """A UsageError raised inside turned into a 400 about ``param``."""
    try:
        yield
    except UsageError as e:
        message = str(e)
        while (head := message.partition(": ")[0]) in (param, "generation", "max_new_tokens"):
            message = message.removeprefix(f"{head}: ")  # the spec's own names for where
        raise bad(param, message) from None


def _deferral(rules: Any, alphas: Any) -> Any:
    """``deferral`` (a rule, or one per reviewer) with ``alpha`` (one for all, or one each),
    as ``csdraft generate --deferral --alpha`` reads them."""
    if rules is None:
        raise UsageError("alpha needs a deferral rule")
    names = rules if isinstance(rules, list) else [rules]
    if not names or not all(isinstance(n, str) for n in names):
        raise UsageError(f"deferral: expected a rule name or a list of them, got {rules!r}")
    return deferrals_of(names, alphas, "deferral")


def _stop(value: Any) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", "expected a non-empty string or a list of them")
    return stops


def _flag(body: dict[str, Any], key: str, param: str = "") -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(param or key, f"expected true or false, got {value!r:.40}")
    return value


def _prompt_ids(body: dict[str, Any], kind: str, ladder: Ladder) -> list[int]:
    """The prompt's ids: chat messages through the target's chat template, a completion's
    prompt as raw text (or as token ids)."""
    if kind == "chat":
        messages = _messages(body.get("messages"))
        if not getattr(ladder.tokenizer, "chat_template", None):
            raise bad("messages", "the target has no chat template; use /v1/completions")
        try:
            return chat_ids(ladder.tokenizer, messages)
        except Exception as e:  # a template that refuses the messages (roles out of order...)
            raise bad("messages", f"the chat template refused them: {e}") from None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(_token(t, ladder) for t in prompt):
        return [int(t) for t in prompt]
    if not isinstance(prompt, str):
        raise bad("prompt", "expected a string or a list of token ids (one prompt per request)")
    try:
        return ladder.prompt_ids(prompt, raw=True)
    except UsageError:
        raise bad("prompt", "the prompt is empty") from None


def _token(value: Any, ladder: Ladder) -> bool:
    whole = isinstance(value, int) and not isinstance(value, bool)
    return whole and 0 <= value < len(ladder.tokenizer)


def _messages(value: Any) -> list[dict[str, Any]]:
    """Chat messages as the template takes them: a role and text content (a string, or text
    parts joined)."""
    if not isinstance(value, list) or not value:
        raise bad("messages", "required: a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(where, "expected an object with a string role")
        if set(m) - {"role", "content", "name"}:
            raise bad(where, f"unsupported keys {sorted(set(m) - {'role', 'content', 'name'})}")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise bad(f"{where}.content", "only text parts are supported")
            if not all(isinstance(p.get("text"), str) for p in content):
                raise bad(f"{where}.content", "each text part needs a string text")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"{where}.content", "expected a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    if not any(m["content"].strip() for m in out):
        raise bad("messages", "the messages are empty")
    return out
