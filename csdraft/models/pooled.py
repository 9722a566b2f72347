"""Model sessions whose passes go through a ``Batcher`` (``csdraft.engine.batch``): what a
generation's cascade scores with when it runs beside others. ``pooled_models`` wraps a ladder's
loaded models for one request; ``build_cascade`` then builds its rungs over them as over the
models themselves (each session its own cache), so the engine is unchanged.

Which sessions share passes (and prompt prefixes) across sequences is decided here, once
(``shares_passes``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from csdraft.engine.batch import Batcher
from csdraft.engine.draft import Draft
from csdraft.models.prefixes import PrefixStore

if TYPE_CHECKING:
    from csdraft.spec import LadderSpec


def shares_passes(model: Any, target: bool, greedy_lossless: bool) -> bool:
    """THE rule: whether a request's session of ``model`` runs its chain passes in one forward
    pass with other requests' sessions of the same model, and starts from the cache rows of
    other requests' prompts (``prefixes``); else it runs its passes alone, from scratch.

    - A batch-invariant model (the int8 target: ``RowInt8Linear``, row-wise attention) computes
      each row bit for bit as alone, so sharing a pass or copying a prompt's rows changes
      nothing: always shared.
    - Any other model computes something slightly different beside other rows (fbgemm's dynamic
      int8 takes one activation scale per pass; float GEMMs block by batch size). For a drafter
      of a greedy, lossless request that changes only the drafts, never the output (the target
      decides): shared. For a sampled or lossy request the drafter's distributions enter the
      output, and a target's logits always do: alone, so the request's text never depends on
      what shares its batch or ran before it."""
    if getattr(model, "batch_invariant", False):
        return True
    return greedy_lossless and not target


class PooledModel:
    """A loaded model seen through a batcher: ``session`` gives a ``PooledScorer``; every
    other attribute is the model's."""

    def __init__(self, model: Any, batcher: Batcher, shared: bool, order: int = 0) -> None:
        self.model = model
        self.batcher = batcher
        self.shared = shared
        self.order = order
        """Its rung's place in the ladder: the batcher runs deeper (cheaper) rungs' shared
        passes first, so the target's gather every generation that reaches them."""

    def session(self, name: str, vocab: int | None = None) -> PooledScorer:
        """A fresh session of the model (its own cache) whose passes the batcher runs."""
        scorer = self.model.session(name, vocab)
        prefixes = getattr(self.model, "prefixes", None)
        return PooledScorer(scorer, self.batcher, self.shared, self.order, prefixes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def pooled_models(models: Mapping[str, Any], spec: LadderSpec, batcher: Batcher) -> dict[str, Any]:
    """The loaded ``models`` (by rung name, target first) as one request of ``spec`` (its
    generation settings) sees them through ``batcher``."""
    greedy_lossless = spec.generation.sampling.greedy and spec.lossless
    place = {rung.name: i for i, rung in enumerate(spec.rungs)}
    return {
        name: PooledModel(
            m, batcher, shares_passes(m, place.get(name) == 0, greedy_lossless), place.get(name, 0)
        )
        for name, m in models.items()
    }


class PooledScorer:
    """A session (``Scorer``) whose forward passes run in the batcher's steps: chain passes of
    a session that ``shares_passes`` with others of its model (transformers' lean path) go
    through one ragged pass (``LeanDecoder.many``); every other pass (token trees, other
    backends, sessions that must run alone) runs alone, in the same step. A session that
    shares passes also starts from, and adds to, its model's store of prompt prefixes
    (``prefixes``): the same rule makes both exact."""

    def __init__(
        self,
        scorer: Any,
        batcher: Batcher,
        shared: bool,
        order: int = 0,
        prefixes: PrefixStore | None = None,
    ) -> None:
        self.scorer = scorer
        self.name = scorer.name
        self.batcher = batcher
        self.order = order
        lean = getattr(scorer, "lean", None)
        self.group: Hashable | None = None
        if shared and lean is not None and hasattr(scorer, "feed"):
            self.group = (order, id(scorer.model), id(scorer.head))
            scorer.prefixes = prefixes

    @property
    def scores_trees(self) -> bool:
        """Whether its session scores token trees (``Scorer.scores_trees``)."""
        return getattr(self.scorer, "scores_trees", False)

    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        if self.group is None:
            return self.batcher.submit(_alone, (self.scorer.score, (seq, start)))
        ids, keep = self.scorer.feed(seq, start)
        logits = self.batcher.submit(_ragged, (self.scorer, ids, keep), self.group, self.order)
        self.scorer.tokens = seq
        return logits

    def score_tree(self, context: np.ndarray, draft: Draft) -> torch.Tensor:
        return self.batcher.submit(_alone, (self.scorer.score_tree, (context, draft)))

    def keep_path(self, path: Sequence[int]) -> None:
        self.scorer.keep_path(path)

    def reset(self) -> None:
        self.scorer.reset()


def _alone(payloads: list[tuple[Any, tuple]]) -> list[Any]:
    """One job's own pass: its session's method on its arguments."""
    (method, args), *_ = payloads
    return [method(*args)]


def _ragged(payloads: list[tuple[Any, torch.Tensor, int]]) -> list[torch.Tensor]:
    """Several sessions' chain passes of one model in one ragged pass: each session's logits,
    as its own ``score`` returns them."""
    lean = payloads[0][0].lean
    logits = lean.many([(ids, scorer.cache, keep) for scorer, ids, keep in payloads])
    return [x[0].float().cpu() for x in logits]
