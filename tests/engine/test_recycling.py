"""Token recycling (engine/recycling.py): the successor table, the walk, the harvest through
the cascade, reset and persistence; greedy exactness anywhere in random ladders (the toy
harness of test_toy_proposer.py) and in token trees; the target's exact sampling law with a
table that persists across generations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from engine_helpers import (
    TARGETS,
    ResampleFromP,
    cascade_of,
    cases,
    distribution_check,
    drafter_of,
    ids_of,
    passes,
    run_greedy_case,
    spec_cascade,
    target_of,
)
from hypothesis import HealthCheck, given, settings

from csdraft.engine import Sampling
from csdraft.engine.recycling import Recycling, SuccessorTable, shared_table
from csdraft.trace import Review, Stats

pytestmark = pytest.mark.usefixtures("one_thread")


def logits_with(top: list[list[int]], vocab: int = 10) -> torch.Tensor:
    """Rows whose likeliest tokens are ``top[i]``, in that order."""
    rows = torch.zeros(len(top), vocab)
    for i, ids in enumerate(top):
        for rank, t in enumerate(ids):
            rows[i, t] = 10.0 - rank
    return rows


# ------------------------------------------------------------------------------- the table


def test_update_keeps_each_rows_top_k_for_the_token_it_follows():
    table = SuccessorTable(2)
    assert table.walk(3, 4) == [] and table.successors(3).size == 0  # nothing harvested yet
    table.update([3, 5], logits_with([[7, 1, 2], [4, 9]]))
    assert table.rows.shape == (10, 2) and table.rows.dtype == np.int32
    assert table.successors(3).tolist() == [7, 1]
    assert table.successors(5).tolist() == [4, 9]
    assert table.successors(7).size == 0  # never followed by a scored row
    table.update([3], logits_with([[2, 8]]))  # a newer row for 3 replaces the older
    assert table.successors(3).tolist() == [2, 8]


def test_update_uses_only_rows_that_have_a_token():
    table = SuccessorTable(1)
    table.update([4], logits_with([[6], [2]]))  # the second row follows nothing we know
    assert table.successors(4).tolist() == [6]
    assert all(table.successors(t).size == 0 for t in range(10) if t != 4)
    table.update([], logits_with([[1]]))  # nothing to learn
    assert table.successors(4).tolist() == [6]


def test_the_table_grows_to_a_wider_vocabulary():
    table = SuccessorTable(1)
    table.update([1], logits_with([[2]], vocab=4))
    table.update([9], logits_with([[11]], vocab=12))
    assert table.rows.shape == (12, 1)
    assert table.walk(1, 3) == [2] and table.walk(9, 1) == [11]
    assert table.walk(40, 3) == []  # beyond the table: nothing


def test_walk_follows_first_successors_and_stops_where_unknown():
    table = SuccessorTable(2)
    table.update([1, 2, 3], logits_with([[2, 5], [3, 6], [1, 7]]))
    assert table.walk(1, 5) == [2, 3, 1, 2, 3]  # a cycle is walked, the reviewer judges it
    assert table.walk(1, 0) == []
    table.rows[:] = -1
    table.update([1], logits_with([[4]]))
    assert table.walk(1, 5) == [4]  # 4 has no successor yet


# ------------------------------------------------------------------------------- the proposer


def primed(branches: int = 1, persist: bool = True) -> Recycling:
    rec = Recycling(successors=3, branches=branches, persist=persist)
    rec.index = 2
    rec.harvest(0, [1, 2, 3], logits_with([[2, 5, 8], [3, 6], [4, 2]]))
    rec.harvest(0, [5, 6], logits_with([[9], [0]]))
    return rec


def test_propose_walks_from_the_last_context_token():
    rec = primed()
    draft = rec.propose(np.array([7, 7, 1]), 3)
    assert draft.tokens == [2, 3, 4] and draft.origins == [2, 2, 2]
    assert draft.q == [None] * 3 and draft.is_chain  # deterministic: one-hot when sampling
    assert rec.propose(np.array([2]), 8).tokens == [3, 4]  # 4 has no successor
    assert rec.propose(np.array([9]), 3).tokens == []  # nothing known after 9


def test_branches_are_the_first_tokens_runners_up_each_walked_on():
    rec = primed(branches=3)
    assert rec.proposes_trees
    draft = rec.propose(np.array([1]), 3)
    # main 2 -> 3 -> 4; siblings 5 (-> 9, unknown after it) and 8 (unknown after it)
    assert draft.tokens == [2, 3, 4, 5, 9, 8]
    assert draft.parents == [-1, 0, 1, -1, 3, -1]
    assert draft.depth() == [1, 2, 3, 1, 2, 1]
    assert rec.propose(np.array([4]), 3).tokens == []  # nothing known: no tree either


def test_copy_first_then_walk_on():
    rec = Recycling(successors=3, copy_ngram=2)
    rec.index = 2
    rec.harvest(0, [1, 2, 3, 5], logits_with([[2], [3], [4], [9]]))
    rec.reset([7, 5, 6, 1])
    # [7, 5] followed earlier by 6, 1 (copied); then the table: 1 -> 2 -> 3
    assert rec.propose(np.array([7, 5, 6, 1, 7, 5]), 4).tokens == [6, 1, 2, 3]
    assert rec.propose(np.array([7, 5, 6, 1, 9, 5]), 2).tokens == [9]  # no match: walk only
    rec.commit([9, 5, 6])
    assert rec.propose(np.array([7, 5, 6, 1, 9, 5, 6, 9, 5]), 1).tokens == [6]  # the longest match
    plain = Recycling(successors=3)
    plain.harvest(0, [5], logits_with([[9]]))
    assert plain.propose(np.array([7, 5]), 4).tokens == [9]


def test_reset_forgets_only_without_persist():
    kept, fresh = primed(persist=True), primed(persist=False)
    for rec in (kept, fresh):
        rec.reset([1, 2])
    assert kept.propose(np.array([1]), 2).tokens == [2, 3]
    assert fresh.propose(np.array([1]), 2).tokens == []


def test_harvest_from_the_target_only_when_asked():
    rec = Recycling(harvest_drafters=False)
    rec.harvest(1, [1], logits_with([[2]]))
    assert rec.table.rows is None
    rec.harvest(0, [1], logits_with([[3]]))
    assert rec.table.successors(1)[0] == 3


def test_shared_tables_persist_per_owner_and_name():
    class Owner:
        pass

    a, b = Owner(), Owner()
    assert shared_table(a, "recycle", 4) is shared_table(a, "recycle", 4)
    assert shared_table(a, "recycle", 4) is not shared_table(b, "recycle", 4)
    assert shared_table(a, "recycle", 4) is not shared_table(a, "other", 4)
    assert shared_table(a, "recycle", 4, persist=False) is not shared_table(a, "recycle", 4)
    assert shared_table(None, "recycle", 4) is not shared_table(None, "recycle", 4)


# ------------------------------------------------------------------------------- in a cascade

KEY = TARGETS[2]  # llama, LARGE_VOCAB


def test_the_cascade_harvests_every_review_and_recycled_tokens_are_kept(zoo):
    """Under the target alone: the table fills from the target's rows (the context's last
    token and every draft token), and the second generation of one prompt, drafted from the
    first's table, is almost all recycled tokens."""
    target = target_of(zoo, KEY)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    rec = Recycling(successors=4)
    cascade = cascade_of(target, [rec], [[4]])
    want = zoo.reference(target, prompt, 24)
    first = list(cascade.generate(prompt, 24))
    assert ids_of(first) == want
    learned = {t for t in range(target.config.vocab_size) if rec.table.successors(t).size}
    assert {prompt[-1], *want[:-1]} <= learned
    second = list(cascade.generate(prompt, 24))
    assert ids_of(second) == want
    stats = Stats.of(second)
    assert stats.drafted.get(1, 0) >= 12, stats.drafted
    assert stats.target_forwards < Stats.of(first).target_forwards


