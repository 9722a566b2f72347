"""The ladder spec: the rung-list shape round-trips, the old shape reads to the same spec, every
rule of ``validate`` is one line naming the rung (for the YAML and for every transform alike),
and ``build_cascade`` over sub-ladders keeps the target's own greedy output."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml
from engine_helpers import reference_greedy

from csdraft.engine.deferral import Deferral
from csdraft.engine.tree import TreeSettings
from csdraft.errors import UsageError
from csdraft.ladder import ladder_to_yaml, load_ladders, parse_config, parse_ladder
from csdraft.spec import GenerationDefaults, LadderSpec, RungSpec, validate

K3 = [[4, 2, 1], [0, 3, 1], [0, 0, 2]]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    """Own cache and user config, no hub."""
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CSDRAFT_CONFIG", str(tmp_path / "user-cascades.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def rungs(**per_rung) -> list[dict]:
    """big <- mid <- small <- max-gram in the rung-list shape; ``per_rung``: settings by name."""
    out = [
        {"name": "big", "model": "org/big"},
        {"name": "mid", "model": "org/mid"},
        {"name": "small", "model": "org/small"},
        {"kind": "max-gram", "max_ngram": 4},
    ]
    for r in out:
        r.update(per_rung.get(r.get("name", "max-gram"), {}))
    return out


def read(body: dict, name: str = "tiny") -> LadderSpec:
    """One ladder through YAML text, as a config file gives it."""
    return parse_config(yaml.safe_dump({name: body}, sort_keys=False), "cfg.yaml")[name]


def base() -> LadderSpec:
    return read({"rungs": rungs(), "k_matrix": K3, "dtype": "float32"})


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 600, message
    assert error.value.exit_code == 2
    return message


# ------------------------------------------------------------------------------ (a) round trip


def ladders_with_every_setting(bigram: Path) -> dict[str, dict]:
    trees = {  # token trees: extended at the target, plain at mid; Max-Gram branches
        "rungs": rungs(
            big={"tree": {"budget": 12, "top_k": 3, "min_prob": 0.05, "extend": 2}},
            mid={"window": 128, "vocab": 40, "min_confidence": 0.25, "tree": {"top_k": 3}},
            small={"deferral": {"rule": "chow", "alpha": 0}, "dtype": "int8"},
            **{
                "max-gram": {
                    "max_ngram": 5,
                    "min_ngram": 2,
                    "branches": 2,
                    "bigram_text": str(bigram),
                }
            },
        ),
        "k_matrix": K3,
        "dtype": "float32",
        "generation": {
            "max_new_tokens": 7,
            "temperature": 0.5,
            "top_k": 3,
            "top_p": 0.9,
            "stop": ["####", "\n\n"],
            "seed": 11,
        },
        "description": "every lossless setting",
    }
    lossy = {  # a lossy target rule, a lenient mid, a drafter floor
        "rungs": rungs(
            big={"deferral": {"rule": "opt", "alpha": 0.1}},
            mid={"lenience": 2.5, "min_confidence": 0.5},
            small={"deferral": {"rule": "v2", "alpha": 0.2}, "window": 16},
        ),
        "k_matrix": K3,
        "generation": {"stop": "####"},
    }
    return {"trees": trees, "lossy": lossy}


@pytest.mark.parametrize("which", ["trees", "lossy"])
def test_every_setting_round_trips(tmp_path, which):
    bigram = tmp_path / "bigram.txt"
    bigram.write_text("a b c a b d\n")
    spec = read(ladders_with_every_setting(bigram)[which])
    again = parse_ladder("tiny", yaml.safe_load(yaml.safe_dump(ladder_to_yaml(spec))))
    assert again == spec
    if which == "trees":
        assert spec.target.tree == TreeSettings(budget=12, top_k=3, min_prob=0.05, extend=2)
        mid = spec.rung("mid")
        assert (mid.window, mid.vocab, mid.min_confidence) == (128, 40, 0.25)
        assert mid.tree == TreeSettings(top_k=3) and mid.dtype == "float32"
        assert spec.rung("small").deferral == Deferral("chow", 0.0)
        assert spec.rung("small").dtype == "int8" and spec.lossless
        mg = spec.maxgram
        assert (mg.max_ngram, mg.min_ngram, mg.branches) == (5, 2, 2)
        assert mg.bigram_text == str(bigram)
        assert spec.generation == GenerationDefaults(7, 0.5, 3, 0.9, ("####", "\n\n"), 11)
    else:
        assert spec.target.deferral == Deferral("opt", 0.1) and not spec.lossless
        assert spec.rung("mid").lenience == 2.5 and spec.rung("small").window == 16
        assert spec.generation.stop == ("####",)  # one stop text, not split into characters


def test_a_changed_setting_does_not_read_back_equal(tmp_path):
    """The round trip compares something: a changed rung differs."""
    spec = base()
    raw = ladder_to_yaml(spec)
    raw["rungs"][1]["min_confidence"] = 0.5
    assert parse_ladder("tiny", raw) != spec


# ------------------------------------------------------------------------------ (b) old == new


def test_the_old_shape_reads_as_the_new_shape():
    old = {
        "target": {"model": "org/big", "name": "big"},
        "drafters": [{"model": "org/mid", "name": "mid"}, {"model": "org/small", "name": "small"}],
        "maxgram": {"max_ngram": 4},
        "k_matrix": K3,
        "dtype": "float32",
        "lenience": [1.0, 2.0],
        "min_confidence": [0.3, 0.4],
        "tree": [{"budget": 8}, {"top_k": 3}, None],
        "deferral": [None, None, {"rule": "chow", "alpha": 0}],
        "generation": {"stop": ["####"]},
    }
    new = {
        "rungs": rungs(
            big={"tree": {"budget": 8}},
            mid={"min_confidence": 0.3, "tree": {"top_k": 3}},
            small={
                "lenience": 2.0,
                "min_confidence": 0.4,
                "deferral": {"rule": "chow", "alpha": 0},
            },
        ),
        "k_matrix": K3,
        "dtype": "float32",
        "generation": {"stop": ["####"]},
    }
    assert read(old) == read(new)
    assert read(old).rung("small").lenience == 2.0
    # One value for every drafter, one mapping for the target: the same as spelled out.
    short = {**old, "lenience": 2.0, "tree": {"budget": 8}, "deferral": None}
    spelled = rungs(
        big={"tree": {"budget": 8}},
        mid={"lenience": 2.0, "min_confidence": 0.3},
        small={"lenience": 2.0, "min_confidence": 0.4},
    )
    assert read(short) == read({**new, "rungs": spelled})
    assert read(short) != read(new)


# ------------------------------------------------------------------------------ (c) validate


def change(spec: LadderSpec, who: str, /, **settings) -> LadderSpec:
    """``spec`` with rung ``who`` changed, unvalidated (what any transform could produce)."""
    return dataclasses.replace(
        spec,
        rungs=tuple(dataclasses.replace(r, **settings) if r.name == who else r for r in spec.rungs),
    )


def gen(spec: LadderSpec, **settings) -> LadderSpec:
    return dataclasses.replace(spec, generation=dataclasses.replace(spec.generation, **settings))


GGUF = {"ref": "x.gguf", "backend": "llama.cpp", "dtype": "gguf"}
OPT = Deferral("opt", 0.1)


def _two_maxgrams(s: LadderSpec) -> LadderSpec:
    extra = RungSpec(kind="max-gram", name="mg2")
    k = ((4, 2, 1, 0), (0, 3, 1, 0), (0, 0, 2, 0), (0, 0, 0, 1))
    return dataclasses.replace(s, rungs=(*s.rungs, extra), k_matrix=k)


RULES = [
    ("target window", lambda s: change(s, "big", window=64), "big: window: only drafters"),
    ("target vocab", lambda s: change(s, "big", vocab=64), "big: vocab: only drafters"),
    ("target lenience", lambda s: change(s, "big", lenience=2.0), "big: lenience and min_conf"),
    ("target floor", lambda s: change(s, "big", min_confidence=0.5), "big: lenience and min_conf"),
    ("duplicate names", lambda s: change(s, "mid", name="big"), "rung names must be unique"),
    (
        "max-gram above a model",
        lambda s: dataclasses.replace(s, rungs=(s.rungs[0], s.rungs[3], *s.rungs[1:3])),
        "statistical rungs (max-gram) go below every model rung",
    ),
    pytest.param(
        "unknown kind",
        lambda s: change(s, "max-gram", kind="bogus"),
        "max-gram: kind: expected",
    ),
    ("max-gram key on a model", lambda s: change(s, "mid", max_ngram=4), "mid: max_ngram: not a"),
    ("model key on max-gram", lambda s: change(s, "max-gram", lenience=2.0), "max-gram: lenience"),
    pytest.param(
        "unknown backend",
        lambda s: change(s, "mid", backend="vllm"),
        "mid: ",
    ),
    ("dtype not run", lambda s: change(s, "mid", dtype="fp8"), "mid: dtype: backend transformers"),
    (
        "llama.cpp on cuda",
        lambda s: change(s, "small", **GGUF, device="cuda"),
        "small: backend llama.cpp runs on the CPU",
    ),
    (
        "vocab on llama.cpp",
        lambda s: change(s, "small", **GGUF, vocab=8),
        "small: vocab: backend llama.cpp has no draft vocabulary",
    ),
    (
        "tree on llama.cpp",
        lambda s: change(s, "small", **GGUF, tree=TreeSettings()),
        "small: tree: backend llama.cpp does not score token trees",
    ),
    (
        "tree and lenience",
        lambda s: change(s, "mid", tree=TreeSettings(), lenience=2.0),
        "mid: a lenient rung reviews linear drafts",
    ),
    (
        "lenient and lossy",
        lambda s: change(s, "mid", lenience=2.0, deferral=OPT),
        "mid: lenience 2 and deferral opt",
    ),
    (
        "deferral without alpha",
        lambda s: change(s, "big", deferral={"rule": "opt"}),
        "big: deferral: opt needs an alpha",
    ),
    ("chow alpha 5", lambda s: change(s, "big", deferral=Deferral("chow", 5.0)), "big: deferral"),
    ("lenience inf", lambda s: change(s, "mid", lenience=math.inf), "mid: lenience: expected"),
    ("floor 1.0", lambda s: change(s, "mid", min_confidence=1.0), "mid: min_confidence: expected"),
    ("a max-gram's k-matrix row", _two_maxgrams, "k_matrix row 4: max-gram cannot review"),
    (
        "branches under a lenient reviewer",
        lambda s: change(change(s, "max-gram", branches=2), "mid", lenience=2.0),
        "mid reviews max-gram's token trees: set its lenience to 1",
    ),
    (
        "tree extend without a model first",
        lambda s: dataclasses.replace(
            change(s, "big", tree=TreeSettings(extend=2)),
            k_matrix=((0, 0, 3), (0, 3, 1), (0, 0, 2)),
        ),
        "big: tree extend needs a model that scores token trees first",
    ),
    (
        "trees and a lossy rule",
        lambda s: change(change(s, "big", tree=TreeSettings()), "mid", deferral=OPT),
        "and a lossy rule",
    ),
    (
        "min_ngram above max_ngram",
        lambda s: change(s, "max-gram", min_ngram=5),
        "max-gram: need min_ngram <= max_ngram, got 5 > 4",
    ),
    (
        "bigram_text missing",
        lambda s: change(s, "max-gram", bigram_text="/no/such/bigram.txt"),
        "max-gram: bigram_text: /no/such/bigram.txt not found",
    ),
    ("max_new_tokens 0", lambda s: gen(s, max_new_tokens=0), "generation: max_new_tokens"),
    ("max_new_tokens abc", lambda s: gen(s, max_new_tokens="abc"), "generation: max_new_tokens"),
    ("temperature nan", lambda s: gen(s, temperature=math.nan), "generation: temperature"),
    ("seed x", lambda s: gen(s, seed="x"), "generation: seed"),
    ("top_p 0", lambda s: gen(s, top_p=0), "generation: top_p must be in (0, 1]"),
    ("top_k -1", lambda s: gen(s, top_k=-1), "generation: top_k: expected a whole number >= 0"),
    ("stop as text", lambda s: gen(s, stop="####"), "generation: stop: expected a list"),
]


@pytest.mark.parametrize("rule, make, words", RULES, ids=[str(r[0]) for r in RULES])
def test_every_rule_is_one_line_naming_the_rung(rule, make, words):
    spec = base()
    assert validate(spec) == spec  # the base keeps every rule
    with pytest.raises(UsageError) as error:
        validate(make(spec))
    message = one_line(error)
    assert message.startswith("ladder 'tiny': ") and words in message, message


def test_a_stop_text_in_the_yaml_is_one_stop():
    spec = read({"rungs": rungs(), "k_matrix": K3, "generation": {"stop": "####"}})
    assert spec.generation.stop == ("####",)


# ------------------------------------------------------------------------------ (d) transforms


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: transforms are refused before a model loads."""
    import importlib

    load = importlib.import_module("csdraft.models.load")

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(load, "load", refuse)


