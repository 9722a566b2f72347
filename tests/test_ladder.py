"""cascades.yaml validation: every mistake is one line naming the file, the ladder and the key."""

from __future__ import annotations

import pytest
import yaml

from csdraft.engine.tree import TreeSettings
from csdraft.errors import UsageError
from csdraft.ladder import (
    LadderSpec,
    add_ladder,
    default_config_text,
    ladder_to_yaml,
    load_ladders,
    parse_config,
    parse_ladder,
)

SOURCE = "cfg.yaml"


def ladder(**changes) -> dict:
    """A valid two-drafter ladder with Max-Gram, as YAML would give it, with ``changes``."""
    raw = {
        "target": {"model": "org/big", "name": "big"},
        "drafters": [{"model": "org/mid", "name": "mid"}, "org/small"],
        "maxgram": {"max_ngram": 4},
        "k_matrix": [[4, 2, 1], [0, 3, 1], [0, 0, 2]],
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not ...}


def config(**changes) -> str:
    return yaml.safe_dump({"tiny": ladder(**changes)}, sort_keys=False)


def usage_error(text: str) -> str:
    """The message ``parse_config`` gives for ``text``, checked to be one line."""
    with pytest.raises(UsageError) as info:
        parse_config(text, SOURCE)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    assert message.startswith(f"{SOURCE}: ")
    assert info.value.exit_code == 2
    return message


def test_a_valid_ladder():
    spec = parse_config(config(lenience=[2.0, 1.5], min_confidence=0.3), SOURCE)["tiny"]
    assert spec.rung_names == ["big", "mid", "small", "max-gram"]
    assert spec.drafting_rungs == 3
    assert spec.k_matrix == ((4, 2, 1), (0, 3, 1), (0, 0, 2))
    assert [d.lenience for d in spec.drafters] == [2.0, 1.5]
    assert [d.min_confidence for d in spec.drafters] == [0.3, 0.3]
    assert spec.target.lenience == 1.0 and spec.target.min_confidence == 0.0
    assert spec.maxgram.max_ngram == 4 and spec.maxgram.min_ngram == 1
    assert spec.target.dtype == "bfloat16" and spec.target.backend == "transformers"
    assert len(spec.explain_k_matrix()) == 3
    # A k-matrix may be written as text too.
    text = parse_config(config(k_matrix="4,2,1;0,3,1;0,0,2"), SOURCE)["tiny"]
    assert text.k_matrix == spec.k_matrix


def test_round_trip_through_yaml():
    spec = parse_config(config(lenience=[2.0, 1.5], dtype="float32"), SOURCE)["tiny"]
    again = parse_ladder("tiny", yaml.safe_load(yaml.safe_dump(ladder_to_yaml(spec))))
    assert again == spec


def test_drafter_window_round_trips():
    drafters = [{"model": "org/mid", "name": "mid", "window": 256}, "org/small"]
    spec = parse_config(config(drafters=drafters), SOURCE)["tiny"]
    assert spec.drafters[0].window == 256 and spec.target.window is None
    again = parse_ladder("tiny", yaml.safe_load(yaml.safe_dump(ladder_to_yaml(spec))))
    assert again == spec


def test_drafter_vocab_round_trips():
    drafters = [{"model": "org/mid", "name": "mid", "vocab": 65536}, "org/small"]
    spec = parse_config(config(drafters=drafters), SOURCE)["tiny"]
    assert spec.drafters[0].vocab == 65536 and spec.drafters[1].vocab is None
    assert spec.target.vocab is None
    again = parse_ladder("tiny", yaml.safe_load(yaml.safe_dump(ladder_to_yaml(spec))))
    assert again == spec