def test_a_wrong_harvest_is_caught(zoo):
    """The check above has teeth: a cascade that harvests nothing never recycles."""
    target = target_of(zoo, KEY)
    rec = Recycling(successors=4)
    rec.wants_logits = False
    cascade = cascade_of(target, [rec], [[4]])
    for _ in range(2):
        events = list(cascade.generate([3, 1, 4, 1, 5, 9, 2, 6], 24))
    assert Stats.of(events).drafted.get(1, 0) == 0


def toy_recycling(case) -> Recycling:
    return Recycling(successors=4, persist=False, copy_ngram=case.min_ngram * case.bigram)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases(toy=True))
def test_ladders_with_recycling_equal_target_greedy(zoo, case):
    """Recycling anywhere in random ladders (its drafts may come up short: ``toy_most``)."""
    run_greedy_case(zoo, dataclasses.replace(case, toy_most=case.toy_most or 8), toy_recycling)


@pytest.mark.parametrize("k", [[[5]], [[3, 3], [0, 2]]])
def test_recycled_trees_equal_target_greedy(zoo, k):
    target = target_of(zoo, KEY)
    drafters = [Recycling(successors=3, branches=3)]
    if len(k) == 2:
        drafters.insert(0, drafter_of(zoo, KEY, "near"))
    cascade = cascade_of(target, drafters, k)
    for prompt in ([3, 1, 4, 1, 5, 9, 2, 6], [7, 7, 7, 7], [1, 2, 3, 1, 2, 3, 1, 2]):
        want = zoo.reference(target, prompt, 20)
        events = list(cascade.generate(prompt, 20))
        assert ids_of(events) == want, zoo.divergence(target, prompt, ids_of(events), want)
    trees = [e for e in events if isinstance(e, Review) and e.parents]
    assert trees  # some reviews scored token trees


