"""``csdraft bench --concurrency N[,N...]`` (``csdraft.bench.concurrency``): the same requests
one at a time, then N at once for each N, through one loaded ladder, every output checked
against its output alone; the table, the JSON and the crossover."""

from __future__ import annotations

import json

import pytest
from bench_helpers import GSM8K_ROWS, write_jsonl
from rich.console import Console

from csdraft.bench.concurrency import (
    copied_line,
    crossover,
    crossover_line,
    drift_line,
    parse_concurrency,
    percentile,
    rounds_line,
    run_concurrency,
    table,
)
from csdraft.errors import UsageError


def _on_tiny(tiny_config, data, concurrency, **settings):
    """``run_concurrency`` over GSM8K-shaped ``data`` on the tiny ladder, quietly."""
    return run_concurrency(
        "gsm8k", concurrency, data=data, config=tiny_config, ladder="tiny", quiet=True, **settings
    )


def test_concurrency_runs_every_level_through_one_ladder(tiny_config, tmp_path):
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS * 2)
    out, png = tmp_path / "c.json", tmp_path / "c-chart.png"
    results = _on_tiny(tiny_config, data, "3,1", max_new_tokens=10, out=out, plot=png)
    assert results["requests"] == 6 and results["concurrency"] == [1, 3]
    assert [lv["concurrency"] for lv in results["levels"]] == [1, 3]
    assert results["outputs_differing"] == []
    one = results["one_at_a_time"]  # run before and after the levels: the mean is the baseline
    assert one["wall_s"] == pytest.approx((one["wall_s_before"] + one["wall_s_after"]) / 2)
    assert one["drift"] == pytest.approx(one["wall_s_after"] / one["wall_s_before"] - 1)
    assert one["outputs_differing"] == []
    for level in results["levels"]:
        assert level["outputs_differing"] == []
        assert level["new_tokens"] == one["new_tokens"] > 0
        assert level["latency_p50_s"] <= level["latency_p95_s"]
        ratio = level["tokens_per_s"] / one["tokens_per_s"]
        assert level["throughput_ratio"] == pytest.approx(ratio)
    lone, many = results["levels"]
    assert lone["widest"] == 1  # one request at a time shares nothing
    assert many["widest"] >= 2 and many["passes"] < many["jobs"]
    shared = many["shared_by_rung"]  # float32 target: alone; its drafter (greedy): shared
    assert "0" not in shared and shared["1"]["passes"] < shared["1"]["jobs"]
    assert shared["1"]["jobs_per_pass"] == shared["1"]["jobs"] / shared["1"]["passes"] > 1
    assert results["rungs"][1] == "tiny-d"
    best = max([one] + results["levels"], key=lambda s: s["tokens_per_s"])
    assert results["best_concurrency"] == best.get("concurrency", 1)
    written = json.loads(out.read_text())
    assert written["concurrency"] == [1, 3] and len(written["levels"]) == 2
    assert written["levels"][1]["shared_by_rung"] == shared
    assert written["plot"] == str(png) and png.stat().st_size > 0


def test_a_single_n_still_works_and_no_plot_writes_none(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS[:2])
    results = _on_tiny(tiny_config, data, 2, max_new_tokens=6, warmup=0, no_plot=True)
    assert results["concurrency"] == [2] and len(results["levels"]) == 1
    assert results["outputs_differing"] == [] and results["plot"] is None
    assert list(tmp_path.glob("*.png")) == []


@pytest.mark.parametrize(
    ("value", "levels"),
    [("4", [4]), ("2,4,8", [2, 4, 8]), (" 8, 2 ,2", [2, 8]), (3, [3]), ([4, 1], [1, 4])],
)
def test_parse_concurrency(value, levels):
    assert parse_concurrency(value) == levels


@pytest.mark.parametrize("value", ["0", "-2", "2,-4", "2,,4", "", "x", "1.5", "4,", "٣", 0, -1])
def test_bad_concurrency_lists_are_one_line_usage_errors(value):
    with pytest.raises(UsageError, match="--concurrency takes N or a comma list") as e:
        parse_concurrency(value)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_bad_list_before_loading_anything(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from csdraft.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["bench", "gsm8k", "--concurrency", "2,0", "-l", "nowhere"])
    assert isinstance(res.exception, UsageError) and "2,0" in str(res.exception)


