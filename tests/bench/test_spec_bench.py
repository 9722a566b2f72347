"""Spec-Bench loading, categories on JSON-lines files, the prompt/decode time split, the
report by category, and tune's calibration drawn from several sets."""

from __future__ import annotations

import json

import pytest
from bench_helpers import write_jsonl

from csdraft.bench import data, metrics
from csdraft.bench.run import run_bench
from csdraft.errors import UsageError
from csdraft.runs import Outcome
from csdraft.trace import Commit, Finish, Review, Start

OTHER_TASKS = ("translation", "summarization", "qa", "math_reasoning", "rag")


def spec_rows(per_category: int = 2) -> list[dict]:
    """Rows of every Spec-Bench category, two turns each, categories interleaved."""
    rows = []
    for i in range(per_category):
        for cat in (*data.MT_BENCH, *OTHER_TASKS):
            rows.append(
                {
                    "question_id": f"{cat}-{i}",
                    "category": cat,
                    "turns": [f"first turn of {cat} {i}", f"second turn of {cat} {i}"],
                }
            )
    return rows


def test_spec_bench_tasks_limit_and_first_turn(tmp_path):
    path = write_jsonl(tmp_path / "question.jsonl", spec_rows())
    ds = data.load_dataset("spec-bench", data=path)
    assert len(ds.examples) == 2 * 13
    assert {e.category for e in ds.examples} == set(data.SPEC_BENCH_TASKS)
    assert sum(e.category == "mt_bench" for e in ds.examples) == 16
    one = data.load_spec_bench(tmp_path, limit=3)  # a folder holding question.jsonl
    counts = {t: sum(e.category == t for e in one.examples) for t in data.SPEC_BENCH_TASKS}
    assert counts == {"mt_bench": 3, **dict.fromkeys(OTHER_TASKS, 2)}
    first = one.examples[0]
    assert (first.id, first.prompt, first.category) == (
        "writing-0",
        "first turn of writing 0",
        "mt_bench",
    )
    assert [e.id for e in one.examples if e.category == "mt_bench"] == [
        "writing-0", "roleplay-0", "reasoning-0",
    ]  # fmt: skip
    with pytest.raises(UsageError, match="turns"):
        data.load_spec_bench(write_jsonl(tmp_path / "bad.jsonl", [{"category": "qa"}]))


def test_spec_bench_search_order_and_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_hub_rows", lambda *a: None)
    rows = spec_rows(1)
    env_dir = tmp_path / "env"
    nested = write_jsonl(env_dir / "spec_bench" / "question.jsonl", rows[:2])
    flat = write_jsonl(env_dir / "spec-bench.jsonl", rows[:3])
    shared = write_jsonl(tmp_path / "shared" / "datasets" / "spec_bench" / "question.jsonl", rows)
    env = {"CSDRAFT_DATA": str(env_dir)}
    assert data.load_spec_bench(env=env, roots=[tmp_path]).source == str(nested.resolve())
    nested.unlink()
    assert data.load_spec_bench(env=env, roots=[tmp_path]).source == str(flat.resolve())
    assert data.load_spec_bench(env={}, roots=[tmp_path]).source == str(shared.resolve())
    with pytest.raises(UsageError) as err:
        data.load_spec_bench(env={}, roots=[tmp_path / "nowhere"])
    msg = str(err.value)
    assert "\n" not in msg and "--data" in msg and "CSDRAFT_DATA" in msg
    assert "shared/datasets/spec_bench/question.jsonl" in msg and "hub" in msg


def test_category_field_on_a_jsonl_file(tmp_path):
    rows = [
        {"prompt": f"p{i}", "category": "a" if i % 2 else "b", "topic": f"t{i}"} for i in range(4)
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert [e.category for e in data.load_dataset(str(path)).examples] == ["b", "a", "b", "a"]
    by_topic = data.load_dataset(str(path), category_field="topic").examples
    assert [e.category for e in by_topic] == ["t0", "t1", "t2", "t3"]
    with pytest.raises(UsageError, match="no field 'task'"):
        data.load_dataset(str(path), category_field="task")
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "x"}])
    assert data.load_dataset(str(plain)).examples[0].category is None


