"""Sampling exactness where the last audit found no test that a wrong rule would fail.

Each test enumerates the exact law of the whole output (``staged_law``: every prefix of positive
probability scored, so outputs of 6 tokens stay cheap under top-k) and compares seeded runs of
the cascade with it by chi-square (every window of 1, 2 and 3 neighbouring tokens; the
machinery of test_sampling.py). The ladders are chosen so that the rule under test is exercised:

- extended trees where the budget binds and the extension blocks hold Max-Gram tokens the
  drafter reviews (outputs of 4 and 6 tokens, so the deepest nodes are reachable);
- drafters with a draft vocabulary (a cut head: q is 0 outside the kept ids) under a lenient
  inner review, and growing and extending trees;
- lossy reviews whose deferral rule keeps every drafted token (target <- far <- qwen2), so
  every block is kept whole and the bonus token after it must follow the reviewer's own p
  (engine/deferral.py: pi has no row there), the middle rung's and the target's.

Each has a deliberately wrong variant that the same check must reject (p-value below 1e-6): a
tree review that checks each sibling against the original p instead of the residual left by the
siblings refused before it, extensions that keep Max-Gram's block unreviewed, a cut drafter that
hands on its uncut distribution, a bonus token drawn without the temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
import torch
from engine_helpers import (
    P_THRESHOLD,
    SAMPLING_VOCAB,
    cascade_of,
    chi_square_pvalue,
    hf_probs,
    passes,
    reference_greedy,
    sample_runs,
)

from csdraft.engine import Cascade, MaxGram, ModelRung, Sampling
from csdraft.engine import tree as tree_module
from csdraft.engine.deferral import Deferral
from csdraft.engine.review import SamplingReview, Verdict
from csdraft.engine.tree import TreeSettings
from csdraft.models import TransformersScorer
from csdraft.models.draft_vocab import cut_head, kept_ids
from csdraft.trace import Review

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [1, 2, 3, 4, 1, 2, 5, 6, 1, 2, 7, 1, 2]  # [1, 2] was followed by 3, 5 and 7
RUNS = 800
WRONG_RUNS = 600
CHUNK = 4096


# ---------------------------------------------------------------------------------------------
# The exact law of a whole output, and the check against it


@torch.inference_mode()
def staged_law(
    steps: Sequence[torch.nn.Module], prompt: Sequence[int], sampling: Sampling
) -> torch.Tensor:
    """P(x1 .. xn) when each x_j follows ``steps[j - 1]``'s sampling distribution (transformers'
    warpers) after the prompt and x1 .. x_{j-1}, as a [V] * n tensor; only prefixes of positive
    probability are scored."""
    v = steps[0].config.vocab_size
    prefixes = torch.zeros((1, 0), dtype=torch.long)
    mass = torch.ones(1, dtype=torch.float64)
    for model in steps:
        seqs = torch.cat([torch.tensor([list(prompt)]).expand(len(prefixes), -1), prefixes], 1)
        rows = [model(s, logits_to_keep=1).logits[:, -1].float() for s in seqs.split(CHUNK)]
        joint = (mass[:, None] * hf_probs(sampling, torch.cat(rows)).double()).flatten()
        alive = joint.nonzero()[:, 0]
        prefixes = torch.cat([prefixes[alive // v], (alive % v)[:, None]], 1)
        mass = joint[alive]
    n = len(steps)
    law = torch.zeros(v**n, dtype=torch.float64)
    law[sum(prefixes[:, j] * v ** (n - 1 - j) for j in range(n))] = mass
    return law.reshape((v,) * n)


def window_pvalues(draws: torch.Tensor, law: torch.Tensor) -> dict[str, float]:
    """Chi-square p-values of the law of every window of 1, 2 and 3 neighbouring tokens."""
    n, v = law.dim(), law.shape[0]
    out = {}
    for width in (1, 2, 3):
        for start in range(n - width + 1):
            keep = range(start, start + width)
            rest = tuple(i for i in range(n) if i not in keep)
            want = law.sum(dim=rest) if rest else law
            cells = sum(draws[:, j] * v ** (width - 1 - i) for i, j in enumerate(keep))
            name = ",".join(f"x{j + 1}" for j in keep)
            out[name] = chi_square_pvalue(torch.bincount(cells, minlength=v**width), want)
    return out


def check(cascade: Cascade, law: torch.Tensor, runs: int, prompt=PROMPT) -> dict[str, float]:
    """The p-values of ``runs`` seeded generations of ``law.dim()`` tokens against ``law``."""
    draws = torch.from_numpy(sample_runs(cascade, prompt, law.dim(), runs, seed=1234))
    return window_pvalues(draws, law)


def assert_caught(results: dict[str, float]) -> None:
    """A deliberately wrong variant fails the check, and not by a near miss."""
    assert not passes(results), f"went unnoticed: p-values {results}"
    assert min(results.values()) < 1e-6, results


def target_law(models, tokens: int, sampling: Sampling, prompt=PROMPT) -> torch.Tensor:
    return staged_law([models["target"]] * tokens, prompt, sampling)


def events_of(cascade: Cascade, tokens: int, seeds: int = 20, prompt=PROMPT) -> list:
    return [e for s in range(seeds) for e in cascade.generate(prompt, tokens, seed=s)]


def test_staged_law_is_the_product_of_each_steps_distribution(sampling_models):
    """By hand for two tokens: the drafter's first, then the target's after it."""
    sampling = Sampling(0.7, top_k=4)
    target, far = sampling_models["target"], sampling_models["far"]
    law = staged_law([far, target], PROMPT, sampling)
    with torch.inference_mode():
        first = hf_probs(sampling, far(torch.tensor([PROMPT])).logits[:, -1])[0]
        seqs = torch.tensor([PROMPT + [x] for x in range(SAMPLING_VOCAB)])
        second = hf_probs(sampling, target(seqs).logits[:, -1])
    torch.testing.assert_close(law, (first[:, None] * second).double(), atol=1e-7, rtol=0)
    assert abs(float(law.sum()) - 1) < 1e-6 and int((law > 0).sum()) == 16


# ---------------------------------------------------------------------------------------------
# 1-2. Extended trees under sampling: the budget binds, Max-Gram fills the extension blocks


EXTENDED = {
    # Each ladder has its control below: the near one keeps its chain too often for a wrong
    # sibling rule to show (siblings are seldom tried), the far one keeps too few Max-Gram
    # tokens for unreviewed extensions to show (checked: both pass those wrong variants).
    #
    # A one-token chain from a near drafter and its two rivals; the likeliest leaf alone gets
    # the 2 nodes left (one Max-Gram token the drafter reviews, then its own). The prompt
    # repeats the target's greedy continuation, so Max-Gram's tokens are often worth keeping.
    "near, budget 5, extend 3, 4 tokens": dict(
        drafter="near", k=[[1, 0], [0, 2]], tree=TreeSettings(5, 2, 1.0, extend=3), tokens=4,
        sampling=Sampling(0.6, top_k=5), echo=True,
    ),
    # A two-token chain from a far drafter (often refused: the siblings are tried) and four
    # rivals; 3 nodes left for the leaves (two Max-Gram tokens and the drafter's own below the
    # likeliest), paths up to 5 deep, 6 tokens in all.
    "far, budget 9, extend 3, 6 tokens": dict(
        drafter="far", k=[[2, 0], [0, 2]], tree=TreeSettings(9, 2, 1.0, extend=3), tokens=6,
        sampling=Sampling(0.8, top_k=5), echo=False,
    ),
}  # fmt: skip


def echo_prompt(models) -> list[int]:
    """A seed, the target's greedy continuation of it, the seed again: Max-Gram proposes the
    target's likeliest tokens."""
    seed = [1, 2, 3]
    return seed + reference_greedy(models["target"], seed, 10) + seed


