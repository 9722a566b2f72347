"""Rendering a generation: colours by rung kind, the legend, the plain and the live views, and
the summary table."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from tiny_ladder import tiny_tokenizer

from csdraft.trace import Commit, Finish, Review, Start, Stats
from csdraft.viz import (
    LiveView,
    PlainView,
    legend,
    lost_branches,
    rung_style,
    status_line,
    summary_table,
)

KINDS = ["target", "model", "model", "statistical", "bag-of-words"]
NAMES = ["big", "mid", "small", "max-gram", "toy"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def ids(tok, text: str) -> list[int]:
    return [tok.convert_tokens_to_ids(w) for w in text.split()]


def events(tok) -> list:
    """Two target passes: the first keeps w1 (mid) and w2 (max-gram), refuses w9 w8, adds w3;
    the second keeps w4 (toy) and adds w5, then a newline-free finish."""
    return [
        Start(NAMES, 3, kinds=KINDS),
        Review(1, ids(tok, "w2"), [3], 1, ids(tok, "w9")[0], 0.01, 0.05),
        Review(0, ids(tok, "w1 w2 w9 w8"), [1, 3, 1, 1], 2, ids(tok, "w3")[0], 0.1, 0.1),
        Commit(ids(tok, "w1 w2 w3"), [1, 3, 0], ids(tok, "w9 w8"), [1, 1], t=0.1),
        Review(0, ids(tok, "w4"), [4], 1, ids(tok, "w5")[0], 0.1, 0.2),
        Commit(ids(tok, "w4 w5"), [4, 0], t=0.2),
        Finish("length", t=0.25),
    ]


def test_rung_style_by_kind():
    assert rung_style(0, KINDS) == "bold"  # the target's own tokens
    assert rung_style(1, KINDS) == "cyan"
    assert rung_style(2, KINDS) == "green"
    assert rung_style(3, KINDS) == "magenta"  # Max-Gram: not a model
    assert rung_style(4, KINDS) == "magenta"  # any other cheap drafter too
    assert rung_style(0, []) == "bold"
    # Neural drafters take the colours in turn, whatever cheap drafters sit between them.
    kinds = ["target", "model", "statistical", "model", "model", "model", "model"]
    assert rung_style(3, kinds) == "yellow"
    assert rung_style(6, kinds) == rung_style(2, ["target", "model", "model"])
    assert rung_style(5, ["target"]) not in ("bold", "magenta")  # unknown kind: a model


def test_legend_names_every_rung_in_its_colour():
    text = legend(NAMES, KINDS)
    assert text.plain.startswith("drafted by: ")
    for name in NAMES:
        assert f"■ {name}" in text.plain
    assert "■ big (own token)" in text.plain
    assert "~rejected~" in text.plain
    styles = {text.plain[s.start : s.end].strip(): str(s.style) for s in text.spans}
    assert styles["■ big (own token)"] == "bold"
    assert styles["■ mid"] == "cyan"
    assert styles["■ max-gram"] == styles["■ toy"] == "magenta"
    assert "strike" in styles["~rejected~"]


def test_plain_view_writes_only_text(tok):
    out = io.StringIO()
    with PlainView(tok, out) as view:
        for event in events(tok):
            view.add(event)
    assert out.getvalue() == "w1 w2 w3 w4 w5\n"


def sgr_runs(raw: str) -> list[tuple[set[str], str]]:
    """(SGR parameters, text) for every run of text after an ANSI colour code."""
    return [
        (set(params.split(";")), text)
        for params, text in re.findall(r"\x1b\[([0-9;]*)m([^\x1b]*)", raw)
        if text
    ]


def test_live_view_strikes_rejections_and_shows_the_legend(tok):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system="standard")
    stream = events(tok)
    with LiveView(tok, console) as view:
        for event in stream[:4]:
            view.add(event)
        after_first_commit = out.getvalue()
        for event in stream[4:]:
            view.add(event)
    raw = out.getvalue()
    runs = sgr_runs(after_first_commit)
    struck = [text for params, text in runs if "9" in params]  # SGR 9: crossed out
    assert any("w9 w8" in text for text in struck), runs
    assert all("w1" not in text and "w3" not in text for text in struck)
    # Kept tokens, coloured by their drafter: mid (cyan 36), max-gram (magenta 35), own (bold 1).
    assert ({"36"}, "w1") in runs and ({"35"}, " w2") in runs and ({"1"}, " w3") in runs
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    for name in NAMES:
        assert f"■ {name}" in plain
    assert "big kept" in plain  # the counters
    # What stays on screen at the end: the text, and no rejection from the last step.
    final = raw[raw.rindex("\x1b[?25h") :]
    assert "w1" in final and "w5" in final and "w9" not in final


def test_live_view_strikes_each_lost_node_of_a_tree(tok):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system="standard")
    # Nodes: w1 (root child), w7 (its sibling), w2 (child of w1), w8 (sibling of w2); kept w1 w2.
    tree = ids(tok, "w1 w7 w2 w8")
    with LiveView(tok, console) as view:
        view.add(Start(NAMES, 3, kinds=KINDS))
        view.add(Review(0, tree, [1] * 4, 2, ids(tok, "w3")[0], 0.1, 0.1, [-1, -1, 0, 0], [0, 2]))
        view.add(Commit(ids(tok, "w1 w2 w3"), [1, 1, 0], ids(tok, "w7 w8"), [1, 1], t=0.1))
        struck = [text for params, text in sgr_runs(out.getvalue()) if "9" in params]
    assert any("w7|w8" in text for text in struck), struck


def test_lost_branches_follow_extended_siblings():
    """Node order of an extended tree: chain 0-1, siblings 2 (of 0) and 3 (of 1), then each
    leaf's extension: 4-5 under 2, 6 under 3, 7 under 1. Kept: 0, 1, 7."""
    parents = [-1, 0, -1, 0, 2, 4, 3, 1]
    review = Review(0, list(range(8)), [1] * 8, 3, 9, 0.1, 0.1, parents, [0, 1, 7])
    assert lost_branches(review) == [[2, 4, 5], [3, 6]]