def test_drafts_below_round_trips_and_is_checked():
    spec = parse_config(config(drafts_below=4), SOURCE)["tiny"]
    assert spec.drafts_below == 4
    assert parse_config(config(), SOURCE)["tiny"].drafts_below is None
    again = parse_ladder("tiny", yaml.safe_load(yaml.safe_dump(ladder_to_yaml(spec))))
    assert again == spec
    assert spec.keep([], []).drafts_below == 4  # a sub-ladder keeps it (no drafts: no effect)
    from csdraft.inspector import k_matrix_lines

    assert any(line.startswith("drafts_below 4: from 4 requests") for line in k_matrix_lines(spec))
    for bad in (1, 0, 2.5, True, "four"):
        message = usage_error(config(drafts_below=bad))
        assert "ladder 'tiny': drafts_below: expected a number of requests >= 2" in message


def trees(spec: LadderSpec) -> tuple:
    """Each rung's tree setting, in ladder order."""
    return tuple(r.tree for r in spec.rungs)


def test_tree_settings():
    spec = parse_config(config(), SOURCE)["tiny"]
    assert trees(spec) == (None, None, None, None)  # absent: linear drafts everywhere
    spec = parse_config(config(tree={"budget": 8}), SOURCE)["tiny"]
    assert trees(spec) == (TreeSettings(budget=8, top_k=2, min_prob=0.1), None, None, None)
    spec = parse_config(config(tree=[None, {"top_k": 3}, {}], lenience=[1.0, 1.0]), SOURCE)
    assert trees(spec["tiny"]) == (None, TreeSettings(top_k=3), TreeSettings(), None)
    extended = parse_config(config(tree={"extend": 3}), SOURCE)["tiny"]
    assert extended.target.tree == TreeSettings(extend=3)
    again = parse_ladder("tiny", yaml.safe_load(yaml.safe_dump(ladder_to_yaml(extended))))
    assert again == extended
    again = parse_ladder("tiny", yaml.safe_load(yaml.safe_dump(ladder_to_yaml(spec["tiny"]))))
    assert again == spec["tiny"]


def test_the_shipped_ladders_parse():
    ladders = parse_config(default_config_text(), "csdraft/cascades.yaml")
    assert ladders and all(isinstance(s, LadderSpec) for s in ladders.values())


def test_malformed_yaml_says_where():
    message = usage_error("tiny:\n  target: [org/big\n  drafters: []\n")
    assert "malformed YAML" in message
    assert "line 3, column" in message


def test_a_config_that_is_no_mapping():
    assert "mapping of ladder names" in usage_error("- just\n- a list\n")
    assert parse_config("", SOURCE) == {}
    assert "ladder 'tiny'" in usage_error("tiny: 3\n")


