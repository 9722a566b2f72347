"""The csdraft command line: each command parses its options, then calls one function."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

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


def parse_numbers(text: str | None, option: str) -> list[float] | float | None:
    """'1.5' -> 1.5; '1.5,2' -> [1.5, 2.0] (one value per drafter)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{option}: expected a number or a comma list, got {text!r}") from None
    return values[0] if len(values) == 1 else values


DEFERRAL_HELP = (
    "Lossy on purpose (speculative cascades): the reviewers' deferral rule: one RULE for the "
    "target, or a comma list per reviewer (target, then each neural drafter; 'none' for a "
    "lossless one). Rules, with alpha's useful range and lossless end (q: the drafter's "
    "probabilities, p: the reviewer's): "
)


def parse_deferral(rules: str | None, alphas: str | None) -> Any:
    """--deferral 'opt' --alpha 0.1 -> the target's Deferral('opt', 0.1); comma lists give
    one rule per reviewer, with one alpha for all or one each. Every rule but 'none' needs an
    alpha in its range."""
    from csdraft.spec import deferral_of, spread

    if rules is None:
        if alphas is not None:
            raise UsageError("--alpha: needs --deferral RULE")
        return None
    names = [r.strip() for r in rules.split(",")]
    values = parse_numbers(alphas, "--alpha")
    values = spread(values, len(names), "--alpha (one per --deferral rule)")
    out = [deferral_of(n, a, "--deferral") for n, a in zip(names, values, strict=True)]
    for d in out:
        if problem := d.range_problem():
            raise UsageError(f"--deferral: {problem}")
    return out[0] if len(out) == 1 else out


def _deferral_rules_help() -> str:
    from csdraft.engine.deferral import RULES

    return DEFERRAL_HELP + "; ".join(f"**{k}**: {v}" for k, v in RULES.items()) + "."


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
) -> None:
    """Generate with a cascade ladder: exactly the target's output, faster (unless
    --deferral makes it lossy on purpose, which the output then says).

    On a terminal the text streams with each token coloured by the rung that drafted it and the
    drafts the target rejected struck through; piped, only the text is written.
    """
    from csdraft.generate import run_generate

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

# --- tune and inspect (owned by csdraft/tune/, csdraft/inspector.py) ---

tune_app = typer.Typer(
    help="Tune a ladder for this machine: measure, predict, verify, write.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(tune_app, name="tune")


@tune_app.command("k-matrix", no_args_is_help=True)
def tune_k_matrix(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="gsm8k, mmlu, spec-bench, or a FILE of prompts (JSON lines with a 'prompt' "
            "field, or plain text with one prompt per line); several, comma-separated "
            "(gsm8k,spec-bench), share the prompts evenly.",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME",
            help="With --write: the new ladder's name (default LADDER-tuned; -2, -3, ... "
            "is added when the name is taken).",
            show_default=False,
        ),
    ] = None,
    ladder: LadderOpt = None,
    config: ConfigOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="Calibration prompts (drawn with --seed).")
    ] = 8,
    budget: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds for the real, interleaved runs, re-measurements on a busy machine "
            "included (0: predictions only).",
        ),
    ] = 600.0,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Store the winner as a new ladder in --config (or your user config); never "
            "overwrites a ladder.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for drawing the calibration prompts.")] = 0,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Greedy tokens per calibration prompt.")
    ] = 128,
) -> None:
    """Find the fastest k-matrix, min_confidence and lenience for a ladder on this machine.

    1. Measures each model's forward cost by block length, runs the target greedily on the
    calibration prompts, and records (teacher forcing each model along those answers) how
    often each rung's greedy token matches every other's and Max-Gram's, by position.
    2. Predicts every k-matrix of a grid (entries 0-12) with the EWIF cost model extended to
    the cascade, then replays the engine over the recorded continuations with the measured
    costs for the best of them, min_confidence values, their neighbours, and lenience values.
    3. Runs the most promising for real, interleaved per prompt with the ladder's current
    settings and plain ar, within --budget; reports predicted vs measured speedup and checks
    every output against ar's (identical outputs: N/N). When ar's own timings disagree (with
    the calibration's runs of ar, or with the replay's prediction of ar) by more than 15%, it
    says the machine looks busy and runs the same prompts again while the budget allows, else
    widens its noise interval.
    4. Prints the answers (best vertical-only, horizontal-only and combined settings, and
    whether dropping a rung is faster) and the winner's margin over the current settings with
    the measured noise interval (e.g. +5.1% ± 3.0%). A setting is called the winner only when
    its margin is larger than the noise; otherwise tune says no setting beats the current one
    and --write writes nothing. --write [NAME] stores the winner.

    **The k-matrix.** With D drafting rungs below the target (the neural drafters,
    largest first, then Max-Gram) it is D x D and upper-triangular: row r belongs to reviewer
    r (row 0 is the target), column c to drafter c + 1. Reviewer r's block is filled left to
    right by cumulative counts: drafter r + 1 drafts until the block holds the diagonal entry
    (r, r) of tokens, then drafter r + 2 extends it until it holds (r, r) + (r, r + 1), and so
    on; a drafter that proposes fewer tokens than asked ends the block. A neural drafter
    writes its segment by reviewing blocks built the same way from its own row (vertical
    cascade); a neural drafter whose row is all zeros or missing decodes autoregressively.
    So [[4, 2], [0, 6]] (one drafter plus Max-Gram): the target reviews blocks of 6, tokens
    1-4 from the drafter and 5-6 from Max-Gram, and the drafter writes its tokens by
    reviewing blocks of 6 from Max-Gram.

    Lenience (>= 1) loosens only inner reviews, and min_confidence only ends drafts early
    (after a token the drafter gives less than that probability), so greedy output stays
    identical whatever tune picks.

    `csdraft tune k-matrix --ladder qwen-coder --data gsm8k --limit 8 --write`
    """
    from csdraft.tune import run_tune

    raise typer.Exit(
        run_tune(
            ladder=ladder,
            data=data,
            limit=limit,
            budget=budget,
            write=write,
            write_name=name,
            seed=seed,
            max_new_tokens=max_new_tokens,
            config=config,
        )
    )


