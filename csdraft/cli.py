"""The csdraft command line: each command parses its options, then calls one function."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from csdraft.cli_options import (
    ConfigOpt,
    LadderOpt,
    _deferral_rules_help,
    parse_deferral,
    parse_numbers,
)
from csdraft.cli_tune import inspect_ladder, tune_app
from csdraft.errors import CsdraftError, UsageError


class _Interrupted(Exception):
    """Ctrl-C, carried past typer (which turns KeyboardInterrupt into a silent exit 130)."""


class _Commands(TyperGroup):
    """The root command group: lets Ctrl-C in any command reach ``main``'s one-line message."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted from None


app = typer.Typer(
    cls=_Commands,
    help="Faster generation with identical output: Cascade Speculative Drafting for Hugging "
    "Face causal LMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def read_prompt(prompt: str | None) -> str:
    """The prompt from --prompt, else from stdin when it is not a terminal."""
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no prompt: pass --prompt TEXT or pipe text on stdin")
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(
                    f"stdin is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                    "pipe UTF-8 text or pass --prompt"
                ) from None
        prompt = data
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
    min_confidence: Annotated[
        str | None,
        typer.Option(
            help="A drafter ends its draft after a token it gives less than this probability "
            "(0: never): one value or one per drafter."
        ),
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
    deferral: Annotated[str | None, typer.Option(help=_deferral_rules_help())] = None,
    alpha: Annotated[
        str | None,
        typer.Option(help="The deferral rules' dial: one value, or one per --deferral rule."),
    ] = None,
    batch: Annotated[
        Path | None,
        typer.Option(
            help="A JSON-lines file of prompts ('-': stdin), one {\"prompt\": ...} a line with "
            "optional settings of its own; one JSON result a line, in input order."
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(help="With --batch: requests run at once, passes batched.", min=1)
    ] = 4,
) -> None:
    """Generate with a cascade ladder: exactly the target's output, faster (unless
    --deferral makes it lossy on purpose, which the output then says).

    On a terminal the text streams with each token coloured by the rung that drafted it and the
    drafts the target rejected struck through; piped, only the text is written.
    """
    from csdraft.generate import command_spec, run_generate

    if batch is not None:
        from csdraft.generate_batch import run_batch

        if prompt is not None or save_trace is not None:
            raise UsageError("--batch reads its prompts from FILE: drop --prompt and --save-trace")
        spec = command_spec(
            ladder,
            config,
            max_new_tokens,
            k_matrix,
            parse_numbers(lenience, "--lenience"),
            parse_numbers(min_confidence, "--min-confidence"),
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            parse_deferral(deferral, alpha),
        )
        raise typer.Exit(run_batch(batch, spec, concurrency, raw, quiet))

    code = run_generate(
        prompt=read_prompt(prompt),
        ladder=ladder,
        config=config,
        max_new_tokens=max_new_tokens,
        k_matrix=k_matrix,
        lenience=parse_numbers(lenience, "--lenience"),
        min_confidence=parse_numbers(min_confidence, "--min-confidence"),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop,
        raw=raw,
        as_json=as_json,
        quiet=quiet,
        save_trace=save_trace,
        deferral=parse_deferral(deferral, alpha),
    )
    raise typer.Exit(code)


# --- bench (owned by csdraft/bench) ---


@app.command()
def bench(
    dataset: Annotated[
        str | None,
        typer.Argument(
            metavar="DATASET",
            help="gsm8k, mmlu, spec-bench, or a JSON-lines file of prompts.",
            show_default=False,
        ),
    ] = None,
    field: Annotated[
        str, typer.Option(help="For a JSON-lines file: the field holding each prompt.")
    ] = "prompt",
    category_field: Annotated[
        str | None,
        typer.Option(
            help="For a JSON-lines file: the field naming each prompt's category, for the "
            "report by category (default: 'category' where rows have it).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", "-n", help="Use the first N prompts (spec-bench: N per task).", min=1
        ),
    ] = None,
    ladder: LadderOpt = None,
    config: ConfigOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per generation.", min=1)] = 128,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma list of methods (default: all but llama.cpp; ar is always added): ar, "
            "sd, pld, csd-vertical, csd-horizontal, csd, csd-tree, hf-generate, hf-assisted, "
            "hf-lookup, llama.cpp (llama-cpp-python's plain decoding of the target's GGUF; the "
            "llamacpp extra), csd@LADDER, csd-tree@BUDGET/TOP_K/MIN_PROB[/EXTEND], "
            "csd-window@TOKENS, csd-branch@BRANCHES (Max-Gram proposing token trees), "
            "csd-vocab@IDS (drafters' heads cut to a draft vocabulary of IDS ids; csd-vocab@all: "
            "whole heads); and lossy on purpose, "
            "METHOD+RULE@ALPHA (e.g. "
            "csd+opt@0.1, sd+chow@0.2, csd@LADDER+diff@0; csd+opt@0.1,0.2 for one alpha per "
            "reviewer; rules as in `generate --help`)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the results JSON here.")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="The dataset file or folder (GSM8K, MMLU or Spec-Bench JSON lines)."),
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
    report: Annotated[
        Path | None,
        typer.Option(
            help="Report a results file again (its summaries recomputed, charts redrawn; a "
            "partial file from a run cut short too); no dataset needed.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run whose partial results are in --out (same dataset, settings, "
            "ladder and methods): its prompts are kept, the rest measured.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results JSON on stdout (report on stderr).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    until_answer: Annotated[
        int | None,
        typer.Option(
            help="GSM8K: a token budget instead of --max-new-tokens; each generation ends at "
            "its first finished answer (a '#### N' line or a closed \\boxed{N}), "
            "and the report gives answers reached, accuracy with a 95% (Wilson) interval and "
            "agreement with ar's answers.",
            min=1,
        ),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option(
            help="Instead of the methods: the ladder's csd on the same requests one at a time, "
            "then N at once (passes batched) for N or each N of a comma list (2,4,8): "
            "throughput, p50/p95 latency, jobs per shared pass, outputs checked, and the N "
            "where adding requests stops paying.",
            show_default=False,
        ),
    ] = None,
    rounds: Annotated[
        int,
        typer.Option(
            help="With --concurrency: alternate one at a time and the levels this many times "
            "(one at a time first and last); each round's ratio is over the baselines around "
            "it, the table's their median, every round's reported.",
            min=1,
        ),
    ] = 1,
) -> None:
    """Measure speed honestly: every method on the same prompts, models, machine.

    Each prompt runs every method in turn, the order rotated per prompt, after
    a short warm-up, so drift hits all alike. Methods:

    **ar**: the target alone. **sd**: the largest drafter alone, blocks of up
    to --sd-block (ending early at the ladder's min_confidence). **pld**:
    Max-Gram prompt lookup. **csd-vertical**, **csd-horizontal**, **csd**: the
    full ladder with the k-matrix's diagonal, first row, or all. **csd-tree**:
    the ladder with token trees (default settings) at the target's review.
    **csd-branch@N**: the ladder with Max-Gram proposing trees of N branches.
    **csd-vocab@N**: the ladder with its drafters' heads cut to N ids (all:
    whole heads).
    **csd@LADDER**: the same models with another ladder's k-matrix, lenience,
    min_confidence and deferral rules (LOSSY when it has any).
    **METHOD+RULE@ALPHA**: an engine method (csd, sd, csd@LADDER, ...) with
    that deferral rule at its reviews: LOSSY on purpose. **hf-generate**,
    **hf-assisted**, **hf-lookup**: transformers' own greedy, assisted and
    prompt-lookup generate on the same loaded models.

    **spec-bench**: Spec-Bench's question file (--data, $CSDRAFT_DATA, a
    shared/datasets/spec_bench/question.jsonl, or the hub); each question's
    first turn is the prompt, and its task (mt_bench, translation,
    summarization, qa, math_reasoning, rag) its category.

    Reported: speedup over ar per prompt (median, mean, range), tok/s, tokens
    per target forward, SWI, acceptance by rung and by draft position, task
    accuracy, and every greedy output checked token by token against ar's;
    the time to the first commit (the prompt phase) apart from decoding, with
    a decoding-only speedup; a table by category when prompts carry one.
    Speed bar: csd >= 1.8x ar, csd >= 1.3x hf-assisted, ar within 5% of
    hf-generate, 0 output mismatches beyond floating-point near-ties.

    Examples:

    * `csdraft bench gsm8k --limit 10 --out gsm8k.json`
    * `csdraft bench spec-bench --limit 3 --out spec.json` (3 per task: 18 prompts)
    * `csdraft bench prompts.jsonl --field text --methods ar,csd`
    * `csdraft bench --compare before.json after.json`
    * `csdraft bench gsm8k --limit 30 --until-answer 512 --methods ar,csd,csd+v3@0.4`
      (quality against speed: answers reached, accuracy, agreement with ar)
    * `csdraft bench --report gsm8k.json` (the report and charts again)
    * `csdraft bench gsm8k --limit 16 --concurrency 2,4,8` (throughput and latency at 2, 4
      and 8 requests at once against one at a time, and where adding requests stops paying;
      `--rounds 3`: three rounds, their median and spread)
    """
    from csdraft.bench import run_bench, run_compare, run_report

    if compare is not None or report is not None:
        if dataset is not None or (compare is not None and report is not None):
            raise UsageError("--compare and --report each take results files and no dataset")
        if compare is not None:
            run_compare(compare[0], compare[1], as_json=as_json)
        else:
            run_report(report, plot, no_plot, as_json)
        return
    if dataset is None:
        raise UsageError(
            "which dataset? pass gsm8k, mmlu, spec-bench or a JSON-lines file (see csdraft "
            "bench --help)"
        )
    if rounds != 1 and concurrency is None:
        raise UsageError("--rounds goes with --concurrency (the methods rotate per prompt)")
    if concurrency is not None:
        from csdraft.bench.concurrency import run_concurrency

        if methods is not None or resume or until_answer is not None:
            raise UsageError(
                "--concurrency runs csd alone: drop --methods, --resume, --until-answer"
            )
        run_concurrency(
            dataset,
            concurrency,
            data=data,
            field=field,
            limit=limit,
            ladder=ladder,
            config=config,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            warmup=warmup,
            rounds=rounds,
            out=out,
            plot=plot,
            no_plot=no_plot,
            as_json=as_json,
            quiet=quiet,
        )
        return
    results = run_bench(
        dataset,
        data=data,
        field=field,
        category_field=category_field,
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
        until_answer=until_answer,
        resume=resume,
    )
    if results.get("interrupted"):
        raise typer.Exit(130)


# --- end bench ---




@app.command()
def serve(
    ladder: LadderOpt = None,
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require 'Authorization: Bearer KEY' on /v1 (401 otherwise)."),
    ] = None,
    max_queue: Annotated[
        int, typer.Option(help="Requests that may wait for the ladder (429 beyond).", min=0)
    ] = 16,
    concurrency: Annotated[
        int,
        typer.Option(help="Requests generating at once, passes batched (exact for each).", min=1),
    ] = 4,
) -> None:
    """Serve the ladder over an OpenAI-compatible API (/v1/chat/completions, /v1/completions,
    /v1/models, /health, /metrics, /reset_prefix_cache); the models load once, in the
    background. Needs the serve extra: pip install 'csdraft[serve]'. See docs/serve.md."""
    from csdraft.serve import run_serve

    run_serve(ladder, config, host, port, api_key, max_queue, concurrency)


app.add_typer(tune_app, name="tune")
app.command("inspect")(inspect_ladder)


def main() -> None:
    """Entry point: one-line errors with exit codes, tracebacks only with --debug."""
    try:
        code = app(standalone_mode=False)
    except CsdraftError as e:
        if _state["debug"]:
            traceback.print_exc()
        print(f"csdraft: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, _Interrupted, typer.Abort):
        print("\ncsdraft: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors (typer bundles its own click) and the unforeseen
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            if type(e).__name__ == "NoArgsIsHelpError":
                e.show()  # prints the help
            else:
                print(f"csdraft: error: {e.format_message()} (see --help)", file=sys.stderr)
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