@pytest.mark.parametrize(
    "changes, key, detail",
    [
        # Unknown keys, anywhere.
        (dict(colour="red"), "unknown keys ['colour']", "allowed:"),
        (dict(drafters=[{"model": "org/mid", "size": 1}]), "rungs[1]", "unknown keys ['size']"),
        (dict(target={"model": "org/big", "tag": "x"}), "rungs[0]", "unknown keys ['tag']"),
        (dict(maxgram={"max_ngrams": 4}), "rungs[3]", "for a max-gram rung (allowed: "),
        (dict(generation={"max_tokens": 4}), "generation", "(allowed: max_new_tokens"),
        # Models.
        (dict(target=...), "target", "missing"),
        pytest.param(
            dict(target=3),
            "target",
            "model reference",
        ),
        (dict(drafters="org/mid"), "drafters", "expected a list"),
        pytest.param(
            dict(dtype="float8"),
            "dtype",
            "'float8'",
        ),
        (dict(target={"model": "org/big", "dtype": "fp8"}), "big: dtype", "not 'fp8'"),
        pytest.param(
            dict(target={"model": "org/big", "backend": "vllm"}),
            "backend",
            "'vllm'",
        ),
        pytest.param(
            dict(drafters=[{"model": "org/mid", "backend": "x"}]),
            "backend",
            "'x'",
        ),
        (dict(drafters=[{"model": "org/mid", "name": "big"}]), "names must be unique", "big"),
        (dict(target={"model": "org/big", "window": 64}), "big: window", "the target sees"),
        (dict(drafters=[{"model": "org/mid", "window": 0}]), "rungs[1] (mid): window", ">= 1"),
        (dict(drafters=[{"model": "org/mid", "window": "x"}]), "rungs[1] (mid): window", "'x'"),
        (dict(target={"model": "org/big", "vocab": 64}), "big: vocab", "only drafters have one"),
        (dict(drafters=[{"model": "org/mid", "vocab": 0}]), "rungs[1] (mid): vocab", ">= 1"),
        (dict(drafters=[{"model": "org/mid", "vocab": 1.5}]), "rungs[1] (mid): vocab", "1.5"),
        (dict(drafters=[{"model": "org/m", "name": "max-gram"}]), "must be unique", "max-gram"),
        # Max-Gram.
        (dict(maxgram={"max_ngram": 2, "min_ngram": 3}), "max-gram", "min_ngram <= max_ngram"),
        (dict(maxgram="yes"), "maxgram", "true, false or a mapping"),
        (dict(maxgram={"branches": 0}), "(max-gram): branches", "number of branches >= 1"),
        # The k-matrix.
        (dict(k_matrix=...), "k_matrix", "missing; a 3x3 matrix"),
        (dict(k_matrix=[[4, 2], [0, 3]]), "k_matrix", "expected a 3x3 upper-triangular"),
        (dict(k_matrix=[[4, 2, 1], [0, 3], [0, 0, 2]]), "k_matrix row 2", "3x3"),
        (dict(k_matrix=[[4, 2, 1], [1, 3, 1], [0, 0, 2]]), "k_matrix[1][0] = 1", "below the"),
        (dict(k_matrix=[[4, -2, 1], [0, 3, 1], [0, 0, 2]]), "k_matrix[0][1] = -2", "integers"),
        (dict(k_matrix=[[4, True, 1], [0, 3, 1], [0, 0, 2]]), "k_matrix[0][1] = True", "integers"),
        (dict(k_matrix=[[4, 2, 1.5], [0, 3, 1], [0, 0, 2]]), "k_matrix[0][2] = 1.5", "integers"),
        (dict(k_matrix=[[4, 2, 1], [0, 3, 1], [0, 0, 10**6]]), "k_matrix[2][2]", "0..1024"),
        (dict(k_matrix="4,2;0,x"), "cannot read k-matrix", "'4,2;0,x'"),
        (dict(k_matrix="[" * 100_000), "k-matrix text is 100000 characters", "write it as"),
        (dict(k_matrix="[" * 200 + "]" * 200), "k-matrix", "nested too deep"),
        (dict(k_matrix="[[[[1]]]]"), "k_matrix", "expected a 3x3"),
        (dict(k_matrix="[" * 20), "k-matrix", "nested too deep"),
        # Per-drafter settings.
        (dict(lenience=0.5), "(mid): lenience", "a finite number >= 1, got 0.5"),
        (dict(lenience=[2.0, 0.9]), "lenience", "got 0.9"),
        (dict(lenience=[2.0]), "lenience", "a list of 2"),
        (dict(lenience=True), "lenience", "got True"),
        (dict(lenience="high"), "lenience", "'high'"),
        (dict(min_confidence=1.0), "min_confidence", "in [0, 1), got 1.0"),
        (dict(min_confidence=-0.1), "min_confidence", "got -0.1"),
        (dict(min_confidence=[0.2, 0.5, 0.1]), "min_confidence", "a list of 2"),
        # Token trees.
        (dict(tree={"budget": 0}), "(big): tree", "budget must be >= 1"),
        (dict(tree={"top_k": 1.5}), "(big): tree.top_k", "a whole number of nodes"),
        pytest.param(
            dict(tree={"min_prob": 2}),
            "(big): tree.min_prob",
            "[0, 1]",
        ),
        (dict(tree={"depth": 3}), "(big): tree", "expected a mapping of budget, top_k, min_prob"),
        (dict(tree=[None, None]), "tree (one per reviewer: big, mid, small)", "a list of 3"),
        (dict(tree=[None, {}, None], lenience=2.0), "mid: a lenient rung", "set its lenience to 1"),
        (dict(tree={"extend": -1}), "(big): tree.extend", ">= 0, got -1"),
        (dict(tree={"extend": 2.5}), "(big): tree.extend", "a whole number of nodes"),
        (  # the target's block starts with Max-Gram: no neural drafter to extend its trees
            dict(tree={"extend": 2}, k_matrix=[[0, 0, 3], [0, 3, 1], [0, 0, 2]]),
            "big: tree extend",
            "needs a model that scores token trees first in its block",
        ),
        # Generation defaults.
        (dict(generation={"temperature": -1}), "generation", "temperature must be a finite"),
        (dict(generation={"top_p": 0}), "generation", "top_p must be in (0, 1]"),
        (dict(generation={"top_k": 1.5}), "generation: top_k", "a whole number >= 0"),
        (dict(generation=[1]), "generation", "expected a mapping"),
    ],
)
def test_mistakes_name_the_ladder_and_the_key(changes, key, detail):
    message = usage_error(config(**changes))
    assert message.startswith(f"{SOURCE}: ladder 'tiny': "), message
    assert key in message and detail in message, message


