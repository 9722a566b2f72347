"""What the commands share on screen: number formats, report consoles, progress, quiet
transformers."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from csdraft.console import (
    fx,
    num,
    pct,
    progress_console,
    quiet_transformers,
    report_console,
    task_progress,
)


@pytest.mark.parametrize(
    "call, want",
    [
        (lambda: fx(1.9234), "1.92x"),
        (lambda: fx(2), "2.00x"),
        (lambda: fx(1.9234, digits=1), "1.9x"),
        (lambda: fx(None), "-"),
        (lambda: pct(0.823), "82%"),
        (lambda: pct(1), "100%"),
        (lambda: pct(0.8234, digits=1), "82.3%"),
        (lambda: pct(0.0), "0%"),
        (lambda: pct(None), "-"),
        (lambda: num(1.2345), "1.23"),
        (lambda: num(3), "3.00"),
        (lambda: num(1.2345, digits=0), "1"),
        (lambda: num(None), "-"),
    ],
)
def test_formats(call, want):
    assert call() == want


@pytest.fixture
def no_terminal_env(monkeypatch):
    """Environment variables that would make rich see a terminal, or another width."""
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "JUPYTER_COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_report_console_is_150_wide_when_not_a_terminal(no_terminal_env):
    for stderr in (False, True):
        console = report_console(stderr=stderr)
        assert not console.is_terminal
        assert console.width == 150
        assert console.stderr == stderr


def test_report_console_takes_the_terminal_width_on_a_terminal(no_terminal_env):
    no_terminal_env.setenv("TTY_COMPATIBLE", "1")
    no_terminal_env.setenv("COLUMNS", "97")
    console = report_console()
    assert console.is_terminal
    assert console.width == 97


def test_progress_console_is_stderr_and_quiet_when_disabled():
    assert progress_console().stderr and not progress_console().quiet
    assert progress_console(enabled=False).quiet


def test_task_progress_counts_and_stays_silent_on_a_quiet_console():
    out = io.StringIO()
    quiet = Console(file=out, quiet=True)
    with task_progress(quiet) as progress:
        task = progress.add_task("prompts", total=3)
        for _ in range(3):
            progress.advance(task)
        assert progress.tasks[0].completed == 3
        assert progress.disable
    assert out.getvalue() == ""
    loud = Console(file=io.StringIO(), force_terminal=True, width=120)
    with task_progress(loud, transient=False) as progress:
        task = progress.add_task("calibration", total=2)
        progress.advance(task, 2)
    assert not progress.disable
    assert "calibration" in loud.file.getvalue() and "2/2" in loud.file.getvalue()


def test_quiet_transformers_restores_logging():
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    with quiet_transformers():
        assert hf_logging.get_verbosity() == hf_logging.ERROR
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.get_verbosity() == before
    assert hf_logging.is_progress_bar_enabled() == bars
    with quiet_transformers(quiet=False):
        assert hf_logging.get_verbosity() == before
    with pytest.raises(RuntimeError), quiet_transformers():
        raise RuntimeError("restored even so")
    assert hf_logging.get_verbosity() == before