# ------------------------------------------------------------------------------- sampling

PROMPT = [1, 1, 1, 1, 1]
LADDERS = {
    "recycle alone": dict(k=[[3]], lenience=1.0, sampling=Sampling(1.0), max_new_tokens=3),
    "lenient drafter over recycle, top-k": dict(
        k=[[2, 1], [0, 2]], lenience=3.0, sampling=Sampling(0.9, top_k=6), max_new_tokens=3
    ),
}


def recycling_cascade(models, name):
    spec = LADDERS[name]
    drafters = [Recycling(successors=3)]  # persists across the runs: drafts change, law not
    if len(spec["k"]) == 2:
        drafters.insert(0, models["far"])
    return spec_cascade(models, spec, drafters)


@pytest.mark.parametrize("name", list(LADDERS))
def test_recycling_samples_the_target_distribution(sampling_models, name):
    cascade = recycling_cascade(sampling_models, name)
    spec = LADDERS[name]
    target = sampling_models["target"]
    results, tv = distribution_check(
        cascade, target, spec["sampling"], spec["max_new_tokens"], 1500, PROMPT
    )
    assert passes(results), f"{name}: chi-square p-values {results}, TV(x1,x2) {tv:.3f}"
    recycled = [
        e for s in range(20) for e in cascade.generate(PROMPT, 3, seed=s) if isinstance(e, Review)
    ]
    origin = len(spec["k"])
    assert any(origin in e.origins[: e.accepted] for e in recycled)  # recycled tokens kept


def test_check_rejects_a_wrong_review_of_recycled_drafts(sampling_models):
    cascade = recycling_cascade(sampling_models, "recycle alone")
    cascade.rule = ResampleFromP(cascade.sampling, cascade.generator)
    target = sampling_models["target"]
    results, tv = distribution_check(cascade, target, Sampling(1.0), 3, 600, PROMPT)
    assert not passes(results), f"went unnoticed: p-values {results}, TV {tv:.3f}"