def _level(n: int, tps: float) -> dict:
    return {"concurrency": n, "tokens_per_s": tps, "throughput_ratio": tps / 10}


@pytest.mark.parametrize(
    ("tps", "best", "stop", "words"),
    [
        ([12, 14, 13], 4, 8, "most throughput at 4 at once (1.40x); adding requests stops"),
        ([12, 14, 15], 8, None, "most throughput at the largest N tried, 8 at once (1.50x)"),
        ([9, 8, 7], 1, 2, "batching does not pay here: 1 at a time is fastest (2 at once gives"),
        ([10, 10, 9], 1, 2, "batching does not pay here"),  # a tie goes to the fewer requests
    ],
)
def test_crossover(tps, best, stop, words):
    levels = [_level(n, t) for n, t in zip([2, 4, 8], tps, strict=True)]
    found = crossover(10.0, levels)
    assert found["best_tokens_per_s"] == max([10, *tps])
    assert found["best_concurrency"] == best and found["stops_paying_at"] == stop
    assert found["best_throughput_ratio"] == pytest.approx(max([10, *tps]) / 10)
    assert crossover_line({**found, "levels": levels}).startswith(words)


def test_the_crossover_takes_the_tables_ratio_the_median_of_the_rounds():
    levels = [_level(2, 14.0) | {"throughput_ratio": 1.46}, _level(4, 15.0)]
    levels[1]["throughput_ratio"] = 1.44  # more tok/s over all rounds, a lower median ratio
    found = crossover(10.0, levels)
    assert found["best_concurrency"] == 2 and found["best_throughput_ratio"] == 1.46


LABELS = ("one at a time", "2 at once", "4 at once")


def test_a_level_of_one_beats_one_at_a_time_in_words():
    levels = [_level(1, 20.0), _level(2, 15.0)]  # 1 at once through the batcher, 2 slower
    found = crossover(10.0, levels)
    assert found["best_concurrency"] == 1 and found["stops_paying_at"] == 2
    line = crossover_line({**found, "levels": levels})
    assert line.endswith("(2 at once gives 0.75x its throughput)")


def test_table_has_a_row_per_level_and_jobs_per_pass_by_rung():
    side = {"wall_s": 2.0, "tokens_per_s": 10.0, "latency_p50_s": 1.0, "latency_p95_s": 1.5}
    shared = {"1": {"passes": 4, "jobs": 10, "jobs_per_pass": 2.5}}
    results = {
        "requests": 4,
        "ladder": "tiny",
        "rungs": ["t", "d"],
        "one_at_a_time": side,
        "levels": [
            side | {"concurrency": 2, "throughput_ratio": 1.25, "shared_by_rung": shared},
            side | {"concurrency": 4, "throughput_ratio": 0.5, "shared_by_rung": {}},
        ],
    }
    results["levels"][0]["outputs_differing"] = []
    results["levels"][1]["outputs_differing"] = [3]
    console = Console(width=200, record=True)
    console.print(table(results, "gsm8k"))
    text = console.export_text()
    row = {label: next(x for x in text.splitlines() if label in x) for label in LABELS}
    assert "d jobs/pass" in text and "t jobs/pass" not in text  # rungs that shared a pass
    assert "reference" in row["one at a time"] and "1.00x" in row["one at a time"]
    assert "1.25x" in row["2 at once"] and "2.50" in row["2 at once"] and "same" in row["2 at once"]
    assert "0.50x" in row["4 at once"] and "1 DIFFER" in row["4 at once"]


def test_percentile():
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0], 0.95) == 1.95
    assert percentile([5.0], 0.95) == 5.0


