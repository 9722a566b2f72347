"""bench --until-answer: generations end at the first finished answer ('#### <number>' line
or '\\boxed{<number>}')."""

from __future__ import annotations

import pytest
from bench_helpers import byte_tokenizer

from csdraft.bench.data import AnswerStop, answer_cut
from csdraft.bench.run import run_bench
from csdraft.errors import UsageError

TEXT = "so 3 + 4 = 7.\n#### 7\nand more text"


def test_answer_cut_and_stop_agree():
    tok = byte_tokenizer()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    cut = answer_cut(tok, ids)
    assert tok.decode(ids[:cut]) == "so 3 + 4 = 7.\n#### 7\n"
    assert answer_cut(tok, ids[: cut - 1]) is None  # the line is not finished before
    stop = AnswerStop(tok)
    kept = []
    for i in range(0, len(ids), 5):  # commits of 5 tokens, as a cascade would make
        block = ids[i : i + 5]
        keep = stop(block)
        kept += block if keep is None else block[:keep]
        if keep is not None:
            break
    assert kept == ids[:cut]
    assert answer_cut(tok, tok("#### <number>'.\n", add_special_tokens=False)["input_ids"]) is None


def test_answer_cut_ends_at_a_closed_box():
    tok = byte_tokenizer()
    ids = tok("so \\(\\boxed{18}\\). Done", add_special_tokens=False)["input_ids"]
    cut = answer_cut(tok, ids)
    assert tok.decode(ids[:cut]) == "so \\(\\boxed{18}"
    assert answer_cut(tok, ids[: cut - 1]) is None


def test_until_answer_runs_every_method_within_the_budget(tiny_config, gsm8k_file):
    results = run_bench(
        "gsm8k", data=gsm8k_file, config=tiny_config, ladder="tiny", until_answer=10,
        methods="ar,csd,hf-generate", warmup=0, no_plot=True, quiet=True,
    )  # fmt: skip
    assert results["settings"]["until_answer"] is True
    assert results["settings"]["max_new_tokens"] == 10
    for s in results["summary"].values():
        assert s["new_tokens"] <= 20 and s["answers_reached"] <= s["prompts"]
        assert s["answers_agree_with_ar"] is not None


def test_until_answer_needs_gsm8k(tiny_config, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    with pytest.raises(UsageError, match="needs GSM8K"):
        run_bench(str(prompts), config=tiny_config, until_answer=8, no_plot=True, quiet=True)
