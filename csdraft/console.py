"""What the commands share on screen: report consoles, progress bars, number formats, and
quiet transformers logging."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def report_console(stderr: bool = False) -> Console:
    """A console for reports: the terminal's width on a terminal, a wide page when piped, so
    tables stay whole in files."""
    console = Console(stderr=stderr, highlight=False)
    return console if console.is_terminal else Console(stderr=stderr, highlight=False, width=150)


def progress_console(enabled: bool = True) -> Console:
    """The stderr console progress output goes to (silent unless ``enabled``)."""
    return Console(stderr=True, quiet=not enabled, highlight=False)


def task_progress(console: Console | None = None, transient: bool = True) -> Any:
    """Progress bars for counted work (prompts, methods, calibration steps): description,
    bar, done/total, elapsed and remaining time. Disabled on a quiet console."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = console or Console(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=console.quiet,
    )


def byte_progress(console: Console) -> Any:
    """A progress bar for bytes (assembling, hashing): size done, speed, time left."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=console.quiet,
    )


def fx(value: float | None, digits: int = 2) -> str:
    """1.9234 -> '1.92x'; None -> '-'."""
    return "-" if value is None else f"{value:.{digits}f}x"


def pct(value: float | None, digits: int = 0) -> str:
    """0.823 -> '82%' (``digits`` after the point); None -> '-'."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def num(value: float | None, digits: int = 2) -> str:
    """1.2345 -> '1.23'; None -> '-'."""
    return "-" if value is None else f"{value:.{digits}f}"


@contextlib.contextmanager
def quiet_transformers(quiet: bool = True) -> Iterator[None]:
    """Silence transformers' warnings and progress bars inside the block (if ``quiet``)."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def simple_table(title_text: str) -> Table:
    """A borderless table with a rule under the header: fits 80 columns."""
    return Table(
        title=title_text,
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
