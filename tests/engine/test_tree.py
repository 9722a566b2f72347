"""Token trees through the cascade: the output stays exactly the target's.

``RandomTree`` drafts random trees (deterministic children, children sampled from a fixed q, or
both), knowing the target's greedy continuation so that some paths are right; the target (and
inner drafters) may also grow trees from a drafter's chain (``TreeSettings``). Greedy: the ids
equal the target's greedy decoding for random trees and ladders (hypothesis). Sampling: the
chi-square check of test_sampling.py on trees of several shapes, in two- and three-rung ladders,
and the same check catches a tree review that forgets to remove a refused deterministic child.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import (
    TARGETS,
    cascade_of,
    distribution_check,
    drafter_of,
    ids_of,
    passes,
    target_of,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csdraft.engine import Draft, MaxGram, Proposer, Sampling
from csdraft.engine import tree as tree_module
from csdraft.engine.proposer import Engine
from csdraft.engine.tree import TreeSettings, greedy_tree, grow, sample_tree
from csdraft.trace import Commit, Review, Stats

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]
RUNS = 1000
WRONG_RUNS = 1200


class RandomTree(Proposer):
    """Random trees of depth at most n: each node gets up to ``branch`` children, each either
    deterministic (the target's greedy token when the node lies on the target's greedy path and
    a coin says so, else a random token) or, with ``sampled``, drawn from a fixed q."""

    name = "random-tree"

    def __init__(
        self,
        vocab: int,
        seed: int,
        branch: int = 3,
        max_nodes: int = 10,
        sampled: float = 0.0,
        reference: list[int] | None = None,
    ) -> None:
        self.vocab = vocab
        self.rng = np.random.default_rng(seed)
        self.branch = branch
        self.max_nodes = max_nodes
        self.sampled = sampled  # the chance that a child is drawn from q
        self.gen = torch.Generator().manual_seed(seed)
        self.q = torch.softmax(torch.randn(vocab, generator=self.gen), 0)
        self.reference = reference  # the target's greedy continuation of PROMPT
        self.prompt: list[int] = []

    def reset(self, prompt) -> None:
        self.prompt = [int(t) for t in prompt]

    def right(self, context: np.ndarray, nodes: list[int], draft: Draft) -> int | None:
        """The target's greedy token after context + nodes, when known."""
        ref, n = self.reference, len(self.prompt)
        if ref is None or list(context[:n]) != self.prompt:
            return None
        done = [int(t) for t in context[n:]] + [draft.tokens[i] for i in nodes]
        return ref[len(done)] if ref[: len(done)] == done and len(done) < len(ref) else None

    def propose(self, context: np.ndarray, n: int, engine: Engine) -> Draft:
        draft = Draft(parents=[])
        frontier = [(-1, [])]  # (node, its path)
        while frontier and len(draft) < self.max_nodes:
            parent, path = frontier.pop(0)
            if len(path) >= n:
                continue
            for _ in range(int(self.rng.integers(1, self.branch + 1))):
                if len(draft) >= self.max_nodes:
                    break
                if self.rng.random() < self.sampled:
                    token = int(torch.multinomial(self.q, 1, generator=self.gen))
                    q = self.q
                else:
                    good = self.right(context, path, draft)
                    coin = self.rng.random() < 0.6
                    token = (
                        good if good is not None and coin else int(self.rng.integers(self.vocab))
                    )
                    q = None
                draft.tokens.append(token)
                draft.origins.append(self.index)
                draft.q.append(q)
                draft.parents.append(parent)
                frontier.append((len(draft) - 1, [*path, len(draft) - 1]))
        return draft


# ---------------------------------------------------------------------------------------------
# The review rules alone


def test_greedy_tree_takes_the_longest_right_path():
    # argmax after the root: 5; after node 1 (token 5): 6; after node 3 (token 6): 7.
    logits = torch.full((6, 10), -5.0)
    for row, best in enumerate([5, 0, 6, 0, 7, 0]):
        logits[row, best] = 5.0
    draft = Draft([4, 5, 6, 6, 9], [1] * 5, [None] * 5, parents=[-1, -1, 0, 1, 3])
    verdict = greedy_tree(logits, draft, hand_on_probs=True)
    assert verdict.path == [1, 3] and verdict.accepted == 2 and verdict.token == 7
    assert len(verdict.q) == 3
    torch.testing.assert_close(verdict.q[1], torch.softmax(logits[2], -1))
    none = greedy_tree(logits, Draft([1, 2], [1, 1], [None, None], parents=[-1, -1]), False)
    assert none.path == [] and none.token == 5 and none.q == [None]