@pytest.mark.usefixtures("no_model_loads")
@pytest.mark.parametrize(
    "transform, words",
    [
        (lambda s: s.with_rung("mid", lenience=0.5), "ladder 'tiny': mid: lenience: expected"),
        (lambda s: s.with_rung("nope", lenience=2.0), "ladder 'tiny' has no rung 'nope'"),
        (lambda s: s.keep(["mid"], [[1, 1], [0, 1]]), "ladder 'tiny': k_matrix: expected a 1x1"),
        (lambda s: s.keep(["mid", "max-gram"], [[1]]), "ladder 'tiny': k_matrix: expected a 2x2"),
        (
            lambda s: s.with_rung("big", tree=TreeSettings()).with_settings(
                deferral=Deferral("opt", 0.1)
            ),
            "command line: token trees (big) and a lossy rule",
        ),
        (
            lambda s: s.with_drafters(min_confidence=1.5),
            "ladder 'tiny': mid: min_confidence: expected a number in [0, 1)",
        ),
        (
            lambda s: s.with_settings(lenience=[2.0, 0.5]),
            "command line: small: lenience: expected a finite number >= 1, got 0.5",
        ),
        (
            lambda s: s.with_generation("request", seed=2**64),
            "request: generation: seed: expected a whole number below 2**64",
        ),
    ],
)
def test_transforms_are_validated(transform, words):
    with pytest.raises(UsageError) as error:
        transform(base())
    assert words in one_line(error)


