"""The event stream: JSON-lines round trip and the Stats arithmetic."""

from __future__ import annotations

import json

import pytest
from engine_helpers import SMALL_VOCAB, cascade_of

from csdraft.engine import MaxGram
from csdraft.trace import Commit, Finish, Review, Start, Stats, from_dict, load, save, to_dict

# A cascade of target (0), drafter (1) and Max-Gram (2), generating 7 tokens in 3 target passes.
EVENTS = [
    Start(["target", "drafter", "max-gram"], 5, t=0.0, kinds=["target", "model", "statistical"]),
    Review(1, [11, 12, 13], [2, 2, 2], 2, 20, forward_s=0.01, t=0.1),
    Review(1, [], [], 0, 21, forward_s=0.02, t=0.2),
    Review(0, [11, 12, 20, 21], [2, 2, 1, 1], 2, 30, forward_s=0.5, t=0.7),
    Commit([11, 12, 30], [2, 2, 0], [20, 21], [1, 1], t=0.7),
    Review(0, [31, 32], [1, 2], 2, 33, forward_s=0.4, t=1.2),
    Commit([31, 32, 33], [1, 2, 0], [], [], t=1.2),
    Review(0, [], [], 0, 34, forward_s=0.3, t=1.6),
    Commit([34], [0], t=1.6),
    Finish("length", t=2.0),
]


def test_stats_arithmetic():
    stats = Stats.of(EVENTS)
    assert stats.rungs == ["target", "drafter", "max-gram"]
    assert stats.kinds == ["target", "model", "statistical"]
    assert stats.new_tokens == 7
    assert stats.target_forwards == 3
    assert stats.tokens_per_forward == pytest.approx(7 / 3)
    assert stats.wall_s == 2.0
    assert stats.tokens_per_s == pytest.approx(3.5)
    assert stats.finish == "length"
    assert stats.forwards == {0: 3, 1: 2}
    assert stats.forward_s == pytest.approx({0: 1.2, 1: 0.03})
    assert stats.proposed == {0: 6, 1: 3}
    assert stats.accepted == {0: 4, 1: 2}
    assert stats.acceptance(0) == pytest.approx(4 / 6)
    assert stats.acceptance(1) == pytest.approx(2 / 3)
    assert stats.acceptance(2) == 0.0  # Max-Gram never reviews
    # Final tokens by the rung that drafted them.
    assert stats.drafted == {2: 3, 0: 3, 1: 1}
    # Target acceptance by draft position: the first pass reached positions 0-2 (kept 0, 1,
    # refused 2), the second kept both of its 2, the third proposed nothing.
    assert stats.by_position == [[2, 2], [2, 2], [1, 0]]


def test_stats_as_dict_names_the_rungs():
    summary = Stats.of(EVENTS).as_dict()
    assert summary["new_tokens"] == 7
    assert summary["target_forwards"] == 3
    assert summary["tokens_per_target_forward"] == pytest.approx(2.3333)
    assert summary["finish"] == "length"
    assert summary["reviews"]["target"] == {
        "forwards": 3,
        "proposed": 6,
        "accepted": 4,
        "acceptance": pytest.approx(0.6667),
        "forward_s": pytest.approx(1.2),
    }
    assert summary["reviews"]["drafter"]["forwards"] == 2
    assert "max-gram" not in summary["reviews"]
    assert summary["drafted"] == {"target": 3, "drafter": 1, "max-gram": 3}
    assert summary["target_acceptance_by_position"] == [1.0, 1.0, 0.0]
    json.dumps(summary)


def test_stats_of_nothing():
    stats = Stats.of([])
    assert stats.new_tokens == 0
    assert stats.tokens_per_forward == 0.0
    assert stats.tokens_per_s == 0.0
    assert stats.acceptance(0) == 0.0
    assert stats.by_position == []


def test_stats_add_is_incremental():
    stats = Stats(rungs=[])
    for event in EVENTS:
        stats.add(event)
    assert stats == Stats.of(EVENTS)
    assert Stats.of(EVENTS[:5]).new_tokens == 3


def test_event_dict_round_trip():
    for event in EVENTS:
        data = to_dict(event)
        assert data["event"] == type(event).__name__
        assert from_dict(json.loads(json.dumps(data))) == event
        assert "event" in data  # from_dict does not consume its argument
    with pytest.raises(ValueError, match="unknown event 'Nonsense'"):
        from_dict({"event": "Nonsense"})


@pytest.mark.parametrize("header", [None, {"model": "tiny", "k": [[2, 1], [0, 3]], "seed": 0}])
def test_save_load_round_trip(tmp_path, header):
    path = tmp_path / "trace.jsonl"
    save(EVENTS, path, header=header)
    lines = path.read_text().splitlines()
    assert len(lines) == len(EVENTS) + (header is not None)
    assert all(json.loads(line)["event"] for line in lines)
    got_header, got = load(path)
    assert got_header == (header or {})
    assert got == EVENTS
    assert Stats.of(got) == Stats.of(EVENTS)


def test_save_load_round_trip_of_a_real_generation(tmp_path, zoo, one_thread):
    target = zoo.model("llama", SMALL_VOCAB)
    drafter = zoo.noisy(target, 0.3)
    cascade = cascade_of(target, [drafter, MaxGram()], [[3, 2], [0, 2]])
    events = list(cascade.generate([1, 2, 3, 1, 2, 3, 1], 12))
    path = tmp_path / "real.jsonl"
    save(iter(events), path)  # any iterable
    _, got = load(path)
    assert got == events
    assert got[0].kinds == ["target", "model", "statistical"]
    stats = Stats.of(got)
    assert stats.new_tokens == 12
    assert stats.rungs == ["target", "d0", "max-gram"]
    assert stats.kinds == ["target", "model", "statistical"]


