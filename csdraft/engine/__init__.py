"""The decoding engine: rungs, Max-Gram, review rules and the cascade."""

from csdraft.engine.cascade import Cascade
from csdraft.engine.maxgram import MaxGram, learn_bigram
from csdraft.engine.review import Block, Sampling
from csdraft.engine.rung import HFRung, Rung

__all__ = ["Block", "Cascade", "HFRung", "MaxGram", "Rung", "Sampling", "learn_bigram"]
