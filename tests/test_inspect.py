"""Tests for ``csdraft inspect``: a tiny ladder's facts and measurements, and trace replay."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from tiny_ladder import make_tiny_ladder, own_env  # noqa: F401 - own_env: a fixture
from typer.testing import CliRunner

from csdraft import trace
from csdraft.cli import app
from csdraft.errors import UsageError
from csdraft.inspector import replay_trace


@pytest.fixture(scope="module")
def ladder2(tmp_path_factory):
    """A tiny ladder with two neural drafters and Max-Gram."""
    return make_tiny_ladder(tmp_path_factory.mktemp("tiny-inspect"), drafters=2, maxgram=True)


@pytest.fixture(scope="module")
def saved_trace(ladder2, tmp_path_factory):
    """A trace saved by ``generate --save-trace`` on the tiny ladder, and its JSON output."""
    path = tmp_path_factory.mktemp("trace") / "run.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = CliRunner().invoke(
            app,
            [
                "generate", "--config", str(ladder2), "--prompt", "w1 w2 w3 w1 w2",
                "--max-new-tokens", "10", "--save-trace", str(path), "--json",
            ],
        )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    return path, json.loads(result.output.strip().splitlines()[-1])


def test_inspect_tiny_ladder(ladder2):
    result = CliRunner().invoke(
        app, ["inspect", "tiny", "--config", str(ladder2), "--sample", "1"], terminal_width=200
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = result.output
    for rung in ("tiny-target", "tiny-d1", "tiny-d2", "max-gram"):
        assert rung in out
    for needle in (
        " same",  # tokenizer fingerprints equal
        "row r = reviewer r",
        "reviews blocks of 9",  # explain_k_matrix
        "forward pass cost",
        "pairwise greedy agreement",
        "predicted speedup of this k-matrix",
        "float32",
    ):
        assert needle in out, needle


def test_inspect_without_measurements(ladder2):
    result = CliRunner().invoke(app, ["inspect", "--config", str(ladder2), "--sample", "0"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "tiny-d2" in result.output
    assert "predicted speedup" not in result.output


def test_inspect_trace_plain(ladder2, saved_trace):
    path, generated = saved_trace
    result = CliRunner().invoke(
        app, ["inspect", "--trace", str(path), "--config", str(ladder2), "--speed", "0"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert generated["text"].strip() in result.output
    assert "generation summary" in result.output
    assert f"{generated['stats']['new_tokens']} tokens" in result.output


def test_inspect_trace_live_view(ladder2, saved_trace):
    """On a terminal the replay goes through the live view, paced by the recorded times."""
    path, generated = saved_trace
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    assert replay_trace(path, config=ladder2, speed=1000, console=console) == 0
    text = buf.getvalue()
    assert "generation summary" in text
    assert generated["text"].split()[0] in text


def test_inspect_trace_unknown_ladder_shows_ids(tmp_path, ladder2, saved_trace):
    path, generated = saved_trace
    header, events = trace.load(path)
    other = tmp_path / "other.jsonl"
    trace.save(events, other, header={**header, "ladder": "no-such-ladder"})
    result = CliRunner().invoke(
        app, ["inspect", "--trace", str(other), "--config", str(ladder2), "--speed", "0"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"<{generated['token_ids'][0]}>" in result.output


def test_inspect_trace_missing_file(tmp_path):
    result = CliRunner().invoke(app, ["inspect", "--trace", str(tmp_path / "none.jsonl")])
    assert isinstance(result.exception, UsageError)


def test_model_facts_count_int8_layers(tmp_path):
    from tiny_ladder import tiny_model_dir, tiny_tokenizer

    from csdraft.inspector import model_facts
    from csdraft.models.transformers_backend import load_transformers as load_model

    path = tiny_model_dir(tmp_path / "m", 0, tiny_tokenizer())
    full = model_facts(load_model(str(path), "float32", progress=False))
    int8 = model_facts(load_model(str(path), "int8", progress=False))
    target = model_facts(load_model(str(path), "int8", progress=False, batch_invariant=True))
    assert int8["params"] == full["params"] == target["params"]
    assert int8["dtype"] == "int8 linears, float32 rest" and full["dtype"] == "float32"
    assert target["dtype"] == "int8 linears per token (batch-invariant), float32 rest"
    assert int8["bytes"] < full["bytes"] and target["bytes"] == int8["bytes"]
    assert full["device"] == "cpu"


def test_model_facts_ask_the_loaded_model():
    """Facts come from the loaded model's own answers, never from walking its modules."""
    from types import SimpleNamespace

    from csdraft.inspector import model_facts

    model = SimpleNamespace(
        compute_dtype="bfloat16",
        device="cuda:0",
        parameter_count=lambda: 1234,
        weight_bytes=lambda: 2468,
        int8_layers=lambda: 0,
    )
    assert model_facts(model) == {
        "params": 1234,
        "bytes": 2468,
        "dtype": "bfloat16",
        "device": "cuda:0",
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "not a csdraft trace: it holds no events (an empty file?)"),
        ("[1,2,3]\n", "not a csdraft trace: line 1: expected an event object, got [1,2,3]"),
    ],
)
def test_inspect_trace_of_the_wrong_shape_is_one_line(tmp_path, capsys, monkeypatch, text, needle):
    import sys

    from csdraft import cli

    path = tmp_path / "t.jsonl"
    path.write_text(text)
    monkeypatch.setattr(sys, "argv", ["csdraft", "inspect", "--trace", str(path), "--speed", "0"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.strip() == f"csdraft: error: --trace {path}: {needle}"
