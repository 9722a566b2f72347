"""bench's ``hf-assisted-universal`` (transformers' universal assisted generation) beside csd on
a ladder whose drafter has its own tokenizer: both give ar's output."""

from __future__ import annotations

from tiny_ladder import make_mixed_ladder

from csdraft.bench.run import run_bench


def test_universal_assisted_generation_beside_csd(tmp_path, gsm8k_file):
    config = make_mixed_ladder(tmp_path / "ladder")
    results = run_bench(
        "gsm8k",
        data=gsm8k_file,
        config=config,
        ladder="mixed",
        max_new_tokens=10,
        methods="ar,csd,hf-assisted-universal",
        quiet=True,
        no_plot=True,
    )
    summary = results["summary"]
    assert set(summary) == {"ar", "csd", "hf-assisted-universal"}
    for name, s in summary.items():
        assert s["mismatches"] == 0 and s["new_tokens"] > 0, name
    assert summary["hf-assisted-universal"]["forwards"]["tiny-f"] > 0
