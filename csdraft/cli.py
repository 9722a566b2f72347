"""The csdraft command line: each command parses its options, then calls one function."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from csdraft.errors import CsdraftError, UsageError

app = typer.Typer(
    help="Faster generation with identical output: Cascade Speculative Drafting for Hugging "
    "Face causal LMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
_state = {"debug": False}

LadderOpt = Annotated[
    str | None, typer.Option("--ladder", "-l", help="Ladder name from the config (default: first).")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Read ladders from this YAML file instead of the defaults."
    ),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def parse_lenience(text: str | None) -> list[float] | float | None:
    """'1.5' -> 1.5; '1.5,2' -> [1.5, 2.0]."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--lenience: expected a number or a comma list, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def read_prompt(prompt: str | None) -> str:
    """The prompt from --prompt, else from stdin when it is not a terminal."""
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no prompt: pass --prompt TEXT or pipe text on stdin")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise UsageError("the prompt is empty; pass --prompt TEXT or pipe text on stdin")
    return prompt


@app.command()
def generate(
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Prompt text; default: read stdin.")
    ] = None,
    ladder: LadderOpt = None,
    config: ConfigOpt = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", "-n", help="Most tokens to generate.", min=1)
    ] = None,
    k_matrix: Annotated[
        str | None,
        typer.Option(help="Override the k-matrix, e.g. '[[4,2],[0,6]]' or '4,2;0,6'."),
    ] = None,
    lenience: Annotated[
        str | None, typer.Option(help="Lenience for inner reviews (>= 1): one value or a list.")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="0 is greedy.")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Keep the k most likely tokens (0: off).")
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass (1: off).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop after this string appears (repeatable).")
    ] = None,
    raw: Annotated[bool, typer.Option(help="Skip the chat template.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: text, token_ids, stats.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain text only.")] = False,
    save_trace: Annotated[
        Path | None, typer.Option(help="Save the event trace (JSON lines) for `inspect --trace`.")
    ] = None,
) -> None:
    """Generate with a cascade ladder: exactly the target's output, faster.

    On a terminal the text streams with each token coloured by the rung that drafted it and the
    drafts the target rejected struck through; piped, only the text is written.
    """
    from csdraft.generation import run_generate

    code = run_generate(
        prompt=read_prompt(prompt),
        ladder=ladder,
        config=config,
        max_new_tokens=max_new_tokens,
        k_matrix=k_matrix,
        lenience=parse_lenience(lenience),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop,
        raw=raw,
        as_json=as_json,
        quiet=quiet,
        save_trace=save_trace,
    )
    raise typer.Exit(code)


# --- bench (owned by csdraft/bench) ---

# --- end bench ---

# --- tune and inspect (owned by csdraft/tune.py, csdraft/inspect.py) ---

# --- end tune and inspect ---


def main() -> None:
    """Entry point: one-line errors with exit codes, tracebacks only with --debug."""
    try:
        app(standalone_mode=False)
    except CsdraftError as e:
        if _state["debug"]:
            traceback.print_exc()
        print(f"csdraft: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("\ncsdraft: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("\ncsdraft: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors and anything unforeseen
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if _state["debug"]:
            traceback.print_exc()
        print(
            f"csdraft: error: {type(e).__name__}: {e} (run with --debug for details)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