@tune_app.command("deferral")
def tune_deferral(
    min_agreement: Annotated[
        float,
        typer.Option(
            "--min-agreement",
            min=0,
            max=1,
            help="The floor: the share of prompts whose answer must equal the target's own.",
        ),
    ] = 0.9,
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME",
            help="With --write: the new ladder's name (default LADDER-lossy-RULE-ALPHA).",
            show_default=False,
        ),
    ] = None,
    ladder: LadderOpt = None,
    config: ConfigOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(help="The GSM8K test file or folder (default: found as bench finds it)."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="GSM8K prompts (drawn with --seed).")
    ] = 10,
    seed: Annotated[int, typer.Option(help="Seed for drawing the prompts.")] = 0,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="Settings to try, RULE@ALPHA comma-separated (default: chow, diff, v2 and v3 "
            "at three alphas each).",
            show_default=False,
        ),
    ] = None,
    until_answer: Annotated[
        int, typer.Option(min=1, help="Token budget per answer (as bench --until-answer).")
    ] = 512,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the measurements (bench's results JSON, and its charts)."),
    ] = None,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Store the winner as a new LOSSY ladder in --config (or your user config).",
        ),
    ] = False,
) -> None:
    """Find the fastest lossy setting whose answers still agree with the target's (LOSSY).

    Runs, as `csdraft bench gsm8k --until-answer` does, plain ar, the ladder as it is (lossless
    csd) and the ladder with each deferral rule and alpha of --sweep at the target's review, on
    GSM8K prompts drawn with --seed, every answer reached and compared with ar's. The winner is
    the fastest in time to answer among the settings faster than lossless csd whose answers
    equal ar's on at least --min-agreement of the prompts; none may qualify. --write stores it
    as a new ladder named and described as LOSSY. Rules and their lossless ends: see
    `csdraft generate --help`.

    `csdraft tune deferral --min-agreement 0.9 --limit 10 --write`
    """
    from csdraft.tune.deferral import run_tune_deferral

    raise typer.Exit(
        run_tune_deferral(
            ladder=ladder,
            config=config,
            data=data,
            limit=limit,
            seed=seed,
            min_agreement=min_agreement,
            sweep=sweep,
            until_answer=until_answer,
            write=write,
            write_name=name,
            out=out,
        )
    )


@app.command("inspect")
def inspect_ladder(
    ladder: Annotated[
        str | None,
        typer.Argument(
            metavar="LADDER", help="Ladder name (default: the first).", show_default=False
        ),
    ] = None,
    config: ConfigOpt = None,
    sample: Annotated[
        int,
        typer.Option(
            min=0,
            help="Prompts for the measured costs, the acceptance matrix and the prediction "
            "(0: skip all measurements).",
        ),
    ] = 2,
    trace: Annotated[
        Path | None,
        typer.Option(help="Replay a trace saved by `generate --save-trace FILE` instead."),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(min=0, help="Trace replay speed: 2 is twice as fast as recorded, 0 instant."),
    ] = 1.0,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Re-read the ladder's cached model files and check each against the sha256 "
            "recorded when it was prepared (every load checks sizes and sampled digests).",
        ),
    ] = False,
) -> None:
    """Show what a ladder is made of and how well its rungs agree.

    Each model's source, cache path, parameters, dtype, device and memory; whether the
    tokenizers match; the k-matrix in words; forward costs at blocks of 1 and 8 tokens; the
    greedy agreement between every pair of rungs (and Max-Gram's hit rate) on a few short
    prompts; and the speedup the cost model predicts for the ladder's k-matrix.

    With --trace FILE, replays a saved generation with the live per-token view, paced by the
    recorded times.
    """
    from csdraft.inspector import replay_trace, run_inspect, verify_ladder

    if verify:
        raise typer.Exit(verify_ladder(ladder, config))
    if trace is not None:
        raise typer.Exit(replay_trace(trace, ladder=ladder, config=config, speed=speed))
    raise typer.Exit(run_inspect(ladder, config, sample))


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
