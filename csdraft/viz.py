"""Rendering a generation's trace: live on a terminal, plain text elsewhere."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from csdraft.text import Detokenizer
from csdraft.trace import Commit, Event, Review, Stats

_DRAFTER_STYLES = ["cyan", "green", "yellow", "blue"]


def rung_style(rung: int, kinds: list[str]) -> str:
    """The colour of tokens drafted by a rung, from its kind: the target's own tokens plain
    bold, cheap (non-model) drafters magenta, neural drafters in turn."""
    if rung == 0:
        return "bold"
    if rung < len(kinds) and kinds[rung] != "model":
        return "magenta"
    return _DRAFTER_STYLES[(rung - 1) % len(_DRAFTER_STYLES)]


def legend(names: list[str], kinds: list[str]) -> Text:
    """One line naming each rung in its colour."""
    text = Text("drafted by: ", style="dim")
    for i, name in enumerate(names):
        text.append(f"■ {name}" + (" (own token)" if i == 0 else ""), style=rung_style(i, kinds))
        text.append("  ")
    text.append("~rejected~", style="strike dim red")
    return text


def status_line(stats: Stats) -> Text:
    """Live counters: tokens, speed, tokens per target forward, acceptance per reviewer."""
    text = Text(style="dim")
    text.append(f"{stats.new_tokens} tokens  {stats.tokens_per_s:.1f} tok/s  ")
    text.append(f"{stats.tokens_per_forward:.2f} tok/target fwd")
    for r in sorted(stats.proposed):
        if stats.proposed[r]:
            name = stats.rungs[r] if stats.rungs else str(r)
            text.append(f"  {name} kept {100 * stats.acceptance(r):.0f}%")
    return text


class LiveView:
    """Streams text as the target accepts it, each token coloured by the rung that drafted it;
    the drafts the target just rejected stay visible, struck through, until the next step.
    Finished lines scroll up; the line being written and the counters stay at the bottom."""

    def __init__(self, tokenizer: Any, console: Console | None = None) -> None:
        self.console = console or Console()
        self.tokenizer = tokenizer
        self.detok = Detokenizer(tokenizer)
        self.stats = Stats(rungs=[])
        self.line = Text()
        self.rejected = Text()
        self.review: Review | None = None  # the target's last review
        self.live = Live(
            console=self.console, refresh_per_second=12, transient=True, auto_refresh=False
        )

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)
        if self.line.plain:
            self.console.print(self.line)

    def _render(self) -> Group:
        lossy = self.stats.lossy_label()
        return Group(
            self.line + self.rejected,
            Text(),
            *([Text(lossy, style="bold yellow")] if lossy else []),
            status_line(self.stats),
            legend(self.stats.rungs, self.stats.kinds),
        )

    def add(self, event: Event) -> None:
        """Show one event."""
        self.stats.add(event)
        if isinstance(event, Review) and event.reviewer == 0:
            self.review = event
        if isinstance(event, Commit):
            kinds = self.stats.kinds
            for token, origin in zip(event.tokens, event.origins, strict=True):
                piece = self.detok.add(token)
                *done, rest = piece.split("\n")
                for part in done:
                    self.line.append(part, style=rung_style(origin, kinds))
                    self.live.console.print(self.line)
                    self.line = Text()
                self.line.append(rest, style=rung_style(origin, kinds))
            self.rejected = Text()
            if event.rejected:
                self.rejected = Text(self._lost(event).replace("\n", "⏎"), style="strike dim red")
        self.live.update(self._render(), refresh=True)

    def _lost(self, commit: Commit) -> str:
        """The rejected text: a chain's refused tail, or each branch of a tree that lost (a
        refused node with the refused descendants that continue it), separated by '|'."""
        review = self.review
        if review is None or review.parents is None:
            return self.tokenizer.decode(commit.rejected, skip_special_tokens=True)
        return "|".join(
            self.tokenizer.decode([review.proposed[i] for i in branch], skip_special_tokens=True)
            for branch in lost_branches(review)
        )


def lost_branches(review: Review) -> list[list[int]]:
    """The nodes of a tree review that were not kept, as branches: each node continues the
    branch ending at its parent, else starts one (node order within each branch)."""
    kept = set(review.kept())
    branches: list[list[int]] = []
    ending: dict[int, list[int]] = {}  # last node -> its branch
    for i, parent in enumerate(review.parents or []):
        if i in kept:
            continue
        branch = ending.pop(parent, None)
        if branch is None:
            branch = []
            branches.append(branch)
        branch.append(i)
        ending[i] = branch
    return branches


class PlainView:
    """Writes only the generated text, as it is accepted (for pipes and ``--quiet``)."""

    def __init__(self, tokenizer: Any, out: TextIO | None = None) -> None:
        self.detok = Detokenizer(tokenizer)
        self.out = out or sys.stdout

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.write("\n")
        self.out.flush()

    def add(self, event: Event) -> None:
        """Write the text of committed tokens."""
        if isinstance(event, Commit):
            self.out.write("".join(self.detok.add(t) for t in event.tokens))
            self.out.flush()


def summary_table(stats: Stats) -> Table:
    """The end-of-generation summary: totals and each rung's reviews."""
    table = Table(title="generation summary", show_edge=False, title_style="bold")
    table.add_column("rung")
    table.add_column("forwards", justify="right")
    table.add_column("proposals scored", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("final tokens drafted", justify="right")
    for r, name in enumerate(stats.rungs):
        table.add_row(
            Text(name, style=rung_style(r, stats.kinds)),
            str(stats.forwards.get(r, "-")),
            str(stats.proposed.get(r, "-")),
            f"{100 * stats.acceptance(r):.1f}%" if stats.proposed.get(r) else "-",
            str(stats.drafted.get(r, 0)),
        )
    table.caption = (
        f"{stats.new_tokens} tokens in {stats.wall_s:.2f} s = {stats.tokens_per_s:.2f} tok/s; "
        f"{stats.tokens_per_forward:.2f} tokens per target forward; finished: {stats.finish}"
    )
    if lossy := stats.lossy_label():
        table.caption += f"\n{lossy} (output differs from the target's own by design)"
    return table
