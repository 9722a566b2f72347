"""Text from token ids as they stream: incremental detokenizing and stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
