"""The ``tune`` and ``inspect`` commands: each parses its options, then calls one function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from csdraft.cli_options import ConfigOpt, LadderOpt

tune_app = typer.Typer(
    help="Tune a ladder for this machine: measure, predict, verify, write.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


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

    **A drafter of another family** (its own tokenizer) cannot be replayed: tune then runs
    every placement of the ladder's drafters (every order of every subset, Max-Gram at the
    bottom; a few block lengths and min_confidence values each) for real within --budget,
    and says whether that drafter pays, and where.

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
