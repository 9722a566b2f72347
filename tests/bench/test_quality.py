"""Quality against speed (bench --until-answer): points, curves, the table, the terminal
scatter, the PNG and ``bench --report``, on a synthetic results file (no models)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from csdraft.bench import metrics, quality
from csdraft.bench.run import SCHEMA, run_report
from csdraft.errors import UsageError

# (wall seconds, new tokens, answer) per prompt; the reference answers are 1, 2, 3, 4.
RUNS = {
    "ar": [(10.0, 100, "1"), (10.0, 100, "2"), (10.0, 100, "3"), (10.0, 100, "9")],
    "csd": [(4.0, 100, "1"), (5.0, 100, "2"), (4.0, 100, "3"), (5.0, 100, "9")],
    "csd+v3@0.2": [(3.0, 110, "1"), (4.0, 100, "2"), (3.0, 90, "3"), (4.0, 100, "9")],
    "csd+v3@0.6": [(2.0, 150, "1"), (2.0, 150, "7"), (2.0, 100, "3"), (2.0, 100, "4")],
    "sd+chow@0.3": [(5.0, 100, "1"), (5.0, 100, None), (5.0, 100, "3"), (5.0, 100, "9")],
}


def results_dict(until_answer: bool = True) -> dict:
    prompts = []
    for i in range(4):
        res = {}
        for name, runs in RUNS.items():
            wall, n, answer = runs[i]
            res[name] = {
                "new_tokens": n, "wall_s": wall, "forwards": {}, "answer": answer,
                "correct": answer == str(i + 1), "mismatch": None,
            }  # fmt: skip
        prompts.append({"index": i, "results": res, "category": None})
    configs = {n: {"lossless": "+" not in n} for n in RUNS}
    results = {
        "schema": SCHEMA,
        "settings": {
            "until_answer": until_answer,
            "temperature": 0.0,
            "dataset": "gsm8k",
            "max_new_tokens": 512,
            "sd_block": 4,
            "pld_block": 10,
        },  # fmt: skip
        "ladder": {
            "name": "tiny",
            "rungs": ["t", "d", "max-gram"],
            "dtype": "float32",
            "k_matrix": [[2, 2], [0, 2]],
        },
        "methods": list(RUNS),
        "method_configs": configs,
        "prompts": prompts,
        "costs": {"params": {}, "measured_s": {}},
        "skipped": {},
        "mismatches": [],
        "machine": {
            "processor": "x86_64",
            "platform": "x",
            "cpus_usable": 2,
            "torch": "t",
            "torch_threads": 2,
            "transformers": "t",
        },  # fmt: skip
    }
    results["summary"] = metrics.summarize(results)
    return results


def test_points_use_time_to_answer_and_parse_rules():
    pts = {p.name: p for p in quality.points(results_dict())}
    assert set(pts) == set(RUNS)
    v3 = pts["csd+v3@0.6"]
    assert (v3.base, v3.rule, v3.alpha, v3.curve) == ("csd", "v3", 0.6, "csd+v3")
    assert v3.speedup == pytest.approx(5.0)  # 10 s / 2 s on every prompt
    # tok/s speedup differs where the answer is longer: 7.5x on prompts 1-2, 5x on 3-4
    assert v3.tokens_speedup == pytest.approx((7.5 + 5.0) / 2)
    assert v3.accuracy == 0.75 and v3.agreement == 0.5
    ar = pts["ar"]
    assert ar.lossless and ar.rule is None and ar.accuracy == 0.75
    assert pts["sd+chow@0.3"].reached == 3
    assert quality.within_ar(pts["csd+v3@0.2"], ar) is True


def test_curves_group_by_base_and_rule_and_sort_by_alpha():
    pts = quality.points(results_dict())
    c = quality.curves(list(reversed(pts)))
    assert list(c) == ["sd+chow", "csd+v3"]
    assert [p.alpha for p in c["csd+v3"]] == [0.2, 0.6]


def test_no_points_without_answers():
    assert quality.points(results_dict(until_answer=False)) == []
    assert quality.quality_table(results_dict(until_answer=False)) is None
    assert quality.quality_chart(results_dict(until_answer=False)) is None


def test_table_and_terminal_chart():
    console = Console(width=150, record=True, color_system=None)
    results = results_dict()
    console.print(quality.quality_table(results))
    console.print(quality.quality_chart(results))
    out = console.export_text()
    assert "csd+v3 LOSSY" in out and "5.00x" in out  # time-to-answer speedup of v3 at 0.6
    assert "2.00x" in out  # ... over lossless csd's 2.5x (median of 2.5, 2, 2.5, 2)
    assert "C csd" in out and "3 v3" in out and "c chow" in out
    assert "·" in out  # ar's interval shaded


def test_png_and_report_from_a_file(tmp_path, capsys):
    results = results_dict()
    png = tmp_path / "q.png"
    assert quality.write_quality_png(results, png) and png.stat().st_size > 10_000
    assert quality.quality_png_path(tmp_path / "b.png") == tmp_path / "b-quality.png"
    assert not quality.write_quality_png(results_dict(until_answer=False), tmp_path / "n.png")
    path = tmp_path / "r.json"
    partial = {**results, "complete": False, "stopped": "after prompt 4 of 9"}
    del partial["summary"]
    path.write_text(json.dumps(partial))
    again = run_report(path, tmp_path / "r.png", no_plot=False, as_json=False)
    assert again["summary"]["csd+v3@0.6"]["time_speedup"]["median"] == pytest.approx(5.0)
    assert (tmp_path / "r.png").exists() and (tmp_path / "r-quality.png").exists()
    out = capsys.readouterr().out
    assert "quality and speed" in out and "incomplete results file" in out
    with pytest.raises(UsageError, match="--report"):
        run_report(tmp_path / "missing.json", None, no_plot=True, as_json=False)


def test_answers_of_another_run_against_this_runs_ar():
    """bench --compare A B: B's answers (say, an int8 target's) against A's ar, by prompt id."""
    a, b = results_dict(), results_dict()
    for i, p in enumerate(a["prompts"]):
        p["id"] = f"q{i}"
    for i, p in enumerate(b["prompts"]):
        p["id"] = f"q{i + 1}"  # B ran q1-q4: q1-q3 in common with A
    rows = quality.answers_against(a, b)
    # B's prompt i is A's prompt i + 1: B's ar answers 1, 2, 3 against A's ar 2, 3, 9
    assert rows["ar"]["prompts"] == 3 and rows["ar"]["agree_with_a_ar"] == 0
    assert rows["ar"]["accuracy"] == 1.0 and rows["ar"]["a_ar_accuracy"] == pytest.approx(2 / 3)
    # csd+v3@0.6 answers 1, 7, 3: agrees with A's ar nowhere; sd+chow@0.3 answers None on one
    assert rows["csd+v3@0.6"]["accuracy"] == pytest.approx(2 / 3)
    assert rows["sd+chow@0.3"]["accuracy"] == pytest.approx(2 / 3)
    assert quality.answers_against(a, results_dict(until_answer=False)) == {}
    console = Console(width=150, record=True, color_system=None)
    console.print(quality.answers_against_table(a, b, "bf16.json"))
    assert "against A's ar (bf16.json)" in console.export_text()
    from csdraft.bench.report import compare_rows

    row = next(r for r in compare_rows(a, b) if r["method"] == "ar")
    assert row["answers_b_against_a_ar"]["prompts"] == 3


def test_compare_takes_partial_files_and_shows_answers(tmp_path, capsys):
    from csdraft.bench.run import run_compare

    paths = []
    for tag in ("a", "b"):
        res = results_dict()
        for i, p in enumerate(res["prompts"]):
            p["id"] = f"q{i}"
        del res["summary"]  # a run cut short: summaries not written yet
        res.update(complete=False, stopped="after prompt 4 of 9")
        path = tmp_path / f"{tag}.json"
        path.write_text(json.dumps(res))
        paths.append(path)
    run_compare(*paths)
    out = capsys.readouterr().out
    assert "B's answers against A's ar (a.json)" in out and "100%" in out
