"""bench end to end on a tiny two-model ladder: reports, files, mismatches, interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_helpers import write_jsonl

from csdraft.bench.methods import DEFAULT_METHODS, METHODS, EngineMethod
from csdraft.bench.run import read_results, run_bench, run_compare
from csdraft.errors import UsageError
from csdraft.runs import Outcome


def add_wrapped_ar(monkeypatch, name: str, doc: str, wrap) -> None:
    """Register method ``name``: ar, with each runner it makes passed through ``wrap``."""
    ar = METHODS["ar"]

    class Wrapped(EngineMethod):
        def runner(self, ladder, settings):
            return wrap(ar.runner(ladder, settings))

    monkeypatch.setitem(METHODS, name, Wrapped(name, doc, ar.transform))


def bench_ar_and(method: str, config: Path, data: Path, **options) -> dict:
    """run_bench of ar and ``method`` on the tiny ladder, quiet, with no warmup and no plot;
    ``options``: the rest of run_bench's settings."""
    return run_bench(
        "gsm8k",
        data=data,
        config=config,
        ladder="tiny",
        methods=f"ar,{method}",
        warmup=0,
        no_plot=True,
        quiet=True,
        **options,
    )


def test_run_bench_end_to_end(tiny_config, gsm8k_file, tmp_path, capsys):
    out = tmp_path / "res" / "r.json"
    results = run_bench(
        "gsm8k",
        data=gsm8k_file,
        config=tiny_config,
        ladder="tiny",
        max_new_tokens=12,
        out=out,
        quiet=True,
    )
    saved = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    for key in (
        "schema", "created", "machine", "settings", "ladder", "methods", "method_configs",
        "skipped", "costs", "prompts", "mismatches", "summary", "speed_bar",
    ):  # fmt: skip
        assert key in saved, key
    assert saved["methods"] == list(DEFAULT_METHODS) and saved["skipped"] == {}
    assert {"platform", "cpu_count", "torch", "transformers", "torch_threads"} <= set(
        saved["machine"]
    )
    assert saved["mismatches"] == [] and len(saved["prompts"]) == 2
    assert saved["costs"]["params"]["max-gram"] == 0
    assert set(saved["costs"]["measured_s"]) == {"tiny-t", "tiny-d"}
    for name, s in saved["summary"].items():
        assert s["mismatches"] == 0 and s["prompts"] == 2 and s["new_tokens"] > 0, name
        assert s["speedup"]["median"] > 0 and s["tokens_per_s"] > 0 and s["swi_params"] > 0
    assert saved["summary"]["ar"]["swi_params"] == pytest.approx(1.0)
    assert saved["summary"]["ar"]["tokens_per_target_forward"] == pytest.approx(1.0)
    assert set(saved["summary"]["csd"]["acceptance"]) == {"tiny-t", "tiny-d"}
    assert saved["summary"]["csd"]["target_acceptance_by_position"]
    assert saved["summary"]["hf-assisted"]["forwards"]["tiny-d"] > 0
    assert saved["speed_bar"][3]["pass"] is True
    rec = saved["prompts"][0]["results"]["csd"]
    assert rec["answer"] is None or isinstance(rec["answer"], str)
    assert results["summary"].keys() == saved["summary"].keys()
    shown = capsys.readouterr().out
    assert "speed bar" in shown and "speedup over ar" in shown and "csd-horizontal" in shown


def test_bench_compares_another_ladder(tiny_config, gsm8k_file, tmp_path):
    results = run_bench(
        "gsm8k", data=gsm8k_file, config=tiny_config, ladder="tiny", max_new_tokens=12,
        methods="ar,csd,csd@tiny-slow,csd@tiny-swapped", out=tmp_path / "r.json", quiet=True,
    )  # fmt: skip
    assert results["methods"] == ["ar", "csd", "csd@tiny-slow"]
    assert "another target" in results["skipped"]["csd@tiny-swapped"]
    slow_spec = results["method_configs"]["csd@tiny-slow"]["spec"]
    assert slow_spec["rungs"][1]["min_confidence"] == 0.3
    slow = results["summary"]["csd@tiny-slow"]
    assert slow["mismatches"] == 0 and slow["prompts"] == 2
    # its own k-matrix ran: blocks of at most 2 drafted tokens for the target
    by_position = slow["target_acceptance_by_position"]
    assert 0 < len(by_position) <= 2


def test_bench_measures_maxgram_trees(tiny_config, gsm8k_file, tmp_path):
    """csd-branch@3: Max-Gram's drafts branch, the output stays ar's."""
    results = run_bench(
        "gsm8k", data=gsm8k_file, config=tiny_config, ladder="tiny", max_new_tokens=16,
        methods="ar,csd,csd-branch@3", out=tmp_path / "r.json", quiet=True,
    )  # fmt: skip
    assert results["method_configs"]["csd-branch@3"]["spec"]["rungs"][-1]["branches"] == 3
    assert results["summary"]["csd-branch@3"]["mismatches"] == 0


def test_mismatch_reported_with_margin(tiny_config, gsm8k_file, tmp_path, monkeypatch, capsys):
    """A method that flips one token is caught, with the target's logit margin there."""

    def flipped(run):
        def flip(ids, n):
            o = run(ids, n)
            tokens = list(o.ids)
            tokens[3] = (tokens[3] + 1) % 200
            return Outcome(tokens, o.wall_s, o.target_forwards, o.forwards, finish=o.finish)

        return flip

    add_wrapped_ar(monkeypatch, "flip", "flips token 3", flipped)
    results = bench_ar_and("flip", tiny_config, gsm8k_file, max_new_tokens=8)
    assert results["summary"]["flip"]["mismatches"] == 2
    assert results["summary"]["flip"]["mismatches_beyond_ties"] == 2  # not hidden as ties
    first = results["mismatches"][0]
    assert first["method"] == "flip" and first["position"] == 3
    assert first["margin"] > 0 and first["near_tie"] is False
    assert results["speed_bar"][3]["pass"] is False
    assert "flip differs from ar" in capsys.readouterr().out


