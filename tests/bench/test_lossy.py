"""bench's lossy methods (METHOD+RULE@ALPHA): parsed, configured, run and labelled lossy; their
differences from ar are a quality cost, not errors."""

from __future__ import annotations

import pytest

from csdraft.bench.methods import Settings, method, parse_methods
from csdraft.bench.metrics import answer_agreement, wilson
from csdraft.bench.run import run_bench
from csdraft.engine.deferral import Deferral
from csdraft.errors import UsageError
from csdraft.ladder import get_ladder


def test_parse_lossy_methods():
    assert parse_methods("csd+opt@0.1,sd") == ["ar", "csd+opt@0.1", "sd"]
    assert parse_methods("csd+opt@0.1,0.2,sd+chow@0.3") == ["ar", "csd+opt@0.1,0.2", "sd+chow@0.3"]
    with pytest.raises(UsageError, match="unknown deferral rule 'best'"):
        parse_methods("csd+best@0.1")
    with pytest.raises(UsageError, match="needs an engine method"):
        parse_methods("hf-assisted+opt@0.1")


def test_lossy_config_names_rule_and_reviewers(tiny_config):
    spec = get_ladder("tiny", tiny_config)
    m = method("csd+opt@0.1,0.2")
    assert not m.lossless
    config = m.config(spec, Settings())
    assert config["lossless"] is False
    assert config["deferral"] == {
        "tiny-t": {"rule": "opt", "alpha": 0.1},
        "tiny-d": {"rule": "opt", "alpha": 0.2},
    }
    plan = m.plan(spec, Settings())
    assert [r.deferral for r in plan.rungs[:2]] == [Deferral("opt", 0.1), Deferral("opt", 0.2)]
    assert "3 alphas" in method("csd+opt@0.1,0.2,0.3").skip_reason(spec, Settings())


def test_lossy_run_is_labelled_and_kept_out_of_the_speed_bar(tiny_config, gsm8k_file, capsys):
    results = run_bench(
        "gsm8k", data=gsm8k_file, config=tiny_config, ladder="tiny", max_new_tokens=12,
        methods="ar,csd,sd+chow@1", warmup=0, no_plot=True, quiet=True,
    )  # fmt: skip
    lossy = results["summary"]["sd+chow@1"]
    assert lossy["lossless"] is False and results["summary"]["csd"]["lossless"] is True
    assert lossy["mismatches"] > 0  # chow at 1 keeps every draft: outputs differ from ar's
    assert all(m["method"] != "sd+chow@1" for m in results["mismatches"])
    assert results["speed_bar"][3]["pass"] is True
    shown = " ".join(capsys.readouterr().out.split())
    assert "sd+chow@1 LOSSY" in shown and "LOSSY on purpose" in shown


def test_wilson_interval_and_answer_agreement():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) is None and wilson(0, 5)[0] == 0.0
    prompts = [
        {"results": {"ar": {"answer": "3"}, "m": {"answer": "3"}}},
        {"results": {"ar": {"answer": "4"}, "m": {"answer": None}}},
        {"results": {"ar": {"answer": None}, "m": {"answer": None}}},
        {"results": {"ar": {"answer": "5"}}},
    ]
    assert answer_agreement(prompts, "m") == pytest.approx(2 / 3)
    assert answer_agreement(prompts, "nope") is None


def test_lossy_rule_over_another_ladder_and_a_lossy_ladder(tiny_config, gsm8k_file, tmp_path):
    slow = get_ladder("tiny-slow", tiny_config)
    config = tmp_path / "cascades.yaml"
    config.write_text(
        tiny_config.read_text()
        + f"""
tiny-lossy:
  target: {{model: {slow.target.ref}, name: tiny-t}}
  drafters:
    - {{model: {slow.drafters[0].ref}, name: d}}
  maxgram: {{max_ngram: 4, min_ngram: 1}}
  k_matrix: [[2, 0], [0, 2]]
  dtype: float32
  deferral: {{rule: chow, alpha: 1}}
"""
    )
    spec = get_ladder("tiny", config)
    assert parse_methods("csd@tiny-slow+chow@1", config) == ["ar", "csd@tiny-slow+chow@1"]
    over = method("csd@tiny-slow+chow@1", config)  # a rule over another ladder's settings
    assert not over.lossless
    assert over.config(spec, Settings())["k_matrix"] == [[2, 0], [0, 2]]
    plan = over.plan(spec, Settings())
    assert plan.drafters[0].min_confidence == 0.3
    assert [r.deferral for r in plan.rungs] == [Deferral("chow", 1.0), None, None]
    ladder = method("csd@tiny-lossy", config)  # a ladder's own rules come with it, labelled
    assert not ladder.lossless and "LOSSY: chow alpha=1" in ladder.description
    assert ladder.plan(spec, Settings()).target.deferral == Deferral("chow", 1.0)
    assert method("csd@tiny-slow", config).lossless
    assert method("csd@tiny-slow", config).plan(spec, Settings()).lossless
    reason = method("csd-tree+chow@1", config).skip_reason(spec, Settings())
    assert "token trees (tiny-t) and a lossy rule (tiny-t's chow alpha=1)" in reason
    assert method("csd+chow@0").lossless  # chow's lossless end is not labelled LOSSY
    with pytest.raises(UsageError, match="chow needs an alpha"):
        parse_methods("csd+chow@")
    with pytest.raises(UsageError, match=r"chow takes alpha in \[0, 1\]"):
        parse_methods("csd+chow@5")
    with pytest.raises(UsageError, match="unknown ladder 'nowhere'"):
        parse_methods("csd@nowhere+chow@1", config)
    results = run_bench(
        "gsm8k", data=gsm8k_file, config=config, ladder="tiny", max_new_tokens=12,
        methods="ar,csd@tiny-slow+chow@1,csd@tiny-lossy", warmup=0, no_plot=True, quiet=True,
    )  # fmt: skip
    for name in ("csd@tiny-slow+chow@1", "csd@tiny-lossy"):
        assert results["summary"][name]["lossless"] is False
        assert results["summary"][name]["mismatches"] > 0