def extended_case(models, name: str) -> tuple[Cascade, torch.Tensor, list[int]]:
    """(cascade, the target's exact law, prompt) for a ladder of ``EXTENDED``."""
    spec = EXTENDED[name]
    cascade = cascade_of(
        models["target"],
        [models[spec["drafter"]], MaxGram()],
        spec["k"],
        sampling=spec["sampling"],
        tree=spec["tree"],
    )
    prompt = echo_prompt(models) if spec["echo"] else PROMPT
    return cascade, target_law(models, spec["tokens"], spec["sampling"], prompt), prompt


@pytest.mark.parametrize("name", list(EXTENDED))
def test_extended_trees_with_a_binding_budget_sample_the_target_distribution(sampling_models, name):
    cascade, law, prompt = extended_case(sampling_models, name)
    # The ladder exercises what it is meant to: the target's trees fill the budget, and the
    # drafter's extension passes review Max-Gram tokens, keeping some.
    reviews = [e for e in events_of(cascade, law.dim(), prompt=prompt) if isinstance(e, Review)]
    budget = EXTENDED[name]["tree"].budget
    assert any(e.reviewer == 0 and len(e.proposed) == budget for e in reviews)
    extensions = [e for e in reviews if e.own is not None]
    assert any(2 in e.origins for e in extensions) and any(e.accepted for e in extensions)
    results = check(cascade, law, RUNS, prompt)
    assert passes(results), f"{name}: chi-square p-values {results}"


