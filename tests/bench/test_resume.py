"""bench --resume: a run cut short continues from its partial results file, keeping what was
measured; another run's file, or a complete one, is refused in one line."""

from __future__ import annotations

import json

import pytest

from csdraft.bench.run import run_bench
from csdraft.errors import UsageError


def test_resume_keeps_measured_prompts_and_runs_the_rest(tiny_config, gsm8k_file, tmp_path):
    out = tmp_path / "r.json"
    args = dict(data=gsm8k_file, config=tiny_config, ladder="tiny", methods="ar,csd",
                max_new_tokens=6, warmup=0, no_plot=True, quiet=True, out=out)  # fmt: skip
    first = run_bench("gsm8k", **args)
    assert len(first["prompts"]) == 2
    with pytest.raises(UsageError, match="is complete"):
        run_bench("gsm8k", resume=True, **args)
    partial = {**first, "complete": False, "stopped": "after prompt 1 of 2"}
    partial["prompts"] = first["prompts"][:1]
    out.write_text(json.dumps(partial))
    again = run_bench("gsm8k", resume=True, **args)
    assert [p["index"] for p in again["prompts"]] == [0, 1]
    assert (
        again["prompts"][0]["results"]["ar"]["wall_s"]
        == first["prompts"][0]["results"]["ar"]["wall_s"]
    )
    assert again["complete"] and again["resumed"] and again["created"] == first["created"]
    assert json.loads(out.read_text())["prompts"][1]["index"] == 1
    out.write_text(json.dumps(partial))
    with pytest.raises(UsageError, match=r"another run \(methods ar,csd -> ar,sd"):
        run_bench("gsm8k", resume=True, **{**args, "methods": "ar,sd"})
    with pytest.raises(UsageError, match="max_new_tokens 6 -> 7"):
        run_bench("gsm8k", resume=True, **{**args, "max_new_tokens": 7})


def test_resume_needs_out_and_starts_fresh_without_a_file(tiny_config, gsm8k_file, tmp_path):
    args = dict(data=gsm8k_file, config=tiny_config, ladder="tiny", methods="ar",
                max_new_tokens=4, warmup=0, no_plot=True, quiet=True)  # fmt: skip
    with pytest.raises(UsageError, match="--resume needs --out"):
        run_bench("gsm8k", resume=True, **args)
    fresh = run_bench("gsm8k", resume=True, out=tmp_path / "new.json", **args)
    assert len(fresh["prompts"]) == 2 and "resumed" not in fresh