def test_json_to_stdout_and_compare(tiny_config, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": "abc abc abc abc"}])
    results = run_bench(
        str(prompts),
        field="text",
        config=tiny_config,
        ladder="tiny-lookup",
        max_new_tokens=6,
        methods="ar,sd,pld,csd,hf-lookup",
        out=tmp_path / "a.json",
        plot=tmp_path / "plots" / "a.png",
        as_json=True,
        quiet=True,
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["methods"] == ["ar", "pld", "csd", "hf-lookup"]
    assert "speed bar" in captured.err  # the report goes to stderr with --json
    assert "sd" in results["skipped"] and (tmp_path / "plots" / "a.png").is_file()
    assert results["summary"]["ar"]["accuracy"] is None
    run_compare(tmp_path / "a.json", tmp_path / "a.json")
    assert "vs" in capsys.readouterr().out
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(UsageError, match="not a csdraft bench results file"):
        read_results(tmp_path / "junk.json")
    with pytest.raises(UsageError, match="not found"):
        read_results(tmp_path / "none.json")


def test_sampling_skips_output_check(tiny_config, gsm8k_file, tmp_path):
    results = run_bench(
        "gsm8k",
        data=gsm8k_file,
        config=tiny_config,
        ladder="tiny",
        max_new_tokens=6,
        methods="ar,csd,hf-generate",
        temperature=0.8,
        warmup=0,
        no_plot=True,
        quiet=True,
    )
    assert results["mismatches"] == [] and results["speed_bar"][3]["pass"] is None


def test_cli(tiny_config, gsm8k_file, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from csdraft.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["bench", "gsm8k", "--data", str(gsm8k_file), "-c", str(tiny_config), "-l", "tiny"]
    args += ["--max-new-tokens", "4", "--limit", "1", "--methods", "ar,pld", "--warmup", "0"]
    res = runner.invoke(app, [*args, "--out", "r.json", "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.json").is_file() and (tmp_path / "r.png").is_file()
    res = runner.invoke(app, ["bench", "--compare", "r.json", "r.json"])
    assert res.exit_code == 0 and "pld" in res.output
    res = runner.invoke(app, ["bench", "gsm8k", "--compare", "r.json", "r.json"])
    assert isinstance(res.exception, UsageError)
    res = runner.invoke(app, ["bench", "--limit", "1"])
    assert isinstance(res.exception, UsageError) and "which dataset" in str(res.exception)


def test_interrupt_reports_finished_prompts(tiny_config, gsm8k_file, tmp_path, monkeypatch):
    """Ctrl-C during prompt 2 keeps prompt 1's numbers, marked as interrupted."""

    def stopping(run):
        calls = []

        def stop(ids, n):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return run(ids, n)

        return stop

    add_wrapped_ar(monkeypatch, "stop", "stops on its second call", stopping)
    results = bench_ar_and(
        "stop", tiny_config, gsm8k_file, max_new_tokens=4, out=tmp_path / "r.json"
    )
    assert results["interrupted"] is True and len(results["prompts"]) == 1
    assert json.loads((tmp_path / "r.json").read_text())["interrupted"] is True


def test_unwritable_out_fails_before_loading(tiny_config, gsm8k_file, monkeypatch):
    from csdraft.api import Ladder

    def refuse(*args, **kwargs):
        raise AssertionError("models loaded before --out was checked")

    monkeypatch.setattr(Ladder, "load", refuse)
    with pytest.raises(UsageError, match="--out: cannot write /proc/x.json"):
        run_bench("gsm8k", data=gsm8k_file, config=tiny_config, out=Path("/proc/x.json"))
    with pytest.raises(UsageError, match="--plot: cannot write"):
        run_bench("gsm8k", data=gsm8k_file, config=tiny_config, plot=Path("/proc/x.png"))


def test_a_failure_keeps_what_was_measured(tiny_config, gsm8k_file, tmp_path, monkeypatch):
    """A method that crashes on the second prompt: the first prompt's results are on disk,
    marked incomplete, and the error says where they are."""
    from csdraft.errors import CsdraftError

    ar = METHODS["ar"]

    class Crash(EngineMethod):
        def runner(self, ladder, settings):
            run, calls = ar.runner(ladder, settings), []

            def crash(ids, n):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("backend fell over")
                return run(ids, n)

            return crash

    monkeypatch.setitem(METHODS, "crash", Crash("crash", "crashes on its 2nd call", ar.transform))
    out = tmp_path / "r.json"
    with pytest.raises(CsdraftError, match=r"after 1 of 2 prompts .*backend fell over.*r\.json"):
        run_bench(
            "gsm8k", data=gsm8k_file, config=tiny_config, ladder="tiny", max_new_tokens=4,
            methods="ar,crash", warmup=0, out=out, no_plot=True, quiet=True,
        )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and len(saved["prompts"]) == 1
    assert saved["stopped"] == "failed after 1 of 2 prompts"


def test_ar_is_measured_twice_for_the_spread(tiny_config, gsm8k_file):
    results = run_bench(
        "gsm8k", data=gsm8k_file, config=tiny_config, ladder="tiny", max_new_tokens=6,
        methods="ar,csd", warmup=0, no_plot=True, quiet=True,
    )  # fmt: skip
    spread = results["ar_spread"]
    assert len(spread["per_token_s"]) == 2 and spread["spread"] >= 0
    assert spread["busy"] == (spread["spread"] > spread["threshold"])
    assert results["complete"] is True
