"""``csdraft bench --concurrency N`` (``csdraft.bench.concurrency``): the same requests one at a
time and N at once through one loaded ladder, every output checked against its output alone."""

from __future__ import annotations

import json

from bench_helpers import GSM8K_ROWS, write_jsonl

from csdraft.bench.concurrency import percentile, run_concurrency


def test_concurrency_run_reports_throughput_latency_and_identical_outputs(tiny_config, tmp_path):
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS * 2)
    out = tmp_path / "c.json"
    results = run_concurrency(
        "gsm8k", 3, data=data, config=tiny_config, ladder="tiny", max_new_tokens=10, out=out
    )
    assert results["requests"] == 6 and results["outputs_differing"] == []
    many = results["together"]
    assert many["new_tokens"] == results["one_at_a_time"]["new_tokens"] > 0
    assert many["widest"] >= 2 and many["passes"] < many["jobs"]
    shared = many["shared_by_rung"]  # float32 target: alone; its drafter (greedy): shared
    assert "0" not in shared and shared["1"]["passes"] < shared["1"]["jobs"]
    assert results["rungs"][1] == "tiny-d"
    assert many["latency_p50_s"] <= many["latency_p95_s"]
    assert json.loads(out.read_text())["concurrency"] == 3


def test_percentile():
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0], 0.95) == 1.95
    assert percentile([5.0], 0.95) == 5.0