def test_check_rejects_siblings_checked_against_the_original_p(sampling_models, monkeypatch):
    """Wrong: each sibling is kept with probability min(1, p(x) / q(x)) for the ORIGINAL p after
    its parent, never the residual the refused siblings before it left (``tree.sample_tree``
    with ``residual`` as the identity: the final draw, after every child is refused, then comes
    from p too). The far drafter's chain token is often refused, so its siblings are tried."""
    monkeypatch.setattr(tree_module, "residual", lambda row, q: row)
    cascade, law, prompt = extended_case(sampling_models, "far, budget 9, extend 3, 6 tokens")
    assert_caught(check(cascade, law, WRONG_RUNS, prompt))


class KeepsWholeBlock(SamplingReview):
    """Wrong: keeps every proposal unchecked, handing each on with the reviewer's p, then adds
    the reviewer's own token."""

    def __call__(self, logits, draft, lenience, deferral=None, hand_on_raw=False):
        p = self.sampling.probs(logits)
        m = len(draft)
        token = int(torch.multinomial(p[m], 1, generator=self.generator))
        return Verdict(m, token, list(p[: m + 1]), float(p[m, token]))


def test_check_rejects_extensions_that_keep_max_grams_block_unreviewed(
    sampling_models, monkeypatch
):
    """Only the extension passes are wrong (the drafter's chain is reviewed as it should be):
    a bug that empty extension blocks, as at 3 tokens, would hide."""
    real = Cascade.extend_leaves

    def unreviewed(self, *args):
        rule, self.rule = self.rule, KeepsWholeBlock(self.sampling, self.generator)
        try:
            return real(self, *args)
        finally:
            self.rule = rule

    monkeypatch.setattr(Cascade, "extend_leaves", unreviewed)
    cascade, law, prompt = extended_case(sampling_models, "near, budget 5, extend 3, 4 tokens")
    assert_caught(check(cascade, law, WRONG_RUNS, prompt))


# ---------------------------------------------------------------------------------------------
# 3. Draft vocabularies: a lenient inner review, and trees

CUT = SAMPLING_VOCAB // 2


class Tokenizer:
    """All a draft vocabulary reads of a tokenizer: its added tokens' ids."""

    def __init__(self, added: Sequence[int]) -> None:
        self.added_tokens_decoder = dict.fromkeys(added)


def cut_rung(model, name: str, added: Sequence[int] = (), lenience: float = 1.0) -> ModelRung:
    """A drafting rung over ``model`` with its head cut to the ``CUT`` lowest ids (and
    ``added``)."""
    head = model.get_output_embeddings()
    keep = kept_ids(Tokenizer(added), CUT, head.out_features)
    return ModelRung(TransformersScorer(model, name, cut_head(head, keep)), name, lenience)


def vocab_cascade(models, ladder: str, seed: int = 0) -> tuple[Cascade, Sampling, int]:
    """(cascade, sampling, tokens) for a ladder of drafters whose heads keep ``CUT`` ids."""
    target = ModelRung(TransformersScorer(models["target"], "target"), "target")
    if ladder == "lenient":
        # far reviews near leniently; near (not lenient: it hands on its own p) reviews
        # Max-Gram; far keeps the last id too.
        far = cut_rung(models["far"], "far", added=[SAMPLING_VOCAB - 1], lenience=2.5)
        near = cut_rung(models["near"], "near")
        k = [[2, 1, 0], [0, 2, 1], [0, 0, 2]]
        sampling = Sampling(1.0)
        return Cascade([target, far, near, MaxGram()], k, sampling, seed), sampling, 4
    near = cut_rung(models["near"], "near")
    # The target grows trees from near's chain (siblings from near's cut q) and near extends
    # the likeliest leaf with a Max-Gram token it reviews.
    target.tree = TreeSettings(8, 2, 1.0, extend=2)
    sampling = Sampling(1.0, top_k=8)
    return Cascade([target, near, MaxGram()], [[2, 0], [0, 2]], sampling, seed), sampling, 4


@pytest.mark.parametrize("ladder", ["lenient", "tree"])
def test_draft_vocabularies_sample_the_target_distribution(sampling_models, ladder):
    cascade, sampling, tokens = vocab_cascade(sampling_models, ladder)
    reviews = [e for e in events_of(cascade, tokens) if isinstance(e, Review)]
    drafted = [
        t for e in reviews for o, t in zip(e.origins, e.proposed, strict=True) if o in (1, 2)
    ]
    assert drafted and all(t < CUT or t == SAMPLING_VOCAB - 1 for t in drafted)
    if ladder == "tree":
        assert any(e.reviewer == 0 and e.parents is not None for e in reviews)
        assert any(e.own is not None and e.proposed for e in reviews)
    results = check(cascade, target_law(sampling_models, tokens, sampling), RUNS)
    assert passes(results), f"{ladder}: chi-square p-values {results}"


