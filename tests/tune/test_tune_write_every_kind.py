"""Issue 37: tune writes every kind of ladder the spec allows (lossy, trees, windows, vocab,
several drafters, drafters dropped), and after each write the whole config (shipped ladders and
the user's file) reads back with the written ladder equal to what was written."""

from __future__ import annotations

import os

import pytest
import yaml

from csdraft.engine.deferral import Deferral
from csdraft.engine.tree import TreeSettings
from csdraft.errors import CsdraftError, UsageError
from csdraft.ladder import add_ladder, load_ladders, parse_config
from csdraft.spec import LadderSpec
from csdraft.tune.search import Candidate
from csdraft.tune.write import tuned_spec, write_winner

K3 = ((4, 2, 1), (0, 3, 1), (0, 0, 2))


@pytest.fixture
def user(tmp_path, monkeypatch):
    """The user config (CSDRAFT_CONFIG), not yet written."""
    path = tmp_path / "conf" / "cascades.yaml"
    monkeypatch.setenv("CSDRAFT_CONFIG", str(path))
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return path


def ladder(**per_rung) -> LadderSpec:
    """big <- mid <- small <- max-gram, each rung with ``per_rung[name]`` settings."""
    rungs = [
        {"name": "big", "model": "org/big"},
        {"name": "mid", "model": "org/mid"},
        {"name": "small", "model": "org/small"},
        {"kind": "max-gram", "max_ngram": 4},
    ]
    for r in rungs:
        r.update(per_rung.get(r.get("name", "max-gram"), {}))
    text = yaml.safe_dump({"src": {"rungs": rungs, "k_matrix": [list(r) for r in K3]}})
    return parse_config(text, "src.yaml")["src"]


LOSSY = ladder(
    big={"deferral": {"rule": "opt", "alpha": 0.1}}, mid={"deferral": {"rule": "v2", "alpha": 0.3}}
)
KINDS = {
    # name: (ladder, candidate)
    "lossy": (LOSSY, Candidate(K3, 1.0)),
    "lossy-drops-mid": (LOSSY, Candidate(((0, 3, 2), (0, 0, 0), (0, 0, 2)), 1.0, 0.3)),
    "lossy-drops-both": (LOSSY, Candidate(((0, 0, 5), (0, 0, 0), (0, 0, 0)))),
    "tree": (ladder(), Candidate(((4, 0, 2), (0, 0, 0), (0, 0, 0)), tree=TreeSettings(extend=2))),
    "windows": (ladder(mid={"window": 64}, small={"window": 16}), Candidate(K3, (1.5, 1.0))),
    "vocab": (ladder(mid={"vocab": 40}), Candidate(((3, 2, 0), (0, 2, 0), (0, 0, 0)))),
    "several": (ladder(), Candidate(K3, (2.0, 1.5), (0.2, 0.6))),
    "drops-mid": (ladder(mid={"window": 8}), Candidate(((0, 3, 1), (0, 0, 0), (0, 0, 2)))),
}


def test_every_kind_writes_and_the_whole_config_reads_back(user):
    written: dict[str, LadderSpec] = {}
    for kind, (spec, cand) in KINDS.items():
        path, name = write_winner(spec, cand, kind, None)
        assert (path, name) == (user, kind)
        ladders = load_ladders()  # the shipped ladders and the whole user file
        assert "qwen-coder-cpu" in ladders, kind
        written[kind] = tuned_spec(spec, cand, kind)
        for done, want in written.items():  # every earlier write still reads the same
            assert ladders[done] == want, done
        assert os.listdir(user.parent) == ["cascades.yaml"], kind  # no temporary file left
    assert list(load_ladders(user)) == list(KINDS)


def test_what_each_kind_writes(user):
    for kind, (spec, cand) in KINDS.items():
        write_winner(spec, cand, kind, None)
    got = load_ladders()
    assert got["lossy"].description.startswith("LOSSY (big: opt alpha=0.1; mid: v2 alpha=0.3)")
    assert got["lossy"].rung("mid").deferral == Deferral("v2", 0.3)
    # The drafter dropped, its deferral goes with it; the target's stays.
    dropped = got["lossy-drops-mid"]
    assert dropped.rung_names == ["big", "small", "max-gram"]
    assert dropped.k_matrix == ((3, 2), (0, 2))
    assert dropped.description.startswith("LOSSY (big: opt alpha=0.1):")
    assert [r.deferral for r in dropped.rungs] == [Deferral("opt", 0.1), None, None]
    assert dropped.rung("small").min_confidence == 0.3
    assert got["lossy-drops-both"].rung_names == ["big", "max-gram"]
    assert got["lossy-drops-both"].k_matrix == ((5,),)
    assert got["tree"].target.tree == TreeSettings(extend=2)
    assert got["tree"].rung_names == ["big", "mid", "max-gram"]
    assert got["windows"].rung("mid").window == 64 and got["windows"].rung("small").window == 16
    assert [d.lenience for d in got["windows"].drafters] == [1.5, 1.0]
    assert got["vocab"].rung("mid").vocab == 40 and got["vocab"].rung_names == [
        "big",
        "mid",
        "small",
    ]
    assert [d.min_confidence for d in got["several"].drafters] == [0.2, 0.6]
    assert got["drops-mid"].rung_names == ["big", "small", "max-gram"]
    for kind in ("tree", "windows", "vocab", "several", "drops-mid"):
        assert got[kind].lossless and "LOSSY" not in got[kind].description, kind


def test_a_transformed_spec_is_added_and_reads_back(user):
    spec = ladder().with_rung("mid", window=32).with_drafters(min_confidence=0.5)
    spec = spec.keep(["mid", "max-gram"], [[3, 1], [0, 2]]).replace(name="mine")
    add_ladder(user, spec, load_ladders())
    assert load_ladders()["mine"] == spec
    with pytest.raises(CsdraftError, match="already known"):
        add_ladder(user.parent / "other.yaml", spec.replace(name="qwen-coder"), load_ladders())
    assert not (user.parent / "other.yaml").exists()


def test_a_config_with_a_broken_ladder_is_left_as_it_is(user):
    user.parent.mkdir()
    user.write_text("broken:\n  rungs: [{name: big, model: org/big, lenience: 2}]\n")
    before = user.read_bytes()
    with pytest.raises(UsageError) as error:
        write_winner(ladder(), Candidate(K3), "new", None)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{user}: ladder 'broken': "), message
    assert user.read_bytes() == before
    assert os.listdir(user.parent) == ["cascades.yaml"]


def test_a_failed_replace_leaves_the_old_file_and_no_temporary(user, monkeypatch):
    write_winner(ladder(), Candidate(K3), "first", None)
    before = user.read_bytes()

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(CsdraftError, match="cannot write .*No space left on device"):
        write_winner(ladder(), Candidate(K3), "second", None)
    assert user.read_bytes() == before
    assert os.listdir(user.parent) == ["cascades.yaml"]
    monkeypatch.undo()
    assert list(load_ladders(user)) == ["first"]