def test_outcome_time_split_from_events():
    events = [
        Start(["t", "d", "max-gram"], 5),
        Review(1, [], [], 0, 7, forward_s=0.2, t=0.2),
        Review(0, [7], [1], 1, 8, forward_s=0.5, t=0.7),
        Commit([7, 8], [1, 0], t=0.75),
        Review(1, [], [], 0, 9, forward_s=0.05, t=0.8),
        Review(0, [9], [1], 1, 4, forward_s=0.1, t=0.9),
        Commit([9, 4], [1, 0], t=0.95),
        Finish("length", t=0.96),
    ]
    out = Outcome.of(events, wall_s=1.0)
    assert out.prefill_s == pytest.approx(0.75) and out.decode_s == pytest.approx(0.25)
    assert out.prompt_pass_s == {"t": 0.5, "d": 0.2} and out.prefill_tokens == 2
    rec = out.record()
    assert rec["prefill_s"] + rec["decode_s"] == pytest.approx(rec["wall_s"])
    old = Outcome([1], 1.0, 1, {})  # records without the split still build
    assert old.decode_s is None and old.record()["prompt_pass_s"] == {}


def _rec(tokens: int, wall: float, prefill: float | None) -> dict:
    decode = None if prefill is None else wall - prefill
    return {"new_tokens": tokens, "wall_s": wall, "prefill_s": prefill, "decode_s": decode}


def test_by_category_metrics():
    prompts = [
        {"category": "qa", "results": {"ar": _rec(10, 2.0, 1.0), "csd": _rec(10, 1.5, 1.0),
                                       "hf-assisted": _rec(10, 1.75, 1.0)}},
        {"category": "rag", "results": {"ar": _rec(10, 4.0, 2.0), "csd": _rec(10, 2.0, 1.0)}},
    ]  # fmt: skip
    cats = metrics.by_category(prompts, ["ar", "csd", "hf-assisted"])
    assert list(cats) == ["qa", "rag", "all"]
    qa = cats["qa"]["methods"]["csd"]
    assert qa["speedup"] == pytest.approx(2.0 / 1.5) and qa["decode_speedup"] == pytest.approx(2.0)
    assert qa["prefill_share"] == pytest.approx(1.0 / 1.5)
    assert cats["qa"]["csd_over_hf_assisted"] == pytest.approx(1.5)
    assert cats["rag"]["csd_over_hf_assisted"] is None and cats["all"]["prompts"] == 2
    assert cats["all"]["methods"]["csd"]["decode_speedup"] == pytest.approx(2.0)
    assert metrics.by_category([{"results": {}}], ["ar"]) is None
    assert metrics.decode_speedup({"new_tokens": 3, "wall_s": 1.0}, _rec(3, 1.0, 0.5)) is None


def test_spec_bench_end_to_end_time_split_and_categories(tiny_config, tmp_path, capsys):
    rows = [r for r in spec_rows(1) if r["category"] in ("writing", "qa", "rag")]
    path = write_jsonl(tmp_path / "question.jsonl", rows)
    out = tmp_path / "r.json"
    run_bench(
        "spec-bench", data=path, config=tiny_config, ladder="tiny", max_new_tokens=6, limit=1,
        methods="ar,sd,csd,hf-assisted", out=out, warmup=0, quiet=True,
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert [p["category"] for p in saved["prompts"]] == ["mt_bench", "qa", "rag"]
    for p in saved["prompts"]:
        for name, rec in p["results"].items():
            assert 0 <= rec["prefill_s"] <= rec["wall_s"], name
            assert rec["prefill_s"] + rec["decode_s"] == pytest.approx(rec["wall_s"], abs=1e-9)
            assert 1 <= rec["prefill_tokens"] <= rec["new_tokens"], name
        assert set(p["results"]["csd"]["prompt_pass_s"]) == {"tiny-t", "tiny-d"}
        assert set(p["results"]["ar"]["prompt_pass_s"]) == {"tiny-t"}
    cats = saved["by_category"]
    assert list(cats) == ["mt_bench", "qa", "rag", "all"]
    assert cats["all"]["methods"]["csd"]["decode_speedup"] > 0
    assert cats["qa"]["csd_over_hf_assisted"] > 0
    assert saved["summary"]["csd"]["decode_speedup"]["n"] == 3
    assert out.with_suffix(".png").stat().st_size > 10_000
    shown = capsys.readouterr().out
    assert "by category" in shown and "prompt phase" in shown and "math_reasoning" not in shown


def test_tune_draws_evenly_from_several_sets(tmp_path):
    from csdraft.tune.data import load_calibration_prompts

    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("".join(f"a{i}\n" for i in range(10)))
    b.write_text("".join(f"b{i}\n" for i in range(10)))
    texts, source = load_calibration_prompts(f"{a},{b}", 5, seed=3)
    assert sum(t.startswith("a") for t in texts) == 3 and sum(t.startswith("b") for t in texts) == 2
    assert load_calibration_prompts(f"{a},{b}", 5, seed=3)[0] == texts
    assert str(a) in source and str(b) in source
    single, _ = load_calibration_prompts(str(a), 4, seed=3)
    assert len(single) == 4 and all(t.startswith("a") for t in single)
