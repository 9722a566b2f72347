"""The decoding engine: drafts, proposers (model rungs, Max-Gram), review rules, deferral
rules (lossy on purpose), the k-matrix and the cascade. It knows no backend: a model rung is
anything with a ``Scorer``."""

from csdraft.engine.cascade import Cascade
from csdraft.engine.deferral import Deferral
from csdraft.engine.draft import Draft
from csdraft.engine.maxgram import MaxGram, learn_bigram
from csdraft.engine.proposer import ModelRung, Proposer, Scorer
from csdraft.engine.review import Sampling

__all__ = [
    "Cascade",
    "Deferral",
    "Draft",
    "MaxGram",
    "ModelRung",
    "Proposer",
    "Sampling",
    "Scorer",
    "learn_bigram",
]