def test_grow_adds_the_likeliest_siblings_within_the_budget():
    q = [torch.tensor([0.5, 0.3, 0.2, 0.0]), torch.tensor([0.05, 0.05, 0.9, 0.0])]
    q.append(torch.tensor([0.4, 0.35, 0.25, 0.0]))
    chain = Draft([0, 2, 1], [1, 1, 2], q)
    tree = grow(chain, TreeSettings(budget=6, top_k=2, min_prob=0.6))
    # Position 0: 1 (0.3), 2 (0.2); position 1 is sure; position 2: 0 (0.5 * 0.9 * 0.4 = 0.18),
    # 2 (0.1125, cut by the budget).
    assert tree.tokens == [0, 2, 1, 1, 2, 0]
    assert tree.parents == [-1, 0, 1, -1, -1, 1]
    assert tree.q[3:] == [None] * 3 and tree.origins == [1, 1, 2, 1, 1, 2]
    assert grow(chain, TreeSettings(budget=3)) is chain
    assert grow(chain, TreeSettings(min_prob=0.0)) is chain


def test_tree_settings_are_checked():
    with pytest.raises(ValueError, match="budget"):
        TreeSettings(budget=0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), vocab=st.integers(2, 6), sampled=st.floats(0, 1))
def test_sample_tree_first_token_follows_p(seed, vocab, sampled):
    """One node's children alone: whatever they are, the first output token follows p."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1 + 4, vocab, generator=gen)
    p = torch.softmax(logits[0], -1)
    toy = RandomTree(vocab, seed, branch=4, max_nodes=4, sampled=sampled)
    counts = torch.zeros(vocab)
    n = 2000
    for _ in range(n):
        draft = toy.propose(np.zeros(1, dtype=np.int64), 1, None)
        verdict = sample_tree(logits[: 1 + len(draft)], draft, Sampling(1.0), gen)
        counts[draft.tokens[verdict.path[0]] if verdict.path else verdict.token] += 1
    assert (counts / n - p).abs().max() < 0.06, (counts / n, p)


# ---------------------------------------------------------------------------------------------
# Greedy exactness over random trees and ladders


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(TARGETS),
    ladder=st.sampled_from(
        [
            "tree",
            "near+tree",
            "near grown",
            "near+maxgram grown",
            "maxgram trees",
            "near+maxgram trees",
        ]
    ),
    seed=st.integers(0, 2**16),
    depth=st.integers(1, 5),
    budget=st.integers(1, 12),
    top_k=st.integers(1, 3),
    extend=st.integers(0, 4),
    max_new_tokens=st.integers(1, 20),
    prompt=st.lists(st.integers(0, 47), min_size=1, max_size=8),
)
def test_greedy_trees_give_the_targets_greedy_decoding(
    zoo, target, ladder, seed, depth, budget, top_k, extend, max_new_tokens, prompt
):
    model = target_of(zoo, target)
    prompt = [t % target[1] for t in prompt]
    want = zoo.reference(model, prompt, max_new_tokens)
    toy = RandomTree(target[1], seed, reference=zoo.reference(model, prompt, 32))
    # Branch everywhere; the drafter extends the leaves (``extend``) where it drafts first.
    grown = TreeSettings(budget=budget, top_k=top_k, min_prob=1.0, extend=extend)
    if ladder == "tree":
        cascade = cascade_of(model, [toy], [[depth]])
    elif ladder == "near+tree":  # the drafter reviews the toy's trees, the target grows its own
        near = drafter_of(zoo, target, "near")
        cascade = cascade_of(model, [near, toy], [[depth, 0], [0, 3]], tree=grown)
    elif ladder == "maxgram trees":  # the target reviews Max-Gram's branching drafts
        cascade = cascade_of(model, [MaxGram(branches=top_k + 1)], [[depth]])
    elif ladder == "near+maxgram trees":  # staged: the drafter reviews Max-Gram's trees
        near = drafter_of(zoo, target, "near")
        branchy = MaxGram(branches=top_k + 1)
        cascade = cascade_of(model, [near, branchy], [[depth, 1], [0, 3]], tree=grown)
    else:
        rest = [MaxGram()] if "maxgram" in ladder else []
        k = [[depth, 1], [0, 2]] if rest else [[depth]]
        cascade = cascade_of(model, [drafter_of(zoo, target, "far"), *rest], k, tree=grown)
    events = list(cascade.generate(prompt, max_new_tokens))
    got = ids_of(events)
    assert got == want, zoo.divergence(model, prompt, got, want)
    # Each commit is the target's kept path plus its own token; the rest was rejected.
    last = None
    for e in events:
        if isinstance(e, Review) and e.reviewer == 0:
            last = e
        elif isinstance(e, Commit):
            kept = last.kept()
            assert e.tokens == ([last.proposed[i] for i in kept] + [last.token])[: len(e.tokens)]
            assert len(e.rejected) == len(last.proposed) - len(kept)
        if isinstance(e, Review) and e.reviewer == 0 and "grown" in ladder:  # within limits
            assert len(e.proposed) <= max(budget, depth + 1) and e.depth() < max_new_tokens
    assert Stats.of(events).new_tokens == max_new_tokens


def test_trees_raise_acceptance(zoo):
    """Siblings at unsure positions keep more tokens per target pass (a far drafter), and more
    still when the drafter extends them (staged; a near drafter, whose branches are worth it)."""
    key = TARGETS[0]
    model = target_of(zoo, key)

    def rate(kind: str, tree: TreeSettings | None) -> float:
        cascade = cascade_of(model, [drafter_of(zoo, key, kind)], [[4]], tree=tree)
        return Stats.of(cascade.generate([5, 6, 7], 40)).tokens_per_forward

    assert rate("far", None) < rate("far", TreeSettings(budget=12, top_k=3, min_prob=0.9))
    rates = [rate("near", TreeSettings(16, 1, 0.9, extend)) for extend in (0, 3)]
    assert rate("near", None) < rates[0] < rates[1], rates


def test_extend_leaves_grows_every_branch_in_one_drafter_pass(zoo):
    """The drafter extends the likeliest leaves first within the budget and the depth limit,
    in one forward pass (one Review event with its own token below each leaf), and keeps only
    the context and its chain in its cache."""
    key = TARGETS[0]
    model, far = target_of(zoo, key), drafter_of(zoo, key, "far")
    tree = TreeSettings(budget=14, top_k=2, min_prob=1.0, extend=3)
    cascade = cascade_of(model, [far, MaxGram()], [[3, 0], [0, 2]], tree=tree)
    context = np.asarray(PROMPT, dtype=np.int64)
    for rung in cascade.rungs:
        rung.reset(PROMPT)
    draft = cascade.block(0, context, limit=4)
    assert draft.tokens[:3] == [draft.tokens[i] for i in draft.trunk_nodes()[:3]]
    assert len(draft) <= 14 and max(draft.depth()) <= 4
    extension = cascade._events[-1]
    assert isinstance(extension, Review) and extension.reviewer == 1 and extension.own
    grown = len(draft) - len(extension.own) - extension.accepted  # chain and siblings
    assert grown > 3 and all(q is None for q in draft.q[3:grown])  # siblings: deterministic
    assert all(q is not None for q in draft.q[grown:])  # extensions: the drafter's law
    # Every extension hangs below a leaf of the grown tree or continues another extension.
    grown_tree = Draft(draft.tokens[:grown], draft.origins[:grown], [None] * grown)
    grown_tree.parents = draft.parents[:grown]
    ends = set(tree_module.leaves(grown_tree))
    assert len(draft) > grown and all(p in ends or p >= grown for p in draft.parents[grown:])
    # The drafter's cache holds the context and its 3-token chain only, as if fed them alone.
    assert cascade.rungs[1].scorer.cache.get_seq_length() == len(PROMPT) + 3


def test_cumulative_reads_siblings_from_their_chain_neighbours_distribution():
    q0, q1 = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.1, 0.6, 0.3])
    tree = Draft([0, 1, 1, 2], [1, 1, 1, 1], [q0, q1, None, None], parents=[-1, 0, -1, 0])
    assert tree_module.cumulative(tree) == pytest.approx([0.5, 0.5 * 0.6, 0.3, 0.5 * 0.3])
    assert tree_module.leaves(tree) == [1, 2, 3]
    assert tree.trunk_nodes() == [0, 1] and tree.trunk().tokens == [0, 1]


# ---------------------------------------------------------------------------------------------
# Sampling exactness over trees


LADDERS = {
    # The drafter's chain plus top-3 deterministic siblings everywhere.
    "grown from one drafter": dict(drafters=("far",), k=[[2]], tree=TreeSettings(8, 3, 1.0)),
    # Random trees, children sampled from q or deterministic.
    "random trees": dict(drafters=("toy",), k=[[2]], tree=None),
    # Three rungs: a drafter reviews random trees, the target grows trees from its chain.
    "drafter over trees, grown": dict(
        drafters=("near", "toy"), k=[[2, 0], [0, 2]], tree=TreeSettings(6, 2, 0.9)
    ),
    # Three rungs, staged: the drafter reviews Max-Gram's branching drafts (deterministic
    # siblings), the target reviews the drafter's kept path and Max-Gram's trees.
    "drafter over Max-Gram trees": dict(
        drafters=("far", "maxgram3"),
        k=[[2, 1], [0, 2]],
        tree=None,
        prompt=[1, 2, 3, 4, 1, 2, 5, 6, 1, 2, 7, 1, 2],  # [1, 2] was followed by 3, 5 and 7
    ),
    # One drafted token and its two likeliest rivals, each extended by the drafter's own
    # sampled token: the second token always comes from an extension or the target.
    "extended from one drafter": dict(
        drafters=("far",), k=[[1]], tree=TreeSettings(6, 2, 1.0, extend=2)
    ),
    # Three rungs, staged: leaves extended by Max-Gram blocks the drafter reviews, top-k.
    "grown and extended over Max-Gram": dict(
        drafters=("far", "maxgram"),
        k=[[2, 0], [0, 2]],
        tree=TreeSettings(9, 2, 1.0, extend=3),
        top_k=6,
        prompt=[1, 2, 3, 4, 1, 2, 5, 6, 1, 2, 7, 1, 2],
    ),
    # Three rungs: drafter and Max-Gram, top-k sampling, grown at the target.
    "drafter + max-gram, grown, top-k": dict(
        drafters=("far", "maxgram"), k=[[2, 1], [0, 1]], tree=TreeSettings(6, 3, 1.0), top_k=5
    ),
}


def tree_cascade(models, spec, seed=0):
    drafters = []
    for name in spec["drafters"]:
        if name == "toy":
            drafters.append(RandomTree(12, seed=5, branch=3, max_nodes=7, sampled=0.5))
        elif name == "maxgram":
            drafters.append(MaxGram())
        elif name == "maxgram3":
            drafters.append(MaxGram(branches=3))
        else:
            drafters.append(models[name])
    sampling = Sampling(1.0, top_k=spec.get("top_k", 0))
    cascade = cascade_of(
        models["target"], drafters, spec["k"], sampling=sampling, seed=seed, tree=spec["tree"]
    )
    return cascade, sampling


@pytest.mark.parametrize("name", list(LADDERS))
def test_tree_cascade_samples_the_target_distribution(sampling_models, name):
    cascade, sampling = tree_cascade(sampling_models, LADDERS[name])
    prompt = LADDERS[name].get("prompt", PROMPT)
    results, tv = distribution_check(cascade, sampling_models["target"], sampling, 3, RUNS, prompt)
    assert passes(results), f"{name}: chi-square p-values {results}, TV(x1,x2) {tv:.3f}"
    events = list(cascade.generate(prompt, 8, seed=1))
    assert any(isinstance(e, Review) and e.parents is not None for e in events)


def test_check_rejects_a_tree_review_that_keeps_refused_children(sampling_models, monkeypatch):
    """Wrong: a refused deterministic child stays in p (only sampled children's q is removed)."""
    real = tree_module.residual

    def keep_refused(p, q):
        return p if float(q.max()) == 1.0 else real(p, q)

    monkeypatch.setattr(tree_module, "residual", keep_refused)
    results = caught(sampling_models, "grown from one drafter")
    assert min(results.values()) < 1e-6, results


def test_check_rejects_extensions_cut_by_their_own_probability(sampling_models, monkeypatch):
    """Wrong: a sampled extension node is dropped unless it is the drafter's likeliest token
    (a cut by each node's own probability, as EAGLE-2's budget is in greedy decoding), so the
    children the target sees are biased toward the drafter's favourites."""
    real = Draft.graft

    def likeliest_only(self, node, other):
        if self.is_chain:  # a block being drafted (Draft.extend), not a tree's extension
            return real(self, node, other)
        keep = 0
        for q, x in zip(other.q, other.tokens, strict=True):
            if q is not None and q[x] < q.max():
                break
            keep += 1
        real(self, node, other.path(range(keep)))

    monkeypatch.setattr(Draft, "graft", likeliest_only)
    caught(sampling_models, "extended from one drafter")


def caught(sampling_models, ladder: str) -> dict[str, float]:
    """The distribution check's p-values for a (deliberately wrong) ladder of ``LADDERS``,
    asserted to fail it."""
    cascade, sampling = tree_cascade(sampling_models, LADDERS[ladder])
    results, tv = distribution_check(
        cascade, sampling_models["target"], sampling, 3, WRONG_RUNS, PROMPT
    )
    assert not passes(results), f"went unnoticed: p-values {results}, TV {tv:.3f}"
    return results
