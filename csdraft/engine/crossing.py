"""Crossings: drafts between rungs with different tokenizers, handed over as text.

Every tokenizer in a ladder has a ``Space``: the committed text (what the target made final,
decoded) tokenized its way. The target's space holds the target's own tokens; any other holds a
re-encoding, extended at each commit by re-encoding from a boundary a few tokens back (the
look-behind, preferring the start of a word), so that a word or a multi-byte character split
across the boundary is encoded as it would be whole; the tokens before that boundary never
change again (``stable``). Each step encodes a few tokens' text, never the whole context.

A draft crosses from a drafter to a reviewer with another tokenizer (``Crossing.propose``): the
reviewer's context is read as text (the committed text, then the draft so far), encoded in the
drafter's space, the drafter proposes, its new tokens are decoded (up to its eos or any special
token, which end its draft and never cross) and the text is encoded in the reviewer's space with
the same look-behind. Of those tokens only the stable ones cross: not the last word, which more
text could still change, unless the drafter ended its draft. The crossed draft is a
deterministic chain (no q): its review stays exact, greedy or sampled (docs/exactness.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from csdraft.engine.draft import Draft
from csdraft.engine.proposer import Engine, Proposer, common_prefix

LOOK_BEHIND = 4
"""Tokens a re-encoding starts before the end of the committed text (at least)."""
_SEARCH = 64
"""How far back a re-encoding looks for the start of a word before taking any clean boundary."""
PROBE = "Hello, wörld! 你好 x = [1, 2]\n\n    return  y_2\t# ünïcode ok"
"""Text a tokenizer must turn back into itself (whole and in two pieces) to take part in a
crossing (``Codec.problem``)."""


class Codec:
    """One tokenizer as text <-> tokens, through its fast (``tokenizers``) backend."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        ids = set(getattr(tokenizer, "all_special_ids", None) or [])
        ids.update(int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special)
        eos = tokenizer.eos_token_id
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
        self.stops = frozenset(ids)
        """Token ids that end a draft rather than cross as text (eos, every special token)."""

    @staticmethod
    def problem(tokenizer: Any) -> str | None:
        """Why ``tokenizer`` cannot take part in a crossing, or None."""
        if getattr(tokenizer, "backend_tokenizer", None) is None:
            return "it has no fast (tokenizers) backend to decode and encode text with"
        codec = Codec(tokenizer)
        whole = codec.decode(codec.encode(PROBE)[0])
        cut = len(PROBE) // 2
        parts = codec.decode(codec.encode(PROBE[:cut])[0] + codec.encode(PROBE[cut:])[0])
        if whole != PROBE or parts != PROBE:
            return f"it does not decode its own encoding back to the same text ({whole[:24]!r})"
        if codec.encode(PROBE)[1][-1] != len(PROBE):
            return "its encodings' character offsets do not cover the text (trimmed offsets?)"
        return None

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of ``text`` and each token's end offset in it, -1 where the boundary after
        it is not clean (a character split between tokens)."""
        enc = self.backend.encode(text, add_special_tokens=False)
        offsets = enc.offsets
        ends = []
        for i, (_, end) in enumerate(offsets):
            nxt = offsets[i + 1][0] if i + 1 < len(offsets) else len(text)
            ends.append(end if end <= nxt and (i + 1 < len(offsets) or end == len(text)) else -1)
        return list(enc.ids), ends

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode([int(t) for t in ids], skip_special_tokens=False)

    def last_word(self, text: str) -> int | None:
        """Where the last pre-token of ``text`` starts (None: no pre-tokenizer to ask)."""
        pre = self.backend.pre_tokenizer
        if pre is None:
            return None
        pieces = pre.pre_tokenize_str(text)
        return pieces[-1][1][0] if pieces else 0


class Space:
    """The committed text in one tokenizer: ``tokens`` (the target's own in the target's space,
    ``exact``), ``ends[i]`` the text offset after token i (-1: not a clean boundary), and
    ``stable``, how many leading tokens will never change."""

    def __init__(self, codec: Codec, exact: bool, look_behind: int = LOOK_BEHIND) -> None:
        self.codec = codec
        self.exact = exact
        self.look_behind = look_behind
        self.tokens: list[int] = []
        self.ends: list[int] = []
        self.text = ""
        self.stable = 0

    def mark(self, k: int) -> int:
        """The text offset after the first ``k`` tokens (-1: not a clean boundary)."""
        return self.ends[k - 1] if k else 0

    def reset(self) -> None:
        self.tokens, self.ends, self.text, self.stable = [], [], "", 0

    def add_tokens(self, ids: Sequence[int]) -> str:
        """The target's space: append committed ``ids``; return the text they complete."""
        clean = len(self.tokens)
        while clean and self.ends[clean - 1] < 0:
            clean -= 1
        self.tokens += [int(t) for t in ids]
        self.stable = len(self.tokens)
        piece = self.codec.decode(self.tokens[clean:])
        if piece.endswith("\ufffd"):  # an incomplete character: wait for its other bytes
            self.ends += [-1] * len(ids)
            return ""
        self.text += piece
        self.ends += [-1] * (len(ids) - 1) + [len(self.text)]
        return piece

    def add_text(self, piece: str) -> None:
        """Any other space: append committed text, re-encoding from ``start()``."""
        self.text += piece
        k = self.start()
        c = self.mark(k)
        ids, ends = self.codec.encode(self.text[c:])
        self.tokens = self.tokens[:k] + ids
        self.ends = self.ends[:k] + [e + c if e >= 0 else -1 for e in ends]
        self.stable = k

    def start(self) -> int:
        """Where a re-encoding starts: the latest boundary at least ``look_behind`` tokens back
        that begins a word (whitespace after a non-space); without one in reach, ``stable``
        or, past ``_SEARCH`` tokens, the farthest clean boundary searched. Never before
        ``stable``, so the tokens before it are final."""
        top = max(self.stable, len(self.tokens) - self.look_behind)
        low = max(self.stable, top - _SEARCH)
        farthest = self.stable
        for k in range(top, low, -1):
            c = self.mark(k)
            if c > 0 and self.text[c : c + 1].isspace() and not self.text[c - 1].isspace():
                return k
            farthest = k if c >= 0 and low > self.stable else farthest
        return farthest

    def context(self, extra: str) -> tuple[list[int], int]:
        """Tokens whose text is the committed text then ``extra``, and where the re-encoded
        part starts (the target's space keeps all its clean tokens)."""
        k = self.clean_before(len(self.tokens)) if self.exact else self.start()
        ids, _ = self.codec.encode(self.text[self.mark(k) :] + extra)
        return self.tokens[:k] + ids, k

    def clean_before(self, j: int) -> int:
        """The latest clean boundary at or before token ``j``."""
        while j and self.ends[j - 1] < 0:
            j -= 1
        return j

    def read(self, context: np.ndarray) -> tuple[str, int] | None:
        """The text ``context`` (tokens of this space: committed text, then a draft) holds
        after the committed text, and the clean boundary it was read from; None when the
        context does not begin with the committed text."""
        k = self.clean_before(
            min(common_prefix(context, np.asarray(self.tokens)), len(self.tokens))
        )
        head = self.text[self.mark(k) :]
        text = self.codec.decode(context[k:])
        if not text.startswith(head):
            return None
        return text[len(head) :].rstrip("\ufffd"), k

    def continuation(self, context: np.ndarray, k: int, before: str, new: str, final: bool):
        """Tokens continuing ``context`` (read from boundary ``k``, its draft text ``before``)
        with text ``new``; only those that more text cannot change unless ``final``."""
        c = self.mark(k)
        text = self.text[c:] + before + new
        ids, ends = self.codec.encode(text)
        m = len(context) - k
        if ids[:m] == [int(t) for t in context[k:]]:
            ids, ends = ids[m:], ends[m:]
        else:  # the context is not this tokenizer's own encoding there: encode the new text
            text = new
            ids, ends = self.codec.encode(new)
        if final:
            return ids
        word = self.codec.last_word(text)
        if word is None:
            return ids[:-1]
        clean = [i + 1 for i, end in enumerate(ends) if 0 <= end <= word]
        return ids[: clean[-1]] if clean else []


