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


@app.command(no_args_is_help=True)
def bench(
    dataset: Annotated[
        str | None,
        typer.Argument(
            metavar="DATASET",
            help="gsm8k, mmlu, or a JSON-lines file of prompts.",
            show_default=False,
        ),
    ] = None,
    field: Annotated[
        str, typer.Option(help="For a JSON-lines file: the field holding each prompt.")
    ] = "prompt",
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Use the first N prompts.", min=1)
    ] = None,
    ladder: LadderOpt = None,
    config: ConfigOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per generation.", min=1)] = 128,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma list of methods (default: all; ar is always added): ar, sd, pld, "
            "csd-vertical, csd-horizontal, csd, hf-generate, hf-assisted, hf-lookup."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the results JSON here.")] = None,
    data: Annotated[
        Path | None, typer.Option(help="The dataset file (GSM8K or MMLU JSON lines).")
    ] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up prompts (short, not measured).", min=0)] = 1,
    sd_block: Annotated[int, typer.Option(help="Block length of the sd method.", min=1)] = 4,
    pld_block: Annotated[int, typer.Option(help="Block length of pld and hf-lookup.", min=1)] = 10,
    plot: Annotated[
        Path | None,
        typer.Option(help="PNG of the results (default: next to --out, else bench.png)."),
    ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Write no PNG.")] = False,
    temperature: Annotated[
        float, typer.Option(help="0 is greedy; above 0, outputs are not compared.", min=0)
    ] = 0.0,
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            help="Show two results files side by side (no dataset needed).", show_default=False
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results JSON on stdout (report on stderr).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Measure speed honestly: every method on the same prompts, models, machine.

    Each prompt runs every method in turn, the order rotated per prompt, after
    a short warm-up, so drift hits all alike. Methods:

    [bold]ar[/]: the target alone. [bold]sd[/]: the largest drafter, fixed block.
    [bold]pld[/]: Max-Gram prompt lookup. [bold]csd-vertical[/], [bold]csd-horizontal[/],
    [bold]csd[/]: the full ladder with the k-matrix's diagonal, first row, or all.
    [bold]hf-generate[/], [bold]hf-assisted[/], [bold]hf-lookup[/]: transformers' own greedy,
    assisted and prompt-lookup generate on the same loaded models.

    Reported: speedup over ar per prompt (median, mean, range), tok/s, tokens
    per target forward, SWI, acceptance by rung and by draft position, task
    accuracy, and every greedy output checked token by token against ar's.
    Speed bar: csd >= 1.8x ar, csd >= 1.3x hf-assisted, ar within 5% of
    hf-generate, 0 mismatches.

    [cyan]csdraft bench gsm8k --limit 10 --out gsm8k.json[/]
    [cyan]csdraft bench prompts.jsonl --field text --methods ar,csd[/]
    [cyan]csdraft bench --compare before.json after.json[/]
    """
    from csdraft.bench import run_bench, run_compare

    if compare is not None:
        if dataset is not None:
            raise UsageError("--compare takes two results files and no dataset")
        run_compare(compare[0], compare[1], as_json=as_json)
        return
    if dataset is None:
        raise UsageError("which dataset? pass gsm8k, mmlu or a JSON-lines file")
    results = run_bench(
        dataset,
        data=data,
        field=field,
        limit=limit,
        ladder=ladder,
        config=config,
        max_new_tokens=max_new_tokens,
        methods=methods,
        out=out,
        plot=plot,
        no_plot=no_plot,
        warmup=warmup,
        sd_block=sd_block,
        pld_block=pld_block,
        temperature=temperature,
        as_json=as_json,
        quiet=quiet,
    )
    if results.get("interrupted"):
        raise typer.Exit(130)


# --- end bench ---

# --- tune and inspect (owned by csdraft/tune.py, csdraft/inspect.py) ---

# --- end tune and inspect ---


def main() -> None:
    """Entry point: one-line errors with exit codes, tracebacks only with --debug."""
    try:
        code = app(standalone_mode=False)
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
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
