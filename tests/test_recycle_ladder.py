"""Token recycling as a ladder rung (kind ``recycle``): its YAML reads, validates and writes
back; its rules are one line naming the rung; tune writes a ladder holding it; and through the
API its table persists across generations over one loaded target, the output unchanged."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from engine_helpers import reference_greedy
from tiny_ladder import make_tiny_ladder

from csdraft.engine.recycling import Recycling
from csdraft.errors import UsageError
from csdraft.ladder import ladder_to_yaml, load_ladders, parse_config, parse_ladder
from csdraft.spec import RungSpec, build_cascade
from csdraft.trace import Commit, Stats
from csdraft.tune.search import Candidate
from csdraft.tune.write import tuned_spec, write_winner


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CSDRAFT_CONFIG", str(tmp_path / "user-cascades.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def read(recycle: dict, k=((3, 0, 2), (0, 2, 2), (0, 0, 0)), name: str = "rec"):
    rungs = [
        {"name": "big", "model": "org/big"},
        {"name": "small", "model": "org/small"},
        {"kind": "max-gram", "max_ngram": 4},
        {"kind": "recycle", **recycle},
    ]
    body = {"rungs": rungs, "k_matrix": [list(r) for r in k], "dtype": "float32"}
    return parse_config(yaml.safe_dump({name: body}, sort_keys=False), "cfg.yaml")[name]


def test_a_recycle_rung_round_trips():
    spec = read({"successors": 4, "branches": 2, "persist": False, "harvest_drafters": False})
    rec = spec.rung("recycle")
    assert (rec.kind, rec.successors, rec.branches, rec.persist, rec.harvest_drafters) == (
        "recycle",
        4,
        2,
        False,
        False,
    )
    raw = ladder_to_yaml(spec)
    assert raw["rungs"][3] == {
        "kind": "recycle",
        "name": "recycle",
        "branches": 2,
        "successors": 4,
        "persist": False,
        "harvest_drafters": False,
    }
    assert parse_ladder("rec", yaml.safe_load(yaml.safe_dump(raw))) == spec
    plain = read({})
    assert ladder_to_yaml(plain)["rungs"][3] == {"kind": "recycle", "name": "recycle"}
    assert (plain.rung("recycle").successors, plain.rung("recycle").persist) == (8, True)
    assert parse_ladder("rec", ladder_to_yaml(plain)) != spec  # the comparison has teeth


@pytest.mark.parametrize(
    "recycle, k, words",
    [
        ({"successors": 0}, None, "successors: expected a whole number of tokens >= 1"),
        ({"persist": "yes"}, None, "persist: expected true or false"),
        ({"max_ngram": 3}, None, "unknown keys ['max_ngram'] for a recycle rung"),
        ({"lenience": 2}, None, "unknown keys ['lenience'] for a recycle rung"),
        ({"branches": 0}, None, "branches: expected a whole number of branches >= 1"),
    ],
)
def test_recycle_rules_are_one_line(recycle, k, words):
    with pytest.raises(UsageError) as error:
        read(recycle, *(() if k is None else (k,)))
    message = str(error.value)
    assert words in message and "\n" not in message, message


def test_transforms_check_recycle_settings():
    spec = read({})
    with pytest.raises(UsageError, match="recycle: max_ngram: not a setting of a recycle"):
        spec.with_rung("recycle", max_ngram=3)
    with pytest.raises(UsageError, match="max-gram: successors: not a setting of a max-gram"):
        spec.with_rung("max-gram", successors=3)
    above = dataclasses.replace(spec.rung("recycle"))
    with pytest.raises(UsageError, match="statistical rungs"):
        spec.replace(rungs=(spec.target, above, *spec.rungs[1:3]))
    assert spec.with_rung("recycle", successors=2).rung("recycle").successors == 2


def test_tune_writes_a_ladder_with_recycling(tmp_path, monkeypatch):
    user = tmp_path / "conf" / "cascades.yaml"
    monkeypatch.setenv("CSDRAFT_CONFIG", str(user))
    spec = read({"successors": 4})
    cand = Candidate(((0, 0, 5), (0, 0, 0), (0, 0, 0)))
    assert write_winner(spec, cand, "rec-tuned", None) == (user, "rec-tuned")
    got = load_ladders()["rec-tuned"]
    assert got == tuned_spec(spec, cand, "rec-tuned")
    assert got.rung("recycle").successors == 4  # unused rungs dropped: recycling under the target
    assert got.rung_names == ["big", "recycle"] and got.k_matrix == ((5,),)


# ------------------------------------------------------------------------------ through the API


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from csdraft.api import Ladder

    root = tmp_path_factory.mktemp("recycle-ladder")
    config = make_tiny_ladder(root, drafters=1, maxgram=True)
    base = load_ladders(config)["tiny"]
    spec = base.replace(
        rungs=(*base.rungs, RungSpec(kind="recycle", name="recycle", successors=4)),
        k_matrix=[[3, 0, 2], [0, 2, 2], [0, 0, 0]],
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CSDRAFT_HOME", str(root / "home"))
        env.setenv("HF_HUB_OFFLINE", "1")
        ladder = Ladder.load(spec, progress=False)
    target = AutoModelForCausalLM.from_pretrained(root / "target")
    return ladder, target


@pytest.mark.parametrize(
    "names, k",
    [
        (["tiny-d1", "max-gram", "recycle"], [[3, 0, 2], [0, 2, 2], [0, 0, 0]]),
        (["recycle"], [[4]]),
        (["tiny-d1", "recycle"], [[3, 0], [0, 3]]),
    ],
)
def test_recycle_ladders_give_the_targets_greedy_output(tiny, names, k):
    ladder, target = tiny
    spec = ladder.spec.keep(names, k)
    for prompt in ([5, 9, 12, 5, 9, 30], [40, 41, 42, 40, 41]):
        want = reference_greedy(target, prompt, 14, eos_id=1)
        assert ladder.generate(prompt, 14, spec=spec).token_ids == want, (names, prompt)


def test_a_statistical_rung_needs_nothing_loaded(tiny):
    """A ladder loaded with Max-Gram runs a spec whose bottom rung is a recycle rung it never
    loaded (and the other way round): only model rungs must be as loaded."""
    ladder, target = tiny
    prompt = [5, 9, 12, 5, 9, 30]
    want = reference_greedy(target, prompt, 14, eos_id=1)
    plain = ladder.spec.keep(["tiny-d1", "max-gram"], [[3, 0], [0, 3]])
    renamed = plain.replace(
        rungs=(*plain.rungs[:2], RungSpec(kind="recycle", name="fresh", copy_ngram=2)),
    )
    for spec in (renamed, plain):
        assert ladder.runnable(spec) is spec
        assert ladder.generate(prompt, 14, spec=spec).token_ids == want
    stranger = plain.with_rung("tiny-d1", dtype="bfloat16")
    with pytest.raises(UsageError, match="tiny-d1 is not loaded"):
        ladder.runnable(stranger)


def test_the_table_persists_across_generations_unless_told_not_to(tiny):
    ladder, target = tiny
    prompt = [5, 9, 12, 5, 9, 30]
    want = reference_greedy(target, prompt, 14, eos_id=1)
    for persist in (True, False):
        spec = ladder.spec.keep(["recycle"], [[4]])  # a table of its own (k 3), never used yet
        spec = spec.with_rung("recycle", persist=persist, successors=3)
        drafted = []
        for _ in range(2):
            cascade = build_cascade(spec, ladder.models)
            (rec,) = [r for r in cascade.rungs if isinstance(r, Recycling)]
            events = list(cascade.generate(prompt, 14, eos_ids=ladder.eos_ids))
            assert [t for e in events if isinstance(e, Commit) for t in e.tokens] == want
            drafted.append(Stats.of(events).drafted.get(1, 0))
        if persist:
            assert drafted[1] > drafted[0], drafted  # the second run drafts from the first's
        else:
            assert drafted[1] == drafted[0], drafted  # a fresh table: the same run again


def test_tune_judges_a_recycle_ladder_by_real_runs(tmp_path, monkeypatch):
    """The replay cannot model a table that learns from the run itself: tune places the
    drafters over the recycle rung and judges every placement by real runs, outputs ar's."""
    from csdraft.ladder import add_ladder
    from csdraft.tune import placements
    from csdraft.tune.run import run_tune

    base = load_ladders(make_tiny_ladder(tmp_path / "m", drafters=1, maxgram=False))["tiny"]
    recycle = RungSpec(kind="recycle", name="recycle", copy_ngram=2)
    spec = base.replace(name="rec", rungs=(*base.rungs, recycle), k_matrix=[[3, 0], [0, 3]])
    config = tmp_path / "ladders.yaml"
    add_ladder(config, spec)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "abcab"}\n{"prompt": "the cat, the hat"}\n')
    with pytest.raises(UsageError, match="recycle learns from the run itself.*--budget more"):
        run_tune("rec", str(prompts), 2, 0.0, False, None, 0, 6, config)
    seen = {}
    real = placements.measure

    def spy(loaded, cal, replay, chosen, *args, **kwargs):
        seen.update(chosen=list(chosen), names=loaded.spec.rung_names, replay=replay)
        return real(loaded, cal, replay, chosen, *args, **kwargs)

    monkeypatch.setattr(placements, "measure", spy)
    run_tune("rec", str(prompts), 2, 3.0, False, None, 0, 6, config)
    assert seen["replay"] is None
    placed = {placements.placement_of(c, seen["names"], 2) for c in seen["chosen"]}
    assert placed == {("tiny-d1",), ()}  # the drafter over recycling, and recycling alone
    assert all(c.runs > 0 and c.identical == c.runs for c in seen["chosen"])
