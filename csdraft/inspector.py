"""``csdraft inspect``: what a ladder is made of, how well its rungs agree, and trace replay.

The facts come from the loaded models themselves (``parameter_count``, ``weight_bytes``,
``int8_layers``, ``compute_dtype``), the k-matrix in words from ``LadderSpec.explain_k_matrix``.
The measurements (forward costs, agreement, predicted speedup) reuse ``csdraft.tune``'s public
API: the same calibration on a few short built-in prompts instead of a dataset, so they are
quick and rough; ``csdraft tune k-matrix`` measures properly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from csdraft.errors import CsdraftError
from csdraft.models.cpu import slow_blocks

SAMPLE_PROMPTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May? Think step by step.",
    "Write a Python function `fib(n)` that returns the n-th Fibonacci number iteratively, with "
    "a docstring and two example calls.",
    "Explain in three sentences what a hash map is and when to use one instead of a list.",
    "Rewrite in the passive voice: The committee approved the new budget on Monday, and the "
    "mayor signed it on Tuesday.",
)
"""Built-in prompts for ``--sample`` (math, code, prose), so inspect needs no dataset."""

SAMPLE_TOKENS = 32
"""Greedy tokens generated per sample prompt."""


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _human_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def model_facts(model: Any) -> dict[str, Any]:
    """Parameter count, dtype, device and weight bytes of a loaded model, as the model reports
    them (int8 layers counted with their int8 weights and scales)."""
    dtype = model.compute_dtype
    weights = getattr(model, "weight_format", None)  # llama.cpp: the GGUF's quantization
    if weights:
        dtype = f"{weights} (llama.cpp), float32 activations"
    elif slow_blocks(model):
        dtype = f"{dtype} (no fast kernels on this CPU: blocks cost ~1 pass per token)"
    return {
        "params": model.parameter_count(),
        "bytes": model.weight_bytes(),
        "dtype": (
            f"int8 linears{' per token (batch-invariant)' if model.batch_invariant else ''}, "
            f"{dtype} rest"
            if model.int8_layers()
            else dtype
        ),
        "device": str(getattr(model, "device", "-")),
    }


def _drafter_view(drafter: Any) -> str:
    """What of the prompt and the vocabulary a drafter sees, when it is not all of them."""
    parts = [f"sees the prompt's last {drafter.window:,} tokens"] if drafter.window else []
    if drafter.vocab:
        parts.append(f"drafts from the lowest {drafter.vocab:,} ids and the special tokens")
    return "".join(f", {p}" for p in parts)


def models_table(loaded: Any) -> Table:
    """One row per rung: role, source (the model reference resolved), cache path, size, dtype,
    device, memory, tokenizer fingerprint (and whether it equals the target's)."""
    from csdraft.models import tokenizer_fingerprint

    spec = loaded.spec
    table = Table(title=f"ladder {spec.name}", title_style="bold")
    table.add_column("rung", no_wrap=True)
    for col in ("role", "source", "cache path", "params", "dtype", "device"):
        table.add_column(col, overflow="fold")
    table.add_column("memory", justify="right", no_wrap=True)
    table.add_column("tokenizer", no_wrap=True)
    target_print = tokenizer_fingerprint(loaded.tokenizer)
    names = spec.rung_names
    for i, (rung, m) in enumerate(zip(spec.rungs, loaded.models.values(), strict=False)):
        facts = model_facts(m)
        fp = tokenizer_fingerprint(m.tokenizer)
        same = "target" if i == 0 else ("same" if fp == target_print else "own: crosses as text")
        table.add_row(
            names[i],
            "target" if i == 0 else f"drafter {i}" + _drafter_view(rung),
            m.source,
            str(m.path) if m.path else "Hugging Face cache",
            _human_count(facts["params"]),
            facts["dtype"],
            facts["device"],
            _human_bytes(facts["bytes"]),
            f"{fp[:12]} {same}",
        )
    if spec.maxgram:
        mg = spec.maxgram
        rung = len(spec.drafters) + 1  # Max-Gram drafts after every neural rung
        bigram = len(loaded.bigram) if loaded.bigram else 0
        table.add_row(
            names[rung],
            f"drafter {rung}",
            f"n-grams {mg.min_ngram}..{mg.max_ngram}, "
            + (
                f"bigram fallback from {mg.bigram_text}" if mg.bigram_text else "no bigram fallback"
            ),
            "-",
            f"{bigram} bigrams" if bigram else "-",
            "-",
            "cpu",
            "~0",
            "target's",
        )
    table.caption = (
        "memory: parameter bytes. tokenizer: fingerprint (sha256 of vocabulary, merges and special "
        "tokens); a rung with its own drafts across as text (docs/ladders.md)."
    )
    return table


def k_matrix_lines(spec: Any) -> list[str]:
    """The k-matrix, its reading convention, and ``LadderSpec.explain_k_matrix``."""
    if not spec.k_matrix:
        return ["no drafters: the target decodes autoregressively (k-matrix empty)"]
    names = spec.rung_names
    lines = [
        f"k-matrix {[list(r) for r in spec.k_matrix]}: row r = reviewer r "
        f"({', '.join(names[: len(spec.k_matrix)])}), column c = drafter c + 1 "
        f"({', '.join(names[1:])}); each block filled left to right, k[r][c] tokens from "
        "drafter c + 1 in turn",
    ]
    lines += [f"  {line}" for line in spec.explain_k_matrix()]
    drafters = spec.drafters
    if drafters:
        lines.append(
            "lenience (inner reviews only): " + ", ".join(f"{d.lenience:g}" for d in drafters)
        )
    if any(d.min_confidence for d in drafters):
        lines.append(
            "min_confidence (a drafter ends its draft after a token it doubts): "
            + ", ".join(f"{d.min_confidence:g}" for d in drafters)
        )
    for reviewer, rung in enumerate(spec.rungs):
        if rung.tree is not None:
            drafter = names[reviewer + 1] if reviewer + 1 < len(names) else "its drafter"
            lines.append(f"{rung.name} reviews {rung.tree.explain(drafter)}")
    if not any(r.tree is not None for r in spec.rungs):
        lines.append("linear drafts (no token trees)")
    if spec.drafts_below is not None:
        lines.append(
            f"drafts_below {spec.drafts_below}: from {spec.drafts_below} requests at once, "
            "greedy ones go undrafted (the target's own token, one a batched pass)"
        )
    return lines


def run_inspect(
    ladder: str | None,
    config: Path | None = None,
    sample: int = 2,
    max_new_tokens: int = SAMPLE_TOKENS,
    console: Console | None = None,
) -> int:
    """``csdraft inspect``: print the ladder's facts and, with ``sample`` > 0, its measured
    costs, agreement matrix and predicted speedup."""
    from csdraft.api import Ladder
    from csdraft.console import report_console, task_progress
    from csdraft.ladder import get_ladder
    from csdraft.models.seq2seq import EXPLAIN as ENCODER_DECODER
    from csdraft.models.seq2seq import is_encoder_decoder
    from csdraft.tune import (
        AnalyticModel,
        Replay,
        agreement,
        agreement_table,
        calibrate,
        costs_table,
        settings,
    )

    out = console or report_console()
    err = Console(stderr=True)
    spec = get_ladder(ladder, config)
    loaded = Ladder.load(spec)
    if spec.description:
        out.print(Text(spec.description, style="dim"))
    out.print(models_table(loaded))
    out.print("tokenizers: all rungs share the target's (fingerprints equal)")
    if is_encoder_decoder(loaded.target):
        out.print(ENCODER_DECODER, highlight=False)
    for line in k_matrix_lines(spec):
        out.print(line, highlight=False)
    if sample <= 0:
        return 0
    texts = [SAMPLE_PROMPTS[i % len(SAMPLE_PROMPTS)] for i in range(sample)]
    prompts = [loaded.encode(t) for t in texts]
    with task_progress(err) as progress:
        cal = calibrate(
            loaded, prompts, max_new_tokens, lengths=(1, 8), repeats=3, progress=progress
        )
    out.print(costs_table(cal))
    agree = agreement(cal)
    if agree.rate:
        out.print(
            agreement_table(
                agree, f"pairwise greedy agreement ({sample} prompts, {max_new_tokens} tokens)"
            )
        )
    if spec.k_matrix:
        lenience = settings.from_spec([d.lenience for d in spec.drafters], 1.0)
        floor = settings.from_spec([d.min_confidence for d in spec.drafters], 0.0)
        pred = Replay(cal).predict(spec.k_matrix, lenience, floor, spec.target.tree)
        analytic = AnalyticModel.from_calibration(cal, agree).predict(spec.k_matrix)
        out.print(
            f"predicted speedup of this k-matrix over ar: [bold]{pred.speedup:.2f}x[/] "
            f"({pred.tokens_per_review:.2f} tokens per target review; replay of the engine over "
            f"these samples with the measured costs), EWIF cascade model {analytic.speedup:.2f}x. "
            f"A rough estimate from {sample} short prompts; `csdraft tune k-matrix --ladder "
            f"{spec.name}` measures properly.",
            highlight=False,
        )
    return 0


def verify_ladder(
    ladder: str | None, config: Path | None = None, console: Console | None = None
) -> int:
    """``csdraft inspect --verify``: re-read every cached model file of the ladder and compare
    it with the sha256 recorded when the cache entry was written (a damaged file is a one-line
    error naming the repair); models outside csdraft's cache have nothing recorded to check."""
    from csdraft.console import report_console
    from csdraft.ladder import get_ladder
    from csdraft.models import resolve, verify_model_cache

    out = console or report_console()
    spec = get_ladder(ladder, config)
    seen: set[str] = set()
    for m in (spec.target, *spec.drafters):
        if m.ref in seen:
            continue
        seen.add(m.ref)
        res = resolve(m.ref)
        if res.kind not in ("pack", "gguf") or res.path is None:
            out.print(
                f"{m.name}: {res.source} is not in csdraft's cache; nothing recorded to verify"
            )
            continue
        check = verify_model_cache(res.path, full=True)
        size = _human_bytes(check.bytes)
        if check.complete:
            out.print(
                f"{m.name}: ok, {check.files} files ({size}) match their recorded sha256 "
                f"({check.seconds:.1f} s): {res.path}"
            )
        else:
            out.print(
                f"{m.name}: sizes and sampled digests ok; no full sha256 recorded for "
                f"{', '.join(check.unverified)} (prepared by an older csdraft: delete {res.path} "
                "and run again to record one)",
                style="yellow",
            )
    return 0


class _IdTokenizer:
    """Stands in for a tokenizer that cannot be loaded: shows token ids."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"<{i}>" for i in ids)


def _trace_tokenizer(name: str | None, config: Path | None, err: Console) -> Any:
    """The target tokenizer of the ladder a trace names, or an id-showing stand-in."""
    from csdraft.ladder import get_ladder
    from csdraft.models import load_tokenizer

    try:
        spec = get_ladder(name, config)
        return load_tokenizer(spec.target.ref, progress=False)
    except CsdraftError as e:
        err.print(f"csdraft: cannot load the trace's tokenizer ({e}); showing token ids")
        return _IdTokenizer()


def replay_trace(
    path: Path,
    ladder: str | None = None,
    config: Path | None = None,
    speed: float = 1.0,
    console: Console | None = None,
    max_pause: float = 5.0,
) -> int:
    """``csdraft inspect --trace FILE``: replay a saved trace with the live per-token view,
    paced by the recorded event times divided by ``speed`` (0: no pauses; each pause at most
    ``max_pause`` seconds). Off a terminal: the text, then the summary table."""
    from csdraft import trace
    from csdraft.console import report_console
    from csdraft.errors import UsageError
    from csdraft.trace import Commit, Stats
    from csdraft.viz import LiveView, summary_table

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--trace {path}: no such file")
    try:
        header, events = trace.load(path)
    except OSError as e:
        raise UsageError(f"--trace {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise UsageError(f"--trace {path}: not a csdraft trace: {e}") from None
    out = console or report_console()
    err = Console(stderr=True)
    tokenizer = _trace_tokenizer(ladder or header.get("ladder"), config, err)
    stats = Stats.of(events)
    if header.get("prompt"):
        out.print(Text(str(header["prompt"]).strip(), style="dim"))
    if out.is_terminal:
        with LiveView(tokenizer, out) as view:
            shown = 0.0
            for event in events:
                t = float(getattr(event, "t", shown))
                if speed > 0 and t > shown:
                    time.sleep(min((t - shown) / speed, max_pause))
                shown = max(shown, t)
                view.add(event)
    else:
        ids = [t for e in events if isinstance(e, Commit) for t in e.tokens]
        out.print(tokenizer.decode(ids, skip_special_tokens=True), highlight=False, markup=False)
    out.print(summary_table(stats))
    return 0
