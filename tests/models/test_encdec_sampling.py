"""Exact sampling with encoder-decoder rungs: the tokens a T5 or BART target accepts follow its
own sampling distribution whatever drafts them, checked as tests/engine/test_sampling.py checks
decoder-only ladders (the exact law enumerated over a vocabulary of 12, chi-square tests of the
cascade's draws; ``engine_helpers.distribution_check``), with a deliberately wrong review that
the same check must reject."""

from __future__ import annotations

import pytest
from engine_helpers import (
    ResampleFromP,
    cascade_of,
    distribution_check,
    passes,
    perturb,
)
from seq2seq_models import bart_config, random_model, t5_config

from csdraft.engine import MaxGram, Sampling

pytestmark = pytest.mark.usefixtures("one_thread")

V = 12
PROMPT = [3, 4, 5, 6, 3, 4, 5, 6, 3, 4]  # repetitive, so Max-Gram proposes
RUNS = 1000  # per correct ladder (each draw runs transformers' T5/BART forward passes)
WRONG_RUNS = 600


@pytest.fixture(scope="module")
def models():
    t5 = random_model(t5_config(16, 1, vocab=V), 0)
    bart = random_model(bart_config(16, 1, vocab=V), 0)
    return {
        "t5": t5,
        "t5-near": perturb(t5, 0.03, seed=1),
        "t5-far": perturb(t5, 0.1, seed=2),
        "bart": bart,
        "bart-far": perturb(bart, 0.1, seed=2),
    }


WRONG = dict(
    target="t5", drafters=("t5-far",), maxgram=False, k=[[2]], lenience=1.0,
    sampling=Sampling(1.0), max_new_tokens=3,
)  # fmt: skip
LADDERS = {
    "t5, two drafters + max-gram, lenient, top-k, top-p": dict(
        target="t5", drafters=("t5-near", "t5-far"), maxgram=True,
        k=[[3, 1, 1], [0, 2, 1], [0, 0, 2]], lenience=[2.0, 4.0],
        sampling=Sampling(0.8, top_k=6, top_p=0.9), max_new_tokens=4,
    ),
    "bart, drafter + max-gram": dict(
        target="bart", drafters=("bart-far",), maxgram=True, k=[[2, 1], [0, 2]], lenience=1.0,
        sampling=Sampling(1.2), max_new_tokens=4,
    ),
}  # fmt: skip


def make_cascade(models, spec):
    drafters = [models[d] for d in spec["drafters"]] + ([MaxGram()] if spec["maxgram"] else [])
    return cascade_of(
        models[spec["target"]],
        drafters,
        spec["k"],
        lenience=spec["lenience"],
        sampling=spec["sampling"],
    )


@pytest.mark.parametrize("name", list(LADDERS))
def test_cascade_samples_the_target_distribution(models, name):
    spec = LADDERS[name]
    results, tv = distribution_check(
        make_cascade(models, spec),
        models[spec["target"]],
        spec["sampling"],
        spec["max_new_tokens"],
        RUNS,
        PROMPT,
    )
    assert passes(results), f"{name}: chi-square p-values {results}, TV(x1,x2) {tv:.3f}"


def test_check_rejects_a_wrong_review(models):
    """Teeth: resampling from p after a rejection (instead of p - q) is caught."""
    spec = WRONG
    cascade = make_cascade(models, spec)
    cascade.rule = ResampleFromP(cascade.sampling, cascade.generator)
    results, tv = distribution_check(
        cascade, models["t5"], spec["sampling"], spec["max_new_tokens"], WRONG_RUNS, PROMPT
    )
    assert not passes(results), f"went unnoticed: p-values {results}, TV {tv:.3f}"
    assert min(results.values()) < 1e-6, results