class Crossing:
    """The token spaces of a ladder whose rungs do not all share a tokenizer, and the crossings
    between them. ``tokenizers``: per rung, its tokenizer (None for a statistical rung, which
    works in the space of the model rung above it); ``widths``: per rung, its logits' width
    (a space's first model rung sets the width the others' logits are fitted to)."""

    def __init__(
        self,
        tokenizers: Sequence[Any],
        widths: Sequence[int | None] = (),
        look_behind: int = LOOK_BEHIND,
    ) -> None:
        self.spaces: list[Space] = []
        self.space_of: list[int] = []
        self.width: list[int | None] = []
        """Per space: the width its drafters' logits are fitted to."""
        seen: dict[int, int] = {}
        widths = list(widths) + [None] * (len(tokenizers) - len(widths))
        for tok, width in zip(tokenizers, widths, strict=True):
            if tok is None:
                self.space_of.append(self.space_of[-1])
                continue
            if id(tok) not in seen:
                seen[id(tok)] = len(self.spaces)
                self.spaces.append(Space(Codec(tok), not self.spaces, look_behind))
                self.width.append(width)
            self.space_of.append(seen[id(tok)])
        self._given = [0] * len(self.spaces)

    def crosses(self, reviewer: int, drafter: int) -> bool:
        return self.space_of[reviewer] != self.space_of[drafter]

    def rung_width(self, rung: int) -> int | None:
        return self.width[self.space_of[rung]]

    def reset(self, prompt: Sequence[int]) -> list[list[int]]:
        """A new generation: every space takes the prompt; per rung, the prompt's stable tokens
        in its space."""
        for space in self.spaces:
            space.reset()
        piece = self.spaces[0].add_tokens(prompt)
        for space in self.spaces[1:]:
            space.add_text(piece)
        self._given = [0] * len(self.spaces)
        return self._news()

    def commit(self, tokens: Sequence[int]) -> list[list[int]]:
        """The target made ``tokens`` final: per rung, its space's tokens that became stable."""
        piece = self.spaces[0].add_tokens(tokens)
        if piece:
            for space in self.spaces[1:]:
                space.add_text(piece)
        return self._news()

    def _news(self) -> list[list[int]]:
        news = []
        for s, space in enumerate(self.spaces):
            news.append(space.tokens[self._given[s] : space.stable])
            self._given[s] = space.stable
        return [news[s] for s in self.space_of]

    def propose(
        self, reviewer: int, drafter: Proposer, context: np.ndarray, n: int, engine: Engine
    ) -> Draft:
        """Up to ``n`` tokens of ``reviewer``'s space continuing ``context``, drafted by
        ``drafter`` in its own space and crossed as text (a deterministic chain)."""
        ours, theirs = (
            self.spaces[self.space_of[reviewer]],
            self.spaces[self.space_of[drafter.index]],
        )
        read = ours.read(context)
        if read is None:
            return Draft()
        before, k = read
        own, j = theirs.context(before)
        own = np.asarray(own, dtype=np.int64)
        proposed = drafter.propose(own, n + 1, engine).trunk().tokens
        stop = next((i for i, t in enumerate(proposed) if t in theirs.codec.stops), None)
        final = stop is not None
        base = theirs.codec.decode(own[j:])
        text = theirs.codec.decode([*own[j:], *proposed[:stop]])
        if not text.startswith(base):
            return Draft()
        new = text[len(base) :]
        if new.endswith("\ufffd"):
            new, final = new.rstrip("\ufffd"), False
        if not new:
            return Draft()
        ids = ours.continuation(context, k, before, new, final)
        return Draft.deterministic(ids[:n], drafter.index)
