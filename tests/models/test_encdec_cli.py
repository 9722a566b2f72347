"""Encoder-decoder ladders through the command line: ``generate`` (JSON, plain, sampling) gives
the T5 target's own greedy output; mixed ladders, trees, draft vocabularies, int8 targets
without a batch-invariant path and over-long inputs are refused in one line; ``inspect``
explains the ladder."""

from __future__ import annotations

import json

import pytest
import yaml
from seq2seq_models import (
    TOKENIZER,
    bart_config,
    ladder_yaml,
    model_dir,
    reference,
    t5_config,
    truncated_dir,
)
from test_cli import one_line_error, run
from tiny_ladder import tiny_model_dir
from typer.testing import CliRunner

from csdraft.cli import app

PROMPT = "w1 w2 w3 w4 w1 w2 w3 w5 w6"


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CSDRAFT_CONFIG", str(tmp_path / "user.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """A T5 target (2 layers, 32 wide), two smaller T5 drafters (its first layer alone; a
    random 1-layer 16-wide model) and Max-Gram: the ladder file and the target's folder."""
    root = tmp_path_factory.mktemp("t5-cli")
    target = model_dir(root / "target", t5_config(), 0)
    near = truncated_dir(root / "near", target, 1)
    small = model_dir(root / "small", t5_config(16, 1), 2)
    path = ladder_yaml(
        root / "ladder.yaml", [target, near, small], [[3, 1, 2], [0, 2, 2], [0, 0, 3]]
    )
    return {"yaml": path, "target": target}


def edited(t5, tmp_path, change) -> str:
    """The T5 ladder file with ``change(ladder_dict)`` applied, written under ``tmp_path``."""
    raw = yaml.safe_load(t5["yaml"].read_text())
    change(raw["encdec"])
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def prompt_ids() -> list[int]:
    return TOKENIZER(PROMPT)["input_ids"]


def test_json_raw_equals_the_targets_generate(capsys, monkeypatch, t5):
    code, out, err = run(
        capsys, monkeypatch, "generate", "--json", "--raw", "-c", str(t5["yaml"]),
        "-p", PROMPT, "-n", "16",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["token_ids"] == reference(t5["target"], prompt_ids(), 16)
    assert result["lossless"] is True
    assert {"target", "d1", "d2"} <= set(result["stats"]["reviews"])


def test_plain_view_and_sampling(capsys, monkeypatch, t5):
    cfg = str(t5["yaml"])
    code, out, err = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT, "-n", "10")
    assert code == 0, err
    want = TOKENIZER.decode(reference(t5["target"], prompt_ids(), 10), skip_special_tokens=True)
    assert want.strip() in out
    sampled = [
        run(capsys, monkeypatch, "generate", "--json", "-c", cfg, "-p", PROMPT, "-n", "10",
            "--temperature", "1", "--seed", "5")
        for _ in range(2)
    ]  # fmt: skip
    assert sampled[0][0] == 0, sampled[0][2]
    assert json.loads(sampled[0][1])["token_ids"] == json.loads(sampled[1][1])["token_ids"]


@pytest.mark.parametrize("llama_target", [False, True])
def test_mixed_ladders_are_refused(capsys, monkeypatch, t5, tmp_path, llama_target):
    llama = tiny_model_dir(tmp_path / "llama", 0, TOKENIZER)
    models = [llama, t5["target"]] if llama_target else [t5["target"], llama]
    cfg = ladder_yaml(tmp_path / "mixed.yaml", models, [[2, 1], [0, 2]])
    code, _, err = run(capsys, monkeypatch, "generate", "-c", str(cfg), "-p", PROMPT)
    assert code == 2
    assert "mixed encoder-decoder and decoder-only ladders" in one_line_error(err)


def _tree(ladder):
    ladder["rungs"][0]["tree"] = {"budget": 8}


def _vocab(ladder):
    ladder["rungs"][1]["vocab"] = 50


def _int8_target(ladder):
    ladder["rungs"][0]["dtype"] = "int8"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_tree, "rung 'target' has a tree"),
        (_vocab, "rung 'd1' has a draft vocabulary"),
        (_int8_target, "set batch_invariant: false"),
    ],
)
def test_what_encoder_decoders_do_not_do_is_one_line(capsys, monkeypatch, t5, tmp_path, change,
                                                     needle):  # fmt: skip
    cfg = edited(t5, tmp_path, change)
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT, "-n", "4")
    assert code == 2
    assert needle in one_line_error(err)


def test_int8_drafters_and_a_dynamic_int8_target_run(capsys, monkeypatch, t5, tmp_path):
    def int8_drafters(ladder):
        for rung in ladder["rungs"][1:3]:
            rung["dtype"] = "int8"

    cfg = edited(t5, tmp_path, int8_drafters)
    code, out, err = run(capsys, monkeypatch, "generate", "--json", "-c", cfg, "-p", PROMPT,
                         "-n", "12")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["token_ids"] == reference(t5["target"], prompt_ids(), 12)

    def int8_target(ladder):
        ladder["rungs"][0].update(dtype="int8", batch_invariant=False)

    cfg = edited(t5, tmp_path, int8_target)
    code, out, err = run(capsys, monkeypatch, "generate", "--json", "-c", cfg, "-p", PROMPT,
                         "-n", "6")  # fmt: skip
    assert code == 0, err
    assert len(json.loads(out)["token_ids"]) == 6


def test_an_input_past_a_drafters_limit_is_one_line(capsys, monkeypatch, t5, tmp_path):
    bart = model_dir(tmp_path / "bart", bart_config(positions=8), 3)
    cfg = ladder_yaml(tmp_path / "l.yaml", [t5["target"], bart], [[2, 1], [0, 2]])
    code, _, err = run(capsys, monkeypatch, "generate", "-c", str(cfg), "-p", PROMPT, "-n", "4")
    assert code == 2
    assert "prompt is 9 tokens; model 'd1' (an encoder-decoder) reads at most 8" in (
        one_line_error(err)
    )


def test_inspect_explains_an_encoder_decoder_ladder(t5, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(
        app, ["inspect", "encdec", "-c", str(t5["yaml"]), "--sample", "1"], terminal_width=200
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "encoder-decoder ladder" in result.output
    assert "predicted speedup" in result.output


def test_the_documented_flan_t5_ladder_is_valid(tmp_path):
    """docs/encoder-decoder.md's ladder for hub users parses and validates (nothing loads)."""
    from pathlib import Path

    from csdraft.ladder import get_ladder

    doc = (Path(__file__).parents[2] / "docs" / "encoder-decoder.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "flan.yaml").write_text(block)
    spec = get_ladder("flan-t5", tmp_path / "flan.yaml")
    assert [r.ref for r in spec.rungs[:3]] == [
        "google/flan-t5-xl",
        "google/flan-t5-base",
        "google/flan-t5-small",
    ]
    assert spec.maxgram is not None
