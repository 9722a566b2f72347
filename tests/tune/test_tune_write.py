"""Tests for csdraft.tune.write: the tuned ladder keeps only the rungs it uses, and writing
never overwrites a ladder."""

from __future__ import annotations

import pytest
from tune_helpers import spec_with

from csdraft import tune
from csdraft.errors import CsdraftError
from csdraft.ladder import add_ladder, parse_config


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CSDRAFT_CONFIG", str(tmp_path / "user-cascades.yaml"))


def test_tuned_spec_drops_unused_rungs():
    spec = spec_with(2, True)
    cand = tune.Candidate(((3, 0, 2), (0, 0, 0), (0, 0, 0)), 2.0)
    new = tune.tuned_spec(spec, cand, "slim")
    assert new.name == "slim"
    assert [d.name for d in new.drafters] == ["d1"]
    assert new.maxgram is not None
    assert new.k_matrix == ((3, 2), (0, 0))
    assert [d.lenience for d in new.drafters] == [2.0]
    floored = tune.tuned_spec(
        spec, tune.Candidate(((3, 0, 2), (0, 2, 0), (0, 0, 0)), 1.0, 0.4), "f"
    )
    assert [d.min_confidence for d in floored.drafters] == [0.4, 0.4]
    per_drafter = tune.tuned_spec(
        spec, tune.Candidate(((0, 3, 0), (0, 0, 0), (0, 0, 0)), 1.0, (0.2, 0.6)), "d2"
    )
    assert [d.name for d in per_drafter.drafters] == ["d2"] and per_drafter.maxgram is None
    assert [d.min_confidence for d in per_drafter.drafters] == [0.6]


def test_write_never_clobbers(tmp_path):
    cfg = tmp_path / "ladders.yaml"
    spec = spec_with(1, True).with_settings(k_matrix=[[4, 2], [0, 6]], lenience=1.0)
    add_ladder(cfg, spec.replace(name="synthetic-tuned"))
    before = cfg.read_text()
    with pytest.raises(CsdraftError, match="already has a ladder"):
        add_ladder(cfg, spec.replace(name="synthetic-tuned"))
    cand = tune.Candidate(((3, 3), (0, 5)), 1.0)
    path, name = tune.write_winner(spec, cand, None, cfg)
    assert (path, name) == (cfg, "synthetic-tuned-2")
    _, name3 = tune.write_winner(spec, cand, None, cfg)
    assert name3 == "synthetic-tuned-3"
    _, mine = tune.write_winner(spec, cand, "synthetic-tuned", cfg)
    assert mine == "synthetic-tuned-4"
    assert cfg.read_text().startswith(before)  # appended, nothing rewritten
    ladders = parse_config(cfg.read_text(), str(cfg))
    assert ladders["synthetic-tuned"].k_matrix == ((4, 2), (0, 6))
    assert ladders["synthetic-tuned-2"].k_matrix == ((3, 3), (0, 5))
    assert tune.unique_name("x", ["x", "x-2"]) == "x-3"
