"""Tests for ``csdraft tune k-matrix`` end to end on a tiny ladder: the report, the winner (or
no winner within the noise), writing, and the help text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_ladder import make_tiny_ladder, own_env  # noqa: F401 - own_env: a fixture
from tune_helpers import ctrl_c_after_first_prompt
from typer.testing import CliRunner

from csdraft.cli import app
from csdraft.errors import UsageError
from csdraft.ladder import get_ladder, load_ladders
from csdraft.spec import validate
from csdraft.tune import noise


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-tune")
    cfg = make_tiny_ladder(root, drafters=1, maxgram=True)
    prompts = root / "prompts.jsonl"
    rows = [{"prompt": " ".join(f"w{(7 * i + 3 * j) % 60}" for j in range(14))} for i in range(3)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg, prompts


def _force_verdict(monkeypatch, declared: bool) -> list:
    """Make the timing-dependent verdict deterministic (its logic is tested on synthetic
    numbers in test_tune_noise); record what it was asked."""
    asked = []

    def fixed(baseline_s, winner_s, band):
        asked.append((baseline_s, winner_s, band))
        return noise.MeasuredMargin(band + 0.5 if declared else band, band)

    monkeypatch.setattr(noise, "verdict", fixed)
    return asked


def test_cli_tune_end_to_end(tiny, monkeypatch):
    cfg, prompts = tiny
    asked = _force_verdict(monkeypatch, declared=True)
    result = CliRunner().invoke(
        app,
        [
            "tune", "k-matrix", "--config", str(cfg), "--data", str(prompts), "--limit", "2",
            "--budget", "3", "--max-new-tokens", "12", "--seed", "1", "--write",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = result.output
    for needle in ("candidates: predicted vs measured", "answers", "vertical only", "winner"):
        assert needle in out
    # Trees were replayed, left as leaves and extended, each against its linear setting.
    for kind in ("token trees: best", "extended trees: best"):
        tree_line = next(ln for ln in out.splitlines() if kind in ln)
        assert "tokens per target review, vs" in tree_line and "linear" in tree_line
    line = next(ln for ln in out.splitlines() if "identical outputs:" in ln)
    same, runs = line.rsplit("identical outputs:", 1)[1].strip().split("/")
    assert same == runs and int(runs) > 0
    assert "ar on those prompts:" in out and "predicted by the replay" in out
    assert len(asked) == 1 and asked[0][0] > 0 and asked[0][1] > 0 and asked[0][2] >= 0
    assert " ± " in out and "over the current settings" in out
    assert "wrote ladder tiny-tuned" in out
    tuned = get_ladder("tiny-tuned", cfg)
    assert validate(tuned) == tuned
    again = CliRunner().invoke(
        app,
        [
            "tune", "k-matrix", "--config", str(cfg), "--data", str(prompts), "--limit", "1",
            "--budget", "0", "--max-new-tokens", "8", "--write", "tiny",
        ],
    )  # fmt: skip
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert "wrote ladder tiny-2" in again.output
    assert "predictions only" in again.output


def test_cli_tune_names_no_winner_within_the_noise(tiny, monkeypatch, tmp_path):
    cfg, prompts = tiny
    own = tmp_path / "cascades.yaml"
    own.write_text(cfg.read_text())
    before = own.read_text()
    _force_verdict(monkeypatch, declared=False)
    result = CliRunner().invoke(
        app,
        [
            "tune", "k-matrix", "--config", str(own), "--data", str(prompts), "--limit", "1",
            "--budget", "2", "--max-new-tokens", "8", "--write",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = " ".join(result.output.split())
    assert "no setting beats the current one by more than the measured noise" in out
    assert "nothing written" in out
    assert "wrote ladder" not in out
    assert own.read_text() == before
    assert "tiny" in load_ladders(own)


def test_cli_tune_help_explains_the_k_matrix():
    result = CliRunner().invoke(app, ["tune", "k-matrix", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "row r belongs to reviewer r" in text
    assert "cumulative counts" in text
    assert "--write" in text
    assert "looks busy" in text and "noise" in text


def test_cli_tune_name_needs_write(tiny):
    cfg, prompts = tiny
    result = CliRunner().invoke(
        app, ["tune", "k-matrix", "--config", str(cfg), "--data", str(prompts), "mine"]
    )
    assert isinstance(result.exception, UsageError)


def test_cli_tune_write_checks_the_config_before_measuring(tiny, monkeypatch):
    """An unwritable --write target fails in one line before any model loads, not at the end."""
    from csdraft.api import Ladder

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the --write target was checked")

    monkeypatch.setattr(Ladder, "load", refuse)
    monkeypatch.setenv("CSDRAFT_CONFIG", "/proc/nope/cascades.yaml")
    _, prompts = tiny
    result = CliRunner().invoke(app, ["tune", "k-matrix", "--data", str(prompts), "--write"])
    assert isinstance(result.exception, UsageError), result.output
    assert str(result.exception).startswith("--write: cannot write /proc/nope/cascades.yaml")


def _interrupt_tune(tiny, tmp_path, monkeypatch):
    """Run tune in ``tmp_path`` (interrupted by the caller's patch); return the result and the
    partial report it names."""
    cfg, prompts = tiny
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "tune", "k-matrix", "--config", str(cfg), "--data", str(prompts), "--limit", "2",
            "--budget", "5", "--max-new-tokens", "8",
        ],
    )  # fmt: skip
    assert result.exit_code == 130, result.output + repr(result.exception)
    line = [ln for ln in result.output.splitlines() if "interrupted" in ln]
    assert len(line) == 1 and line[0].startswith("csdraft: interrupted; kept the calibration")
    files = list(tmp_path.glob("tune-tiny-interrupted-*.json"))
    assert len(files) == 1 and line[0].endswith(f" in {files[0]}")
    return line[0], json.loads(files[0].read_text())


def test_ctrl_c_in_tunes_real_runs_keeps_what_was_measured(tiny, tmp_path, monkeypatch):
    ctrl_c_after_first_prompt(monkeypatch)
    line, kept = _interrupt_tune(tiny, tmp_path, monkeypatch)
    assert "predictions and 1 prompt of real runs" in line
    assert kept["schema"] == "csdraft-tune-partial/1" and kept["complete"] is False
    assert kept["ladder"] == "tiny" and len(kept["calibration"]["prompts"]) == 2
    assert kept["calibration"]["prompts"][0]["reference_tokens"] > 0
    assert kept["predictions"] and kept["predictions"][0]["predicted_speedup"] > 0
    (done,) = kept["real_runs"]["rounds"]
    assert done["prompts"] == [0] and done["settings"]["ar"]["speedup"] == 1.0
    assert set(done["settings"]) == set(kept["real_runs"]["settings"]) and len(done["settings"]) > 1
    assert all(s["same_as_ar"] == [True] for s in done["settings"].values())


def test_ctrl_c_in_tunes_search_keeps_the_calibration(tiny, tmp_path, monkeypatch):
    from csdraft.tune import run

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "search", ctrl_c)
    line, kept = _interrupt_tune(tiny, tmp_path, monkeypatch)
    assert line.startswith("csdraft: interrupted; kept the calibration in ")
    assert kept["predictions"] is None and kept["real_runs"] is None
    assert len(kept["calibration"]["prompts"]) == 2


@pytest.mark.parametrize("name", ["prompts.jsonl", "prompts.txt"])
def test_cli_tune_data_not_utf8_is_one_line(tmp_path, name):
    """JSON lines or plain text (one prompt a line): either way, the line is named."""
    from csdraft.tune.data import load_calibration_prompts

    path = tmp_path / name
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(UsageError, match=rf"{name}:2: not UTF-8 text \(byte 0xe9\)"):
        load_calibration_prompts(str(path), 2)
