"""Drafters whose vocabulary size differs from the target's (Qwen2.5 sizes pad to 151,936 or
152,064 rows): the drafters' logits are fitted to the target's width, the target's are never
touched, so greedy output stays the target's and sampling follows its distribution."""

from __future__ import annotations

import copy

import pytest
import torch
from engine_helpers import (
    SAMPLING_VOCAB,
    build_model,
    distribution_check,
    ids_of,
    passes,
    reference_greedy,
    scorer,
)

from csdraft.engine import Cascade, MaxGram, ModelRung, Sampling
from csdraft.engine.cascade import fit_vocab

pytestmark = pytest.mark.usefixtures("one_thread")

V = SAMPLING_VOCAB
PROMPT = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]


def resized(model: torch.nn.Module, vocab: int) -> torch.nn.Module:
    """A copy of ``model`` with ``vocab`` rows: shared ids keep their weights (a narrower copy
    drops the last rows, a wider one gets new random rows)."""
    other = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        other.resize_token_embeddings(vocab, mean_resizing=False)
    return other.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    target = build_model("llama", V, hidden=16, layers=1, seed=0)
    return {"target": target, "narrow": resized(target, V - 3), "wide": resized(target, V + 5)}


def cascade(models, drafter: str, sampling: Sampling | None = None, maxgram: bool = False):
    rungs = [
        ModelRung(scorer(models["target"], "target"), "target", vocab_size=V),
        ModelRung(scorer(models[drafter], drafter), drafter),
    ] + ([MaxGram()] if maxgram else [])
    k = [[4, 2], [0, 3]] if maxgram else [[4]]
    return Cascade(rungs, k, sampling=sampling)


def test_fit_vocab():
    logits = torch.arange(6.0).reshape(2, 3)
    assert fit_vocab(logits, 2).tolist() == [[0, 1], [3, 4]]
    padded = fit_vocab(logits, 5)
    assert padded.shape == (2, 5) and torch.isinf(padded[:, 3:]).all()
    assert (padded[:, 3:] < 0).all()


class PaddedTarget:
    """The target's scorer with its last rows never chosen (-inf), as a real model's
    vocabulary padding never is: the ids a narrower drafter lacks never occur."""

    def __init__(self, inner, rows: int) -> None:
        self.inner, self.rows, self.name = inner, rows, inner.name

    def score(self, seq, start):
        logits = self.inner.score(seq, start).clone()
        logits[..., self.rows :] = float("-inf")
        return logits

    def reset(self) -> None:
        self.inner.reset()


@pytest.mark.parametrize("maxgram", [False, True])
def test_greedy_with_a_narrower_drafter(models, maxgram):
    def target():
        return ModelRung(PaddedTarget(scorer(models["target"], "t"), V - 3), "t", vocab_size=V)

    ar = ids_of(Cascade([target()], []).generate(PROMPT, 24))
    drafter = ModelRung(scorer(models["narrow"], "narrow"), "narrow")
    rungs = [target(), drafter] + ([MaxGram()] if maxgram else [])
    got = ids_of(Cascade(rungs, [[4, 2], [0, 3]] if maxgram else [[4]]).generate(PROMPT, 24))
    assert got == ar and max(got) < V - 3


@pytest.mark.parametrize("maxgram", [False, True])
def test_greedy_with_a_wider_drafter(models, maxgram):
    got = ids_of(cascade(models, "wide", maxgram=maxgram).generate(PROMPT, 24))
    assert got == reference_greedy(models["target"], PROMPT, 24)
    assert max(got) < V  # the drafter's extra rows are never proposed


def test_a_drafter_that_cannot_read_every_token_is_refused():
    from csdraft.api import check_vocab
    from csdraft.errors import CsdraftError

    check_vocab("l", "d", 152_064, 151_665)  # padding rows beyond the tokenizer: fine
    with pytest.raises(CsdraftError, match="drafter 'd' has 100 vocabulary rows but the tokenizer"):
        check_vocab("l", "d", 100, 151_665)


@pytest.mark.parametrize("drafter", ["wide"])
def test_sampling_follows_the_target(models, drafter):
    sampling = Sampling(temperature=1.0)
    results, tv = distribution_check(
        cascade(models, drafter, sampling), models["target"], sampling, 2, 1200, PROMPT
    )
    assert passes(results), f"p-values {results}, TV {tv:.3f}"