def test_transforms_change_only_what_they_say():
    spec = base()
    lenient = spec.with_rung("mid", lenience=2)
    assert lenient.rung("mid").lenience == 2.0 and isinstance(lenient.rung("mid").lenience, float)
    assert lenient.rungs[0] == spec.rungs[0] and lenient.rungs[2:] == spec.rungs[2:]
    sub = spec.keep(["small", "max-gram"], [[2, 1], [0, 3]])
    assert sub.rung_names == ["big", "small", "max-gram"] and sub.k_matrix == ((2, 1), (0, 3))
    floors = spec.with_drafters(min_confidence=0.4)
    assert [r.min_confidence for r in floors.rungs] == [0.0, 0.4, 0.4, 0.0]


# ------------------------------------------------------------------------------ (e) names


def test_a_ladder_named_twice_in_one_file():
    body = yaml.safe_dump({"rungs": rungs(), "k_matrix": K3}, default_flow_style=True, width=10**6)
    assert body.count("\n") == 1
    text = f"tiny: {body}other: {body}tiny: {body}"
    with pytest.raises(UsageError) as error:
        parse_config(text, "cfg.yaml")
    assert one_line(error) == "cfg.yaml: 'tiny' is given twice (lines 1 and 3)"


def test_a_user_ladder_named_like_a_shipped_one(tmp_path, monkeypatch):
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"qwen-coder": {"rungs": rungs(), "k_matrix": K3}}))
    monkeypatch.setenv("CSDRAFT_CONFIG", str(user))
    with pytest.raises(UsageError) as error:
        load_ladders()
    message = one_line(error)
    assert message.startswith(f"{user}: ladder 'qwen-coder' "), message
    assert "csdraft/cascades.yaml" in message
    user.write_text(yaml.safe_dump({"mine": {"rungs": rungs(), "k_matrix": K3}}))
    ladders = load_ladders()
    assert "mine" in ladders and "qwen-coder" in ladders


