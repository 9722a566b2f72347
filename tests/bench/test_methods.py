"""bench methods: which apply to a ladder, their k-matrices, parsing --methods."""

from __future__ import annotations

import pytest

from csdraft.bench.methods import METHODS, Settings, method, parse_methods
from csdraft.errors import UsageError
from csdraft.ladder import get_ladder, parse_ladder


def test_methods_skip_what_does_not_apply():
    lookup = parse_ladder("l", {"target": "x", "maxgram": True, "k_matrix": [[5]]})
    sd_only = parse_ladder("s", {"target": "x", "drafters": ["y"], "k_matrix": [[4]]})
    s = Settings()
    skipped = {n for n, m in METHODS.items() if m.skip_reason(lookup, s)}
    # llama.cpp: target "x" is no GGUF
    assert skipped == {
        "sd", "csd-vertical", "csd-horizontal", "csd-tree", "hf-assisted", "hf-assisted-universal",
        "llama.cpp",
    }  # fmt: skip
    assert "csd itself" in METHODS["csd-vertical"].skip_reason(lookup, s)
    skipped = {n for n, m in METHODS.items() if m.skip_reason(sd_only, s)}
    assert skipped == {"pld", "csd-vertical", "csd-horizontal", "llama.cpp"}
    assert METHODS["sd"].config(sd_only, Settings(sd_block=7))["k_matrix"] == [[7]]
    tree = METHODS["csd-tree"].config(sd_only, s)
    assert tree["k_matrix"] == [[4]] and tree["tree"] == [
        {"budget": 12, "top_k": 1, "min_prob": 0.8, "extend": 3}
    ]


def test_parse_methods():
    assert parse_methods(None)[0] == "ar" and "hf-lookup" in parse_methods(None)
    assert parse_methods("csd, sd,csd") == ["ar", "csd", "sd"]
    with pytest.raises(UsageError, match="unknown ladder 'mine'"):
        parse_methods("csd,csd@mine")  # checked before any loading
    with pytest.raises(UsageError, match="unknown nope"):
        parse_methods("ar,nope")


def test_tree_methods_name_their_settings(tiny_config):
    assert parse_methods("csd-tree@12/1/0.5") == ["ar", "csd-tree@12/1/0.5"]
    spec = get_ladder("tiny", tiny_config)
    config = method("csd-tree@12/1/0.5").config(spec, Settings())
    assert config["tree"] == [{"budget": 12, "top_k": 1, "min_prob": 0.5, "extend": 0}]
    config = method("csd-tree@16/2/0.8/4").config(spec, Settings())
    assert config["tree"] == [{"budget": 16, "top_k": 2, "min_prob": 0.8, "extend": 4}]
    assert "extends every branch by up to 4" in method("csd-tree@16/2/0.8/4").description
    for bad in ("csd-tree@12/1", "csd-tree@12/1/0.5/3/1", "csd-tree@12/1/0.5/x"):
        with pytest.raises(UsageError, match="BUDGET/TOP_K/MIN_PROB"):
            parse_methods(bad)
    with pytest.raises(UsageError, match="extend must be >= 0"):
        parse_methods("csd-tree@12/1/0.5/-1")
    with pytest.raises(UsageError, match="min_prob must be in"):
        parse_methods("csd-tree@12/1/2")


def test_window_methods(tiny_config):
    assert parse_methods("csd-window@256") == ["ar", "csd-window@256"]
    spec = get_ladder("tiny", tiny_config)
    plan = method("csd-window@256").plan(spec, Settings())
    assert [d.window for d in plan.drafters] == [256]
    assert method("csd-window@256").config(spec, Settings())["spec"]["rungs"][1]["window"] == 256
    with pytest.raises(UsageError, match="csd-window@TOKENS"):
        parse_methods("csd-window@0")


def test_vocab_methods(tiny_config):
    assert parse_methods("csd-vocab@64,csd-vocab@all") == ["ar", "csd-vocab@64", "csd-vocab@all"]
    spec = get_ladder("tiny", tiny_config)
    assert method("csd-vocab@64").config(spec, Settings())["spec"]["rungs"][1]["vocab"] == 64
    assert method("csd-vocab@all").plan(spec, Settings()).drafters[0].vocab is None
    for bad in ("csd-vocab@0", "csd-vocab@x", "csd-vocab@"):
        with pytest.raises(UsageError, match="csd-vocab@IDS"):
            parse_methods(bad)


def test_branch_methods(tiny_config):
    assert parse_methods("csd-branch@3") == ["ar", "csd-branch@3"]
    spec = get_ladder("tiny", tiny_config)
    config = method("csd-branch@3").config(spec, Settings())
    assert config["spec"]["rungs"][-1]["branches"] == 3
    assert config["k_matrix"] == [list(r) for r in spec.k_matrix]
    with pytest.raises(UsageError, match="csd-branch@BRANCHES"):
        parse_methods("csd-branch@x")
    sd_only = parse_ladder("s", {"target": "x", "drafters": ["y"], "k_matrix": [[4]]})
    assert "Max-Gram" in method("csd-branch@2").skip_reason(sd_only, Settings())


def test_another_ladder_on_the_same_models(tiny_config):
    spec = get_ladder("tiny", tiny_config)
    s = Settings()
    slow = method("csd@tiny-slow", tiny_config)
    assert slow.skip_reason(spec, s) is None
    config = slow.config(spec, s)
    assert config["rungs"] == ["tiny-t", "tiny-d", "max-gram"]
    assert config["k_matrix"] == [[2, 0], [0, 2]] and config["lossless"] is True
    assert [(d.lenience, d.min_confidence) for d in slow.plan(spec, s).drafters] == [(1.0, 0.3)]
    lookup = method("csd@tiny-lookup", tiny_config).plan(spec, s)  # Max-Gram is settings
    assert lookup.rung_names == ["tiny-t", "max-gram"] and lookup.maxgram.max_ngram == 8
    recycle = method("csd@tiny-recycle", tiny_config).plan(spec, s)  # a statistical rung as is
    assert [r.kind for r in recycle.rungs][-1] == "recycle" and recycle.maxgram is None
    assert recycle.rung_names[:2] == ["tiny-t", "tiny-d"]
    assert "another target" in method("csd@tiny-swapped", tiny_config).skip_reason(spec, s)
    with pytest.raises(UsageError, match="nope"):
        method("csd@nope", tiny_config)
