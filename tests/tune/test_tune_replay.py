"""Tests for csdraft.tune.replay (and calibration and agreement on tiny real models): the
replay against the real engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_ladder import make_tiny_ladder, own_env  # noqa: F401 - fixtures
from tune_helpers import synthetic_calibration

from csdraft import tune
from csdraft.engine import Cascade, ModelRung, kmatrix
from csdraft.engine.tree import TreeSettings
from csdraft.ladder import get_ladder
from csdraft.trace import Commit, Review, Stats
from csdraft.tune.costs import CostCurve


def test_replay_perfect_drafter_fills_blocks():
    cal = synthetic_calibration(None, t=20, c=0.1)
    pred = tune.Replay(cal).predict([[4]])
    assert pred.exact
    assert pred.tokens_per_review == pytest.approx(5)  # 4 target reviews of 5 tokens
    # ar: 20 target passes; sd: 4 target passes + 16 one-token drafter passes (plus the
    # replay's own microseconds of engine time)
    assert pred.speedup == pytest.approx(20 / (4 + 16 * 0.1), rel=0.02)


def test_replay_counts_rejections_exactly():
    cal = synthetic_calibration(3, t=12)  # drafter wrong at positions 2, 5, 8, 11
    pred = tune.Replay(cal).predict([[4]])
    assert pred.exact
    # each review keeps 2 drafts and corrects the third: 3 tokens per target review
    assert pred.tokens_per_review == pytest.approx(3)


def test_replay_predicts_trees_from_the_drafters_second_choices():
    """The drafter is wrong at positions 5, 11 and 17 of 20, where the target's token is its
    close second choice. Linear blocks of 4: 5 tokens, then 1 (the correction), ... 7 reviews.
    With one sibling where the drafter doubts, the sibling is the target's token and the
    review also gets the target's next one: 5, 2, 5, 5, 2, 1: 6 reviews, two of them trees
    (costed by the tree curve), the rest chains."""
    cal = synthetic_calibration(6, t=20)
    rec = cal.records[0]
    ids, probs = rec.top_ids[1], rec.top_p[1]
    wrong = ids[:, 0] == 100
    ids[wrong, 1] = np.asarray(rec.ref + [7])[wrong]
    probs[wrong] = [0.45, 0.40, 0.01]
    cal.tree_cost = CostCurve.constant(2.0)
    replay = tune.Replay(cal)
    linear = replay.predict([[4]])
    tree = replay.predict([[4]], tree=TreeSettings(16, 1, 0.5))
    assert linear.exact and tree.exact
    assert linear.tokens_per_review == pytest.approx(20 / 7)
    assert tree.tokens_per_review == pytest.approx(20 / 6)
    target = replay.prompts[0].sessions[0]
    assert len(target.fed_tree) == 2 and len(target.fed) == 4  # trees where siblings grew
    no_doubt = replay.predict([[4]], tree=TreeSettings(16, 1, 0.3))  # 0.45 >= 0.3: linear
    assert no_doubt.tokens_per_review == pytest.approx(20 / 7)


def test_replay_rung_is_a_scorer_whose_log_outlives_the_engines_resets():
    """The engine resets a rung's scorer when a generation starts and ends; the replayed
    session forgets its cache then, but keeps the log of what it fed until ``clear``."""
    table = torch.zeros(6, 4)
    rung = tune.ReplayRung("r", table, prompt_len=3)
    cascade = Cascade([ModelRung(rung, "r")], [])
    events = list(cascade.generate([1, 2, 3], 3))
    assert sum(isinstance(e, Commit) for e in events) == 3
    assert rung.fed == [3, 1, 1]  # the prompt, then one new token a pass
    rung.clear()
    assert rung.fed == [] and rung.seconds == 0.0


# ------------------------------------------------------------------ tiny real models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-replay")
    cfg = make_tiny_ladder(root, drafters=1, maxgram=True)
    rows = [{"prompt": " ".join(f"w{(7 * i + 3 * j) % 60}" for j in range(14))} for i in range(3)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg


def test_replay_matches_the_engine_on_tiny_models(tiny):
    """Everything the target accepts is replayed exactly: target reviews match a real run."""
    from csdraft.api import Ladder

    loaded = Ladder.load(get_ladder("tiny", tiny), progress=False)
    prompts = [loaded.encode(f"w{i} w{i + 1} w{i + 2} w{2 * i} w{i + 1} w{i + 2}") for i in (1, 5)]
    cal = tune.calibrate(loaded, prompts, 20, lengths=(1, 4), repeats=1)
    assert cal.n_neural == 2 and cal.maxgram_rung == 2
    assert cal.tree_cost is not None and cal.tree_cost.lengths == [1, 4]
    replay = tune.Replay(cal)
    tokens = sum(len(r.ref) for r in cal.records)
    settings = [([[3, 3], [0, 3]], 0.0), ([[2, 0], [0, 0]], 0.0), ([[0, 5], [0, 0]], 0.0)]
    settings += [([[1, 4], [0, 6]], 0.0), ([[6, 0], [0, 3]], 0.3), ([[5, 2], [0, 4]], 0.6)]
    stopped = 0
    for k, floor in settings:
        pred = replay.predict(k, 1.0, floor)
        assert pred.exact
        kept, sub = kmatrix.sub_ladder(k)
        cascade = loaded.cascade(tune.Candidate(k, 1.0, floor).spec_of(loaded.spec))
        forwards = 0
        for rec in cal.records:
            events = list(cascade.generate(rec.prompt, 20, loaded.eos_ids))
            stats = Stats.of(events)
            assert [t for e in events if isinstance(e, Commit) for t in e.tokens] == rec.ref
            forwards += stats.target_forwards
            blocks = [len(e.proposed) for e in events if isinstance(e, Review) and e.reviewer == 0]
            stopped += floor > 0 and min(blocks) < sum(sub[0])  # a draft ended early
        assert pred.tokens_per_review == pytest.approx(tokens / forwards), (k, floor)
    assert stopped  # min_confidence really acted in this test
    agree = tune.agreement(cal)
    assert set(agree.rate) == {(0, 1), (0, 2), (1, 2)}
    assert all(0 <= v <= 1 for v in agree.rate.values())
    # the teacher-forced margins are the target's own top-2 gaps along its reference
    rec = cal.records[0]
    assert rec.margin is not None and len(rec.margin) == len(rec.ref) + 1
    gap = float(np.float32(rec.margin[0]))
    want = loaded.target.next_logits(rec.prompt).topk(2).values
    assert gap == pytest.approx(float(want[0] - want[1]), abs=1e-4)