def test_a_yaml_k_matrix_nested_200_deep():
    text = config(k_matrix=None).replace("k_matrix: null", "k_matrix: " + "[" * 200 + "]" * 200)
    message = usage_error(text)
    assert "ladder 'tiny': k_matrix: expected a 3x3" in message


def test_a_yaml_k_matrix_nested_100000_deep():
    """Deeper than the YAML parser can recurse: one line, no RecursionError."""
    text = config(k_matrix=None).replace("k_matrix: null", "k_matrix: " + "[" * 100_000)
    assert "nested too deep" in usage_error(text)


@pytest.mark.parametrize(
    "value, needle",
    [
        pytest.param(
            "[" * 100_000,
            "k-matrix text is 100000 characters",
        ),
        pytest.param(
            "[" * 100_000 + "]" * 100_000,
            "k-matrix text is 200000 characters",
        ),
        ("1,1;0,1", "expected a 3x3"),
        ("1,1,1;1,1,1;0,0,1", "below the diagonal"),
    ],
)
def test_command_line_k_matrix_is_checked_like_the_yaml(value, needle):
    spec = parse_config(config(), SOURCE)["tiny"]
    with pytest.raises(UsageError) as info:
        spec.with_settings(k_matrix=value)
    message = str(info.value)
    assert message.startswith("command line: ") and needle in message, message
    assert "\n" not in message


def test_command_line_settings_are_checked_like_the_yaml():
    spec = parse_config(config(), SOURCE)["tiny"]
    assert spec.with_settings(k_matrix="1,1,1;0,1,1;0,0,1").k_matrix[0] == (1, 1, 1)
    with pytest.raises(UsageError, match="^command line: mid: lenience: .* got 0.5$"):
        spec.with_settings(lenience=0.5)
    with pytest.raises(UsageError, match="^command line: min_confidence: .*a list of 2"):
        spec.with_settings(min_confidence=[0.5])


def test_load_ladders_from_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_ladders(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(UsageError, match="holds no ladders"):
        load_ladders(empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text(config(lenience=0.5))
    with pytest.raises(UsageError, match=rf"^{bad}: ladder 'tiny': rungs\[1\] \(mid\): lenience"):
        load_ladders(bad)


def test_add_ladder_never_overwrites(tmp_path):
    path = tmp_path / "cascades.yaml"
    spec = parse_config(config(), SOURCE)["tiny"]
    add_ladder(path, spec)
    add_ladder(path, spec.with_settings(lenience=2.0).replace(name="other"))
    ladders = load_ladders(path)
    assert list(ladders) == ["tiny", "other"]
    assert ladders["tiny"] == spec
    assert [d.lenience for d in ladders["other"].drafters] == [2.0, 2.0]
    with pytest.raises(Exception, match="already has a ladder named 'tiny'"):
        add_ladder(path, spec)
