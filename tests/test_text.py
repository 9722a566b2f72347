"""Text from streamed token ids: the incremental detokenizer and stop strings, with real
tokenizers (byte-level BPE, where one character may span several tokens, and word-level)."""

from __future__ import annotations

import pytest
from engine_helpers import byte_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_ladder import tiny_tokenizer

from csdraft.text import Detokenizer, StopStrings


@pytest.fixture(scope="module")
def btok():
    """Byte-level BPE, one token per byte: é is 2 tokens, € 3, 😀 4."""
    return byte_tokenizer()


@pytest.fixture(scope="module")
def wtok():
    """Word-level: w0 .. w59, decoded joined by spaces."""
    return tiny_tokenizer()


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def words(tok, text: str) -> list[int]:
    return [tok.convert_tokens_to_ids(w) for w in text.split()]


def stream(tok, ids) -> list[str]:
    detok = Detokenizer(tok)
    return [detok.add(t) for t in ids]


def test_multibyte_characters_come_out_whole_at_their_last_byte(btok):
    ids = encode(btok, "aé€😀b")
    assert len(ids) == 1 + 2 + 3 + 4 + 1
    assert stream(btok, ids) == ["a", "", "é", "", "", "€", "", "", "", "😀", "b"]


def test_a_character_split_at_the_start(btok):
    assert stream(btok, encode(btok, "😀😀")) == ["", "", "", "😀", "", "", "", "😀"]


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_streamed_pieces_make_the_whole_text(btok, text):
    ids = encode(btok, text)
    assert btok.decode(ids) == text  # the tokenizer round-trips any text
    pieces = stream(btok, ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_special_tokens_are_skipped(btok):
    ids = encode(btok, "ab") + [btok.eos_token_id] + encode(btok, "€c")
    pieces = stream(btok, ids)
    assert pieces == ["a", "b", "", "", "", "€", "c"]


def test_word_tokens_stream_with_their_spaces(wtok):
    assert stream(wtok, words(wtok, "w1 w2 w13")) == ["w1", " w2", " w13"]
    assert stream(wtok, [wtok.eos_token_id, *words(wtok, "w4 w5")]) == ["", "w4", " w5"]


def test_each_step_decodes_only_recent_tokens(btok):
    """Streaming a long text never decodes the whole generation again."""

    class Counting:
        longest = 0

        def decode(self, ids, **kwargs):
            Counting.longest = max(Counting.longest, len(ids))
            return btok.decode(ids, **kwargs)

    ids = encode(btok, "ab€ " * 100)
    pieces = stream(Counting(), ids)
    assert "".join(pieces) == "ab€ " * 100
    assert Counting.longest <= 6


# ---------------------------------------------------------------------------------------------
# Stop strings


def test_stops_at_the_token_that_completes_the_string(wtok):
    stop = StopStrings(wtok, ["w3"])
    assert stop(words(wtok, "w1 w2 w3 w4")) == 3


def test_a_stop_string_spanning_tokens(wtok):
    stop = StopStrings(wtok, ["w2 w3"])
    assert stop(words(wtok, "w2 w1 w2")) is None  # "w2" alone is not enough
    assert stop(words(wtok, "w3 w4")) == 1  # completed by the first token of this batch


def test_stop_strings_match_text_not_tokens(wtok):
    # "w3" is text inside "w30": stop strings are found in the text, wherever they fall.
    assert StopStrings(wtok, ["w3"])(words(wtok, "w1 w30")) == 2
    assert StopStrings(wtok, ["1 w"])(words(wtok, "w0 w1 w22")) == 3


def test_the_first_of_several_stop_strings(wtok):
    stop = StopStrings(wtok, ["w9", "w5 w6", "w4"])
    assert stop(words(wtok, "w1 w5 w6 w4 w9")) == 3


def test_a_stop_string_ending_inside_a_multibyte_character(btok):
    ids = encode(btok, "ab€cd")
    assert StopStrings(btok, ["€"])(ids) == 5  # a, b and the three bytes of €
    assert StopStrings(btok, ["b€c"])(ids) == 6
    stop = StopStrings(btok, ["€c"])
    assert stop(ids[:3]) is None  # € is held back until its last byte
    assert stop(ids[3:]) == 3  # the rest of €, then c


def test_a_multibyte_stop_string_across_batches(btok):
    ids = encode(btok, "x😀y")
    stop = StopStrings(btok, ["😀"])
    assert [stop([t]) for t in ids[:4]] == [None] * 4  # x, then three bytes of 😀
    assert stop(ids[4:]) == 1  # its last byte completes it


def test_an_invalid_byte_is_shown_once_text_follows(btok):
    ids = encode(btok, "é")[:1] + encode(btok, "ab")  # a lead byte with no continuation
    pieces = stream(btok, ids)
    assert pieces == ["", "\ufffda", "b"]
    assert "".join(pieces) == btok.decode(ids)


@pytest.mark.parametrize("stops", [[], [""]])
def test_no_stop_strings_never_stop(wtok, stops):
    stop = StopStrings(wtok, stops)
    assert stop(words(wtok, "w1 w2 w3")) is None
    assert stop([]) is None