def test_an_interrupted_second_baseline_keeps_the_levels(tiny_config, tmp_path, monkeypatch):
    """Ctrl-C while one at a time runs again after the levels: the levels are written (over
    the first baseline alone, drift unknown), then the interrupt goes on to the command."""
    from csdraft.api import Ladder

    generate = Ladder.generate
    calls = []

    def interrupted_later(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1 + 6 + 1:  # warm-up, the first baseline's 6, the level's warm-up
            raise KeyboardInterrupt
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(Ladder, "generate", interrupted_later)
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS * 2)
    out = tmp_path / "c.json"
    with pytest.raises(KeyboardInterrupt):
        _on_tiny(tiny_config, data, "2", max_new_tokens=8, out=out, no_plot=True)
    written = json.loads(out.read_text())
    one = written["one_at_a_time"]
    assert one["wall_s_after"] is None and one["drift"] is None
    assert one["wall_s"] == one["wall_s_before"]
    assert written["levels"][0]["concurrency"] == 2 and written["outputs_differing"] == []


def test_each_side_starts_from_the_warm_up_prompts_only(tiny_config, tmp_path, monkeypatch):
    """A side's requests would otherwise copy whole prompts the side before stored
    (``prefixes``): every side forgets them and runs the warm-up again before it is timed."""
    from csdraft.api import Ladder

    forget, held = Ladder.forget_prompts, []

    def counted(self):
        held.append(sum(len(store._entries) for store in self.prefix_stores.values()))
        forget(self)

    monkeypatch.setattr(Ladder, "forget_prompts", counted)
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS * 2)
    results = _on_tiny(tiny_config, data, "2", max_new_tokens=6, no_plot=True)
    assert len(held) == 3 and held[1] > 0 and held[2] > 0  # each side stored what it ran
    sides = [results["one_at_a_time"], *results["levels"]]
    # the count is the target's: the tiny target (no lean path) never copies, while its greedy
    # drafter copies hundreds of rows a side
    assert [side["prompt_rows_copied"] for side in sides] == [0, 0]
    assert copied_line(results).endswith("one at a time 0, 2 at once 0")


def test_rounds_alternate_the_sides_and_report_each_ratio_and_their_median(
    tiny_config, tmp_path, monkeypatch
):
    """``--rounds 3``: one at a time, then (4 at once, one at a time) three times; each round's
    ratio is over the baselines before and after it, the level's ratio their median."""
    import time as clock

    from csdraft.api import Ladder

    calls = iter(range(100_000))  # a machine slowing down: each call later than the last by more
    monkeypatch.setattr(clock, "perf_counter", lambda: next(calls) ** 2 / 1000)
    many, jobs = Ladder.generate_many, []

    def counted(self, *args, **kwargs):  # the jobs each level run scheduled, as it ends
        out = many(self, *args, **kwargs)
        jobs.append(self.batcher.counts.jobs)
        return out

    monkeypatch.setattr(Ladder, "generate_many", counted)
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS * 2)
    results = _on_tiny(tiny_config, data, "2", max_new_tokens=6, no_plot=True, rounds=3)
    one, (level,) = results["one_at_a_time"], results["levels"]
    walls, level_walls = one["wall_s_rounds"], level["wall_s_rounds"]
    assert len(walls) == 4 and len(level_walls) == 3 and results["outputs_differing"] == []
    assert walls[0] < walls[1] < walls[2] < walls[3]
    assert one["wall_s_before"] == walls[0] and one["wall_s_after"] == walls[-1]
    tokens = one["new_tokens"]
    expected = [
        (level["new_tokens"] / level_walls[r]) / (tokens / ((walls[r] + walls[r + 1]) / 2))
        for r in range(3)
    ]
    assert level["round_ratios"] == pytest.approx(expected)
    assert level["throughput_ratio"] == pytest.approx(sorted(expected)[1])
    assert level["wall_s"] == pytest.approx(sum(level_walls) / 3)
    assert level["jobs"] == sum(jobs) > 0  # the baselines' passes between are not the level's
    assert "ratio by round" in rounds_line(results)
    assert "between and after the rounds" in drift_line(one)


def test_rounds_must_be_a_whole_number_and_go_with_concurrency(tiny_config, tmp_path):
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    with pytest.raises(UsageError, match="--rounds"):
        _on_tiny(tiny_config, data, "2", rounds=0)
    from typer.testing import CliRunner

    from csdraft.cli import app

    res = CliRunner().invoke(app, ["bench", "gsm8k", "--rounds", "2", "-l", "nowhere"])
    assert isinstance(res.exception, UsageError) and "goes with --concurrency" in str(res.exception)