def test_kinds_from_the_start_event():
    start = Start(["big", "bag-of-words", "small"], 3, kinds=["target", "statistical", "model"])
    stats = Stats.of([start])
    assert stats.kinds == ["target", "statistical", "model"]
    assert from_dict(json.loads(json.dumps(to_dict(start)))) == start


def test_traces_saved_before_kinds_guess_them(tmp_path):
    """An old trace's Start has no kinds: Max-Gram was the only drafter that was no model."""
    path = tmp_path / "old.jsonl"
    old = {"event": "Start", "rungs": ["target", "drafter", "max-gram"], "prompt_tokens": 5}
    path.write_text(json.dumps(old) + "\n" + json.dumps(to_dict(EVENTS[-1])) + "\n")
    _, events = load(path)
    assert events[0].kinds == []
    assert Stats.of(events).kinds == ["target", "model", "statistical"]
    assert Stats.of([Start(["target"], 2)]).kinds == ["target"]


def test_tree_reviews_round_trip_and_count_by_depth(tmp_path):
    # A tree of 5 nodes, 3 deep: 0 -> 1 -> 2, siblings 3 (of 0) and 4 (of 1); kept 0, 4.
    tree = Review(0, [5, 6, 7, 8, 9], [1] * 5, 2, 10, 0.1, 0.1, [-1, 0, 1, -1, 0], [0, 4])
    assert tree.kept() == [0, 4] and tree.depth() == 3
    chain = Review(0, [5, 6], [1, 1], 1, 10, 0.1, 0.1)
    assert chain.kept() == [0] and chain.depth() == 2 and chain.parents is None
    assert from_dict(to_dict(tree)) == tree
    # Traces written before trees had no parents or path: they still load, as chains.
    old = {k: v for k, v in to_dict(chain).items() if k not in ("parents", "path")}
    assert from_dict(old) == chain
    stats = Stats.of([Start(["t", "d"], 3, kinds=["target", "model"]), tree])
    assert stats.by_position == [[1, 1], [1, 1], [1, 0]]  # by depth: kept 2 of 3 levels
    assert stats.proposed == {0: 5} and stats.accepted == {0: 2}


def test_tokens_per_second_is_one_rule_everywhere():
    from csdraft.bench import metrics
    from csdraft.runs import Outcome
    from csdraft.trace import tokens_per_second
    from csdraft.tune import verify

    assert tokens_per_second(7, 2.0) == 3.5
    assert tokens_per_second(7, 0.0) is None and tokens_per_second(0, -1.0) is None
    for wall, want in ((2.0, 3.5), (0.0, None)):
        stats = Stats.of([*EVENTS[:-1], Finish("length", t=wall)])
        outcome = Outcome(ids=[1] * 7, wall_s=wall, target_forwards=3, forwards={})
        record = {"new_tokens": 7, "wall_s": wall}
        assert stats.tokens_per_s == outcome.tokens_per_s == (want or 0.0)
        assert metrics.tokens_per_s(record) == (want or 0.0)
        assert verify.tokens_per_s([outcome]) == want
    halves = [Outcome(ids=[1] * n, wall_s=1.0, target_forwards=1, forwards={}) for n in (3, 4)]
    assert verify.tokens_per_s(halves) == 3.5  # summed tokens over summed seconds
    decode = {"new_tokens": 9, "wall_s": 3.0, "decode_s": 2.0, "prefill_tokens": 2}
    assert metrics.decode_tokens_per_s(decode) == 3.5
    assert metrics.decode_tokens_per_s({**decode, "decode_s": 0.0}) is None
    assert metrics.decode_tokens_per_s({"new_tokens": 9, "wall_s": 3.0}) is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "it holds no events"),
        (["", "  "], "it holds no events"),
        (["[1,2,3]"], "line 1: expected an event object, got [1,2,3]"),
        (["{oops"], "line 1: not valid JSON"),
        (["START", '{"event": "Boom"}'], "line 2: unknown event 'Boom'"),
        (["START", '{"event": "Finish"}'], "line 2: a Finish event without 'reason'"),
        (["START", '{"event": "Finish", "reason": "eos", "x": 1}'], "unknown field 'x'"),
        (["START", '{"event": "Commit", "tokens": 5, "origins": []}'], "'tokens' is not list"),
        (["START", '{"event": "Commit", "tokens": ["a"], "origins": []}'], "'tokens' is not"),
        (['{"event": "Finish", "reason": "eos"}'], "its first event is not a Start"),
    ],
)
def test_a_file_that_is_no_trace_says_what_is_wrong_where(tmp_path, lines, message):
    start = json.dumps(to_dict(EVENTS[0]))
    path = tmp_path / "t.jsonl"
    path.write_text("".join((start if ln == "START" else ln) + "\n" for ln in lines))
    with pytest.raises(ValueError) as err:
        load(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_non_utf8_trace_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(to_dict(EVENTS[0])).encode() + b'\n{"event": "\xff"}\n')
    with pytest.raises(ValueError, match="line 2: not UTF-8 text"):
        load(path)