# ------------------------------------------------------------------------------ (f) the engine


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A loaded tiny ladder (target, two drafters, Max-Gram) and its target's greedy decoding."""
    from tiny_ladder import make_tiny_ladder
    from transformers import AutoModelForCausalLM

    from csdraft.api import Ladder

    root = tmp_path_factory.mktemp("spec-ladder")
    config = make_tiny_ladder(root, drafters=2, maxgram=True)
    spec = load_ladders(config)["tiny"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CSDRAFT_HOME", str(root / "home"))
        env.setenv("HF_HUB_OFFLINE", "1")
        ladder = Ladder.load(spec, progress=False)
    target = AutoModelForCausalLM.from_pretrained(root / "target")
    prompts = [[5, 9, 12, 5, 9, 30], [40, 41, 42, 40, 41]]

    want = {tuple(p): reference_greedy(target, p, 14, eos_id=1) for p in prompts}
    assert all(len(ids) == 14 for ids in want.values())  # no early end: every token compared
    return ladder, want


@pytest.mark.parametrize(
    "make",
    [
        lambda s: s,
        lambda s: s.keep(["tiny-d2"], [[3]]),
        lambda s: s.keep(["tiny-d1", "max-gram"], [[2, 3], [0, 4]]),
        lambda s: s.keep(["max-gram"], [[5]]),
        lambda s: s.with_drafters(min_confidence=0.6),
        lambda s: s.keep(["tiny-d1", "tiny-d2"], [[4, 0], [0, 2]]).with_settings(
            min_confidence=[0.3, 0.9]
        ),
    ],
    ids=["whole", "keep-d2", "keep-d1-maxgram", "keep-maxgram", "floor", "keep-floors"],
)
def test_sub_ladders_give_the_targets_greedy_output(tiny, make):
    ladder, want = tiny
    spec = make(ladder.spec)
    for prompt, ids in want.items():
        got = ladder.generate(list(prompt), 14, spec=spec).token_ids
        assert got == ids, (spec.rung_names, prompt)
