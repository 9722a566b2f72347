"""The one decoding engine: vertical and horizontal cascades driven by the k-matrix.

Rungs are numbered in ladder order: 0 is the target (a ``ModelRung``), then the drafting rungs
(``Proposer``s: neural drafters largest first, then cheap ones such as Max-Gram). Each reviewer's
block is filled as ``kmatrix.segments`` says; a neural drafter writes its segment by reviewing
blocks built the same way from its own row (vertical cascade), so no neural model decodes
autoregressively unless its row is all zeros or missing.

The degenerate ladders are this same engine: no drafters is autoregressive decoding, one neural
drafter is speculative decoding, Max-Gram alone is prompt lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from csdraft.engine import kmatrix
from csdraft.engine.crossing import Crossing
from csdraft.engine.draft import Draft
from csdraft.engine.proposer import ModelRung, Proposer
from csdraft.engine.review import GreedyReview, Reviewed, Sampling, SamplingReview, Verdict
from csdraft.engine.tree import (
    TreeSettings,
    cumulative,
    greedy_tree,
    grow,
    leaves,
    path_to,
    sample_tree,
)
from csdraft.trace import Commit, Event, Finish, Review, Start

StopCheck = Callable[[list[int]], int | None]
"""Given newly committed tokens, how many of them to keep if generation must stop, else None."""


class Cascade:
    """Generates exactly what ``rungs[0]`` would, drafting with the rungs below it; or, when
    some rung has a lossy deferral rule, what the rules' pi say (``lossless`` is False). Build
    it from a validated ladder spec (``csdraft.spec.build_cascade``): it trusts its settings."""

    def __init__(
        self,
        rungs: Sequence[Proposer],
        k_matrix: Sequence[Sequence[int]],
        sampling: Sampling | None = None,
        seed: int = 0,
        crossing: Crossing | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.rungs = list(rungs)
        self.crossing = crossing
        """Where rungs do not all share the target's tokenizer: their token spaces, and the
        drafts that cross between them as text (engine/crossing.py)."""
        for i, rung in enumerate(self.rungs):
            rung.index = i
        self.names = [r.name for r in self.rungs]
        self.k = tuple(tuple(int(v) for v in row) for row in k_matrix)
        self.sampling = sampling or Sampling()
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        lenient = any(getattr(r, "lenience", 1.0) > 1 for r in self.rungs)
        self.extender = {
            r: kmatrix.first_drafter(self.k, r)
            for r, rung in enumerate(self.rungs)
            if getattr(rung, "tree", None) is not None and rung.tree.extend
        }
        """Per reviewer whose trees ``extend``: the drafter that extends them (its first
        segment's; ``spec.validate`` made sure it is a model that scores trees)."""
        trees = any(getattr(r, "tree", None) is not None for r in self.rungs)
        lossy = [getattr(r, "lossy", False) for r in self.rungs]
        self.lossless = not any(lossy)
        self.hand_on_raw = [any(lossy[:i]) for i in range(len(self.rungs))]
        """Per rung: whether a lossy review above it judges its outputs' raw distributions."""
        if self.sampling.greedy:  # growing trees and lossy reviews need the probabilities
            self.rule = GreedyReview(hand_on_probs=lenient or trees or not self.lossless)
        else:
            self.rule = SamplingReview(self.sampling, self.generator)
        self.busy = busy if self.sampling.greedy and self.lossless else None
        """Asked before each of the target's blocks; True: the block is undrafted (the target's
        own token, one a pass). Only a greedy, lossless generation asks: its output is the
        target's greedy decoding whatever the drafts (``LadderSpec.drafts_below``)."""
        self.vocab_size = self.rungs[0].vocab_size
        self.harvesters = [r for r in self.rungs if getattr(r, "wants_logits", False)]
        """Rungs that learn from every review's logits (token recycling's ``harvest``)."""
        self._events: list[Event] = []
        self._t0 = 0.0

    @property
    def deferral(self) -> list[dict | None]:
        """Per rung, for the trace: its lossy rule and alpha, or None (empty when lossless)."""
        if self.lossless:
            return []
        return [
            {"rule": r.deferral.rule, "alpha": r.deferral.alpha}
            if getattr(r, "lossy", False)
            else None
            for r in self.rungs
        ]

    @property
    def kinds(self) -> list[str]:
        """Each rung's role for the trace: 'target', then each drafter's ``kind``."""
        return ["target", *(r.kind for r in self.rungs[1:])]

    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        eos_ids: Sequence[int] = (),
        stop: StopCheck | None = None,
        seed: int | None = None,
    ) -> Iterator[Event]:
        """Yield the events of one generation; ``Commit`` events carry the final tokens. Every
        generation starts fresh: rungs reset, the sampler seeded (``seed``, else the cascade's),
        and the rungs' caches are freed when it ends."""
        if len(prompt) == 0:
            raise ValueError("the prompt must hold at least one token")
        self._t0 = time.perf_counter()
        self._events = []
        self.generator.manual_seed(self.seed if seed is None else seed)
        owns = self.crossing.reset(prompt) if self.crossing else [prompt] * len(self.rungs)
        for rung, own in zip(self.rungs, owns, strict=True):
            rung.reset(own)
        try:
            yield from self._generate(
                np.asarray(prompt, dtype=np.int64), max_new_tokens, eos_ids, stop
            )
        finally:
            for rung in self.rungs:
                rung.release()

    def _generate(
        self, seq: np.ndarray, max_new_tokens: int, eos_ids: Sequence[int], stop: StopCheck | None
    ) -> Iterator[Event]:
        eos = set(eos_ids)
        target = self.rungs[0]
        yield Start(self.names, len(seq), t=0.0, kinds=self.kinds, deferral=self.deferral)
        produced = 0
        while produced < max_new_tokens:
            if self.busy is not None and self.busy():
                draft = Draft()
            else:
                draft = self.block(0, seq, max_new_tokens - produced - 1)
            reviewed = self.review(target, seq, draft)
            out, kept = reviewed.out, set(reviewed.kept)
            lost = [i for i in range(len(draft)) if i not in kept]
            keep = len(out)
            reason = ""
            for i, token in enumerate(out.tokens):
                if token in eos:
                    keep, reason = i + 1, "eos"
                    break
            if stop is not None and (cut := stop(out.tokens[:keep])) is not None:
                keep, reason = min(max(cut, 0), keep), "stop"
            yield from self._flush()
            committed = out.tokens[:keep]
            yield Commit(
                committed,
                out.origins[:keep],
                [draft.tokens[i] for i in lost],
                [draft.origins[i] for i in lost],
                t=self.elapsed(),
            )
            seq = np.concatenate([seq, np.asarray(committed, dtype=np.int64)])
            n = len(self.rungs)
            news = self.crossing.commit(committed) if self.crossing else [committed] * n
            for rung, new in zip(self.rungs, news, strict=True):
                rung.commit(new)
            produced += keep
            if reason:
                yield Finish(reason, t=self.elapsed())
                return
        yield Finish("length", t=self.elapsed())

    def tree_rule(self, logits: torch.Tensor, draft: Draft) -> Verdict:
        """The review of a tree draft, greedy or sampled as the cascade's rule is (never
        lenient: ``spec.validate`` keeps trees from lenient reviewers)."""
        if self.sampling.greedy:
            return greedy_tree(logits, draft, self.rule.hand_on_probs)
        return sample_tree(logits, draft, self.sampling, self.generator)

    def elapsed(self) -> float:
        """Seconds since the current generation started (the clock events are stamped with)."""
        return time.perf_counter() - self._t0

    def _flush(self) -> Iterator[Event]:
        events, self._events = self._events, []
        yield from events

    def block(self, reviewer: int, context: np.ndarray, limit: int) -> Draft:
        """The draft ``reviewer`` checks next: segments from the drafters below it, as its row
        of the k-matrix says, at most ``limit`` tokens in all."""
        draft = Draft()
        for drafter, n in kmatrix.segments(self.k, reviewer, limit):
            ctx = np.concatenate([context, np.asarray(draft.tokens, dtype=np.int64)])
            if self.crossing and self.crossing.crosses(reviewer, drafter):
                segment = self.crossing.propose(reviewer, self.rungs[drafter], ctx, n, self)
            else:
                segment = self.rungs[drafter].propose(ctx, n, self)
            draft.extend(segment)
            if len(segment) < n or not segment.is_chain:
                break  # the drafter ran out or lost confidence: later tokens would be refused
        tree = getattr(self.rungs[reviewer], "tree", None)
        if tree is None or not draft.is_chain or not draft:
            return draft
        draft = grow(draft, tree)
        return self.extend_leaves(reviewer, context, draft, tree, limit) if tree.extend else draft

    def extend_leaves(
        self, reviewer: int, context: np.ndarray, draft: Draft, tree: TreeSettings, limit: int
    ) -> Draft:
        """A tree's second stage: the drafter that wrote ``draft``'s chain extends its leaves,
        likeliest first (``cumulative``), each by a block from the rungs below it (their
        trunk), which it reviews as it reviews any block, adding its own token; all blocks in
        one forward pass over the whole tree. A leaf gets at most ``tree.extend`` nodes and only
        what the budget and ``limit`` (the deepest path) leave room for, reserved before the
        pass, so no node is dropped for its own value (sampling stays exact: a sampled node's
        presence depends only on its ancestors and on draws independent of it)."""
        drafter = self.rungs[self.extender[reviewer]]
        depth, cum = draft.depth(), cumulative(draft)
        room = tree.budget - len(draft)
        scored, blocks = draft.copy(), []
        for leaf in sorted(leaves(draft), key=lambda i: -cum[i]):
            n = min(tree.extend, limit - depth[leaf], room)
            if n <= 0:
                continue
            path = [draft.tokens[i] for i in path_to(draft, leaf)]
            ctx = np.concatenate([context, np.asarray(path, dtype=np.int64)])
            block = self.block(drafter.index, ctx, n - 1).trunk()
            blocks.append((leaf, len(scored), block))
            scored.graft(leaf, block)
            room -= len(block) + 1
        if not blocks:
            return draft
        logits, forward_s = self._score(drafter, context, scored)
        if not scored.is_chain:  # the drafter's cache keeps the chain, the likeliest path
            drafter.scorer.keep_path(draft.trunk_nodes())
        proposed, origins, parents, kept, own = [], [], [], [], []
        for leaf, start, block in blocks:
            rows = [leaf + 1, *range(start + 1, start + 1 + len(block))]
            verdict = self.rule(logits[rows], block, drafter.lenience)
            out = block.path(range(verdict.accepted))
            out.tokens.append(verdict.token)
            out.origins.append(drafter.index)
            draft.graft(leaf, Draft(out.tokens, out.origins, verdict.q))
            kept += [len(proposed) + i for i in range(verdict.accepted)]
            parents += [-1 if i == 0 else len(proposed) + i - 1 for i in range(len(block))]
            proposed += block.tokens
            origins += block.origins
            own.append(verdict.token)
        at = self.elapsed()
        self._events.append(
            Review(
                drafter.index,
                proposed,
                origins,
                len(kept),
                own[0],
                forward_s,
                at,
                parents=parents,
                path=kept,
                own=own,
            )
        )
        return draft

    def _score(
        self, rung: ModelRung, context: np.ndarray, draft: Draft
    ) -> tuple[torch.Tensor, float]:
        """One forward pass of ``rung`` over ``draft`` (a chain, or a tree in one masked pass):
        its logits over the target's vocabulary, and the seconds it took."""
        start = time.perf_counter()
        seen = context[rung.offset :]  # a drafter with a window skips the prompt's start
        if draft.is_chain:
            full = np.concatenate([seen, np.asarray(draft.tokens, dtype=np.int64)])
            logits = rung.scorer.score(full, len(seen))
        else:
            logits = rung.scorer.score_tree(seen, draft)
        size = self.crossing.rung_width(rung.index) if self.crossing else self.vocab_size
        if rung.index and size and logits.shape[-1] != size:
            logits = fit_vocab(logits, size)
        if self.harvesters:  # row 0 follows the context's last token, row i + 1 node i
            tokens = [int(context[-1]), *draft.tokens]
            for below in self.harvesters:
                if not (self.crossing and self.crossing.crosses(rung.index, below.index)):
                    below.harvest(rung.index, tokens, logits)  # its own token space only
        return logits, time.perf_counter() - start

    def review(self, rung: ModelRung, context: np.ndarray, draft: Draft) -> Reviewed:
        """One forward pass of ``rung`` over ``draft`` (recorded as a ``Review`` event): the
        kept proposals plus its own token, its probability of that token, and which proposals
        it kept."""
        chain = draft.is_chain
        logits, forward_s = self._score(rung, context, draft)
        if not chain:
            verdict = self.tree_rule(logits, draft)
            rung.scorer.keep_path(verdict.path)
        elif rung.lossy or self.hand_on_raw[rung.index]:
            verdict = self.rule(
                logits, draft, rung.lenience, rung.deferral, self.hand_on_raw[rung.index]
            )
        else:  # the lossless fast path: no raw distributions computed
            verdict = self.rule(logits, draft, rung.lenience)
        a = verdict.accepted
        self._events.append(
            Review(
                rung.index,
                draft.tokens,
                draft.origins,
                a,
                verdict.token,
                forward_s,
                self.elapsed(),
                None if chain else list(draft.parents),
                None if chain else verdict.path,
            )
        )
        nodes = verdict.kept()
        kept = draft.path(nodes)
        out = Draft(
            [*kept.tokens, verdict.token],
            [*kept.origins, rung.index],
            verdict.q,
            q_raw=verdict.q_raw,
        )
        return Reviewed(out, verdict.confidence, nodes)


def fit_vocab(logits: torch.Tensor, size: int) -> torch.Tensor:
    """A drafter's logits over the target's vocabulary: rows past the target's cut (padding a
    drafter has and the target lacks, never proposable), missing rows filled with -inf (ids the
    drafter cannot propose). The target's logits are never touched, so its output is exact."""
    width = logits.shape[-1]
    if width > size:
        return logits[..., :size]
    pad = logits.new_full((*logits.shape[:-1], size - width), float("-inf"))
    return torch.cat([logits, pad], dim=-1)
