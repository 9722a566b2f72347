"""Deferral rules in the ladder YAML, on the command line and in what a lossy run reports."""

from __future__ import annotations

import json

import pytest
from test_cli import PROMPT, _env, ladder_dir, reference, run  # noqa: F401 - fixtures
from test_ladder import config, usage_error

from csdraft.engine.deferral import Deferral
from csdraft.ladder import ladder_to_yaml, parse_config, parse_ladder
from csdraft.trace import Start, Stats
from csdraft.viz import summary_table


def deferrals(spec) -> tuple:
    """Each reviewer's deferral rule: the target's, then each neural drafter's."""
    return tuple(r.deferral for r in (spec.target, *spec.drafters))


def test_yaml_target_rule_and_per_reviewer_list():
    spec = parse_config(config(deferral={"rule": "opt", "alpha": 0.1}), "cfg.yaml")["tiny"]
    assert deferrals(spec) == (Deferral("opt", 0.1), None, None)
    assert not spec.lossless
    rules = [None, {"rule": "v2", "alpha": 0.2}, {"rule": "chow", "alpha": 0}]
    spec = parse_config(config(deferral=rules), "cfg.yaml")["tiny"]
    assert deferrals(spec) == (None, Deferral("v2", 0.2), Deferral("chow", 0.0))
    assert not spec.lossless
    assert parse_ladder("tiny", ladder_to_yaml(spec)) == spec  # written back as read
    assert parse_config(config(), "cfg.yaml")["tiny"].lossless


@pytest.mark.parametrize(
    "value, words",
    [
        ({"rule": "best", "alpha": 0.1}, "(big): deferral: unknown deferral rule 'best'"),
        ({"rule": "opt", "alpha": "x"}, "(big): deferral: alpha must be a number"),
        ({"rule": "opt", "beta": 1}, "(big): deferral: expected {rule: R, alpha: A}"),
        ({"rule": "opt"}, "(big): deferral: opt needs an alpha (opt@ALPHA)"),
        ([{"rule": "opt", "alpha": 0.1}, None], "deferral (one per reviewer: big, mid, small)"),
        ([None, None, None, None], "expected one value or a list of 3"),
        ("opt", "(big): deferral: expected {rule: R, alpha: A} or null, got 'opt'"),
    ],
)
def test_yaml_mistakes_are_one_line(value, words):
    message = usage_error(config(deferral=value))
    assert "ladder 'tiny': " in message and words in message, message


def test_yaml_refuses_lenient_and_lossy_drafter():
    text = config(lenience=[2.0, 1.0], deferral=[None, {"rule": "opt", "alpha": 0.1}, None])
    assert "mid: lenience 2 and deferral opt alpha=0.1: choose one" in usage_error(text)


def test_stats_say_lossy():
    start = Start(["big", "small"], 3, kinds=["target", "model"])
    start.deferral = [{"rule": "opt", "alpha": 0.1}, None]
    stats = Stats.of([start])
    assert not stats.lossless
    assert stats.lossy_label() == "LOSSY: opt alpha=0.1 at big"
    assert stats.as_dict()["deferral"] == {"big": {"rule": "opt", "alpha": 0.1}}
    assert Stats.of([Start(["big"], 3)]).as_dict()["lossless"] is True
    assert "LOSSY: opt alpha=0.1 at big" in str(summary_table(stats).caption)
    assert "LOSSY" not in str(summary_table(Stats.of([Start(["big"], 3)])).caption)


def test_generate_lossy_json_and_trace(capsys, monkeypatch, ladder_dir, tmp_path):
    cfg = str(ladder_dir / "cascades.yaml")
    trace = tmp_path / "t.jsonl"
    args = ["generate", "-c", cfg, "-p", PROMPT, "--json", "-n", "12", "--save-trace", str(trace)]
    code, out, err = run(capsys, monkeypatch, *args, "--deferral", "chow", "--alpha", "1")
    assert code == 0, err
    result = json.loads(out)
    assert result["lossless"] is False
    assert result["stats"]["deferral"] == {"tiny-target": {"rule": "chow", "alpha": 1.0}}
    start = [json.loads(line) for line in trace.read_text().splitlines()][1]
    assert start["event"] == "Start" and start["deferral"][0] == {"rule": "chow", "alpha": 1.0}
    # At a lossless end the run is today's: lossless, and the target's greedy output.
    flags = ["--deferral", "diff,none", "--alpha", "-1"]
    code, out, err = run(capsys, monkeypatch, *args[:-2], *flags)
    assert code == 0, err
    result = json.loads(out)
    assert result["lossless"] is True and result["token_ids"] == reference(ladder_dir, 12)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--deferral", "best"], "--deferral: unknown deferral rule 'best'"),
        (["--alpha", "0.1"], "--alpha: needs --deferral RULE"),
        (["--deferral", "opt,v1", "--alpha", "1,2,3"], "--deferral alpha (one per rule)"),
        (["--deferral", "opt,v1", "--alpha", "1,2,3"], "expected one value or a list of 2"),
        (["--deferral", "opt"], "--deferral: opt needs an alpha (opt@ALPHA)"),
        (["--deferral", "opt,v1,v2", "--alpha", "1"], "deferral: expected"),
    ],
)
def test_generate_flag_mistakes(capsys, monkeypatch, ladder_dir, flags, words):
    cfg = str(ladder_dir / "cascades.yaml")
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT, *flags)
    assert code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1


def test_help_states_each_rule(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "generate", "--help")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    for words in ("lossless at alpha <= 0", "lossless at alpha < -1", "lossless at alpha < 0"):
        assert words in text, text
