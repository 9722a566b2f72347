"""The ``csdraft generate`` command: stream a generation to the terminal, a pipe or JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console

from csdraft import trace
from csdraft.api import Ladder, Result, check_prompt_early
from csdraft.errors import CsdraftError
from csdraft.ladder import get_ladder
from csdraft.outputs import check_writable
from csdraft.spec import LadderSpec
from csdraft.trace import Finish
from csdraft.viz import LiveView, PlainView, summary_table


def command_spec(
    ladder: str | None,
    config: Path | None,
    max_new_tokens: int | None,
    k_matrix: str | None,
    lenience: float | list[float] | None,
    min_confidence: float | list[float] | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    stop: Sequence[str] | None,
    deferral: Any,
) -> LadderSpec:
    """The ladder ``generate``'s options ask for, every setting checked (no model loaded)."""
    return (
        get_ladder(ladder, config)
        .with_settings(
            k_matrix=k_matrix, lenience=lenience, min_confidence=min_confidence, deferral=deferral
        )
        .with_generation(
            "command line",
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=list(stop or []),
        )
    )


def run_generate(
    prompt: str,
    ladder: str | None = None,
    config: Path | None = None,
    max_new_tokens: int | None = None,
    k_matrix: str | None = None,
    lenience: float | list[float] | None = None,
    min_confidence: float | list[float] | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    raw: bool = False,
    as_json: bool = False,
    quiet: bool = False,
    save_trace: Path | None = None,
    deferral: Any = None,
) -> int:
    """Load the ladder, stream the cascade's output, return the exit code. Output already
    generated is printed before anything that can fail afterwards (saving the trace)."""
    check_writable(save_trace, "--save-trace")
    spec = command_spec(
        ladder,
        config,
        max_new_tokens,
        k_matrix,
        lenience,
        min_confidence,
        temperature,
        top_k,
        top_p,
        seed,
        stop,
        deferral,
    )  # every setting checked before any model loads
    check_prompt_early(spec, prompt, spec.generation.max_new_tokens, raw, progress=not quiet)
    loaded = Ladder.load(spec, progress=not quiet)
    tokenizer = loaded.tokenizer
    prompt_ids = loaded.encode(prompt, raw=raw)
    stream = loaded.stream(prompt_ids, spec=spec)
    console = Console()
    live = console.is_terminal and not (quiet or as_json)
    view: Any = (
        None if as_json else (LiveView(tokenizer, console) if live else PlainView(tokenizer))
    )
    events: list = []
    interrupted = False
    with view if view is not None else nullcontext():
        try:
            for event in stream:
                events.append(event)
                if view is not None:
                    view.add(event)
        except KeyboardInterrupt:
            interrupted = True
            events.append(Finish("interrupted", t=events[-1].t if events else 0.0))
    if not events:  # interrupted before the prompt was even encoded
        print("csdraft: interrupted before generation started", file=sys.stderr)
        return 130
    result = Result.of(events, prompt_ids, tokenizer)
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(spec.name)) + "\n")
        sys.stdout.flush()
    elif live:
        console.print(summary_table(result.stats))
    if save_trace:
        header = {"ladder": spec.name, "prompt": prompt, "prompt_ids": prompt_ids}
        try:
            trace.save(events, save_trace, header)
        except CsdraftError as e:
            print(
                f"csdraft: error: --save-trace: {e} (the output above is complete)", file=sys.stderr
            )
            return 1
    if interrupted:
        print("csdraft: interrupted; the text above is what was generated so far", file=sys.stderr)
        return 130
    return 0