def hands_on_uncut(monkeypatch, rung_name: str, model: torch.nn.Module) -> None:
    """Wrong: rung ``rung_name`` draws from its cut head but hands on its whole head's
    distribution (renormalised over every id, not the kept ones)."""
    real = Cascade.review

    def review(self, rung, context, draft):
        reviewed = real(self, rung, context, draft)
        if rung.name == rung_name:
            out = reviewed.out
            seq = torch.tensor([[*context.tolist(), *out.tokens[:-1]]])
            with torch.inference_mode():
                logits = model(seq).logits[0, len(context) - 1 :]
            out.q = list(self.sampling.probs(logits))
        return reviewed

    monkeypatch.setattr(Cascade, "review", review)


@pytest.mark.parametrize("ladder", ["lenient", "tree"])
def test_check_rejects_a_cut_drafter_that_hands_on_its_uncut_q(
    sampling_models, monkeypatch, ladder
):
    """near (cut to half the ids) hands on its whole head's distribution: to the lenient far
    above it, or to the target growing trees from its chain."""
    hands_on_uncut(monkeypatch, "near", sampling_models["near"])
    cascade, sampling, tokens = vocab_cascade(sampling_models, ladder)
    law = target_law(sampling_models, tokens, sampling)
    assert_caught(check(cascade, law, WRONG_RUNS))


# ---------------------------------------------------------------------------------------------
# 4. The bonus token after a lossy review keeps a whole block

KEEP_ALL = Deferral("chow", 1.0)  # keeps the drafter whenever max q >= 0: pi = q everywhere
BONUS_SAMPLING = Sampling(0.6, top_k=8)


def bonus_cascade(models) -> Cascade:
    """target <- far <- qwen2, both reviews lossy with ``KEEP_ALL``: far keeps qwen2's one token
    and adds its own, the target keeps both and adds its own; twice for 6 tokens."""
    return cascade_of(
        models["target"],
        [models["far"], models["qwen2"]],
        [[2, 0], [0, 2]],
        sampling=BONUS_SAMPLING,
        deferral=[KEEP_ALL, KEEP_ALL],
    )


def bonus_law(models) -> torch.Tensor:
    """Each output token's law: qwen2's (kept by far, then by the target: pi = q twice), far's
    bonus (kept by the target), the target's bonus; twice."""
    return staged_law(
        [models["qwen2"], models["far"], models["target"]] * 2, PROMPT, BONUS_SAMPLING
    )


def test_bonus_after_a_fully_kept_lossy_block_follows_the_reviewers_p(sampling_models):
    cascade = bonus_cascade(sampling_models)
    reviews = [e for e in events_of(cascade, 6) if isinstance(e, Review)]
    # (reviewer, proposed, kept): whole blocks only (qwen2 drafts by reviewing empty ones).
    shapes = {(e.reviewer, len(e.proposed), e.accepted) for e in reviews}
    assert shapes == {(0, 2, 2), (1, 1, 1), (2, 0, 0)}, shapes
    law = bonus_law(sampling_models)
    lossless = target_law(sampling_models, 6, BONUS_SAMPLING)
    assert float((law - lossless).abs().sum()) > 0.5, "pi cannot be told from p here"
    results = check(cascade, law, RUNS)
    assert passes(results), f"chi-square p-values {results}"


class BonusWithoutTemperature(SamplingReview):
    """Wrong: after a fully kept block the bonus token is drawn at temperature 1 (top-k kept)."""

    def __call__(self, logits, draft, lenience, deferral=None, hand_on_raw=False):
        verdict = super().__call__(logits, draft, lenience, deferral, hand_on_raw)
        m = len(draft)
        if m and verdict.accepted == m:
            p = replace(self.sampling, temperature=1.0).probs(logits[m])
            verdict.token = int(torch.multinomial(p, 1, generator=self.generator))
        return verdict


def test_check_rejects_a_bonus_drawn_without_the_temperature(sampling_models):
    cascade = bonus_cascade(sampling_models)
    cascade.rule = BonusWithoutTemperature(cascade.sampling, cascade.generator)
    assert_caught(check(cascade, bonus_law(sampling_models), WRONG_RUNS))


def test_window_pvalues_see_every_position():
    """The check reads x1 .. xn: a law of 5 tokens with one position swapped fails it."""
    n, runs = 5, 2000
    gen = torch.Generator().manual_seed(0)
    step = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    law = step
    for _ in range(n - 1):
        law = law[..., None] * step
    draws = torch.multinomial(step.float(), runs * n, replacement=True, generator=gen)
    draws = draws.reshape(runs, n)
    assert min(window_pvalues(draws, law).values()) > P_THRESHOLD
    for j in range(n):
        wrong = draws.clone()
        wrong[:, j] = torch.multinomial(step.flip(0).float(), runs, True, generator=gen)
        assert min(window_pvalues(wrong, law).values()) < 1e-6, j
    assert abs(float(law.sum()) - 1) < 1e-12