def test_live_view_scrolls_finished_lines():
    class Lines:
        """Decodes ids as characters: 0 is a newline, n is the letter n."""

        def decode(self, ids, skip_special_tokens=True):
            return "".join("\n" if i == 0 else chr(ord("a") + i - 1) for i in ids)

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=60, color_system="standard")
    with LiveView(Lines(), console) as view:
        view.add(Start(["t", "m"], 1, kinds=["target", "statistical"]))
        view.add(Commit([1, 2, 0, 3], [1, 1, 0, 0], rejected=[0, 4], rejected_origins=[1, 1]))
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "ab\n" in plain  # the finished line was printed
    assert "⏎d" in plain  # a rejected newline is shown as ⏎


def test_status_line_and_summary_table(tok):
    stats = Stats.of(events(tok))
    line = status_line(stats).plain
    assert line.startswith("5 tokens")
    assert "2.50 tok/target fwd" in line
    assert "big kept 60%" in line and "mid kept 100%" in line
    table = summary_table(stats)
    console = Console(file=io.StringIO(), width=150, color_system=None)
    console.print(table)
    text = console.file.getvalue()
    for name in NAMES:
        assert name in text
    assert "60.0%" in text and "finished: length" in text
    coloured = Console(file=io.StringIO(), width=150, force_terminal=True, color_system="standard")
    coloured.print(table)
    runs = [(params, text.strip()) for params, text in sgr_runs(coloured.file.getvalue())]
    assert ({"35"}, "max-gram") in runs and ({"35"}, "toy") in runs  # magenta
    assert ({"1"}, "big") in runs and ({"36"}, "mid") in runs
