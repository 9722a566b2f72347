"""``csdraft tune deferral``: the sweep's parsing, the choice under an agreement floor, writing
the winner as a LOSSY ladder, and a real run on the tiny ladder."""

from __future__ import annotations

import pytest

from csdraft.engine.deferral import Deferral
from csdraft.errors import UsageError
from csdraft.ladder import load_ladders
from csdraft.tune import deferral as tune_deferral


def test_parse_sweep():
    assert tune_deferral.parse_sweep("v3@0.4, diff@-0.2") == [
        Deferral("v3", 0.4),
        Deferral("diff", -0.2),
    ]
    assert len(tune_deferral.parse_sweep(None)) == len(tune_deferral.DEFAULT_SWEEP)
    for bad, why in (("v3", "RULE@ALPHA"), ("nope@1", "unknown"), ("chow@0", "lossless end"),
                     ("", "empty"), ("v3@x", "v3@x")):  # fmt: skip
        with pytest.raises(UsageError, match=why):
            tune_deferral.parse_sweep(bad)


def _summary(rows: dict[str, tuple[float, float]]) -> dict:
    return {
        n: {"time_speedup": {"median": sp}, "answers_agree_with_ar": agree}
        for n, (sp, agree) in rows.items()
    }


def test_choose_fastest_above_the_floor_and_faster_than_csd():
    sweep = tune_deferral.parse_sweep("v3@0.2,v3@0.6,chow@0.3,diff@0")
    summary = _summary({
        "csd": (3.0, 1.0),
        "csd+v3@0.2": (3.3, 0.95),   # eligible
        "csd+v3@0.6": (4.0, 0.80),   # fastest, under the floor
        "csd+chow@0.3": (2.9, 1.0),  # slower than lossless csd
    })  # fmt: skip
    best, lines = tune_deferral.choose(summary, sweep, 0.9)
    assert best == Deferral("v3", 0.2)
    text = "\n".join(lines)
    assert "agreement 80% < 90%" in text and "not faster than lossless csd" in text
    assert "csd+diff@0: not run" in text
    assert tune_deferral.choose(summary, sweep, 0.99)[0] is None
    assert tune_deferral.choose(summary, sweep, 0.5)[0] == Deferral("v3", 0.6)


def _fake_bench(summary: dict):
    def run_bench(dataset, **kwargs):
        assert dataset == "gsm8k" and kwargs["until_answer"] and kwargs["sample_seed"] == 0
        assert kwargs["methods"][:2] == ["ar", "csd"]
        return {"summary": summary, "prompts": [{}] * 4}

    return run_bench


def test_write_stores_a_lossy_ladder(tiny_config, tmp_path, monkeypatch):
    import csdraft.bench.run

    summary = _summary({"csd": (2.0, 1.0), "csd+v3@0.4": (2.5, 1.0)})
    monkeypatch.setattr(csdraft.bench.run, "run_bench", _fake_bench(summary))
    config = tmp_path / "c.yaml"
    config.write_text(tiny_config.read_text())
    args = dict(ladder="tiny", config=config, data=None, limit=4, seed=0, min_agreement=0.9,
                sweep="v3@0.4", until_answer=16, write_name=None, out=None)  # fmt: skip
    assert tune_deferral.run_tune_deferral(write=True, **args) == 0
    assert tune_deferral.run_tune_deferral(write=True, **args) == 0  # a second name, -2
    ladders = load_ladders(config)
    for name in ("tiny-lossy-v3-0.4", "tiny-lossy-v3-0.4-2"):
        spec = ladders[name]
        assert spec.target.deferral == Deferral("v3", 0.4) and not spec.lossless
        assert spec.description.startswith("LOSSY")
    assert ladders["tiny"].lossless


def test_nothing_written_without_a_winner(tiny_config, tmp_path, monkeypatch, capsys):
    import csdraft.bench.run

    summary = _summary({"csd": (2.0, 1.0), "csd+v3@0.4": (2.5, 0.5)})
    monkeypatch.setattr(csdraft.bench.run, "run_bench", _fake_bench(summary))
    config = tmp_path / "c.yaml"
    config.write_text(tiny_config.read_text())
    before = config.read_text()
    code = tune_deferral.run_tune_deferral(
        ladder="tiny", config=config, data=None, limit=4, seed=0, min_agreement=0.9,
        sweep="v3@0.4", until_answer=16, write=True, write_name=None, out=None,
    )  # fmt: skip
    assert code == 0 and config.read_text() == before
    assert "no lossy setting" in capsys.readouterr().out


def test_a_real_sweep_on_the_tiny_ladder(tiny_config, gsm8k_file, tmp_path):
    out = tmp_path / "t.json"
    code = tune_deferral.run_tune_deferral(
        ladder="tiny", config=tiny_config, data=gsm8k_file, limit=2, seed=0, min_agreement=0.0,
        sweep="v3@0.5,chow@0.5", until_answer=8, write=False, write_name=None, out=out,
    )  # fmt: skip
    assert code == 0 and out.exists() and out.with_suffix(".png").exists()


def test_refuses_bad_input(tiny_config):
    with pytest.raises(UsageError, match="--write"):
        tune_deferral.run_tune_deferral(
            ladder="tiny", config=tiny_config, data=None, limit=2, seed=0, min_agreement=0.9,
            sweep=None, until_answer=8, write=False, write_name="x", out=None,
        )  # fmt: skip
