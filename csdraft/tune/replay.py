"""The replay predictor: the real engine (``Cascade``) run over the recorded continuations with
every neural rung a ``ModelRung`` over a ``ReplayRung`` (a ``Scorer`` answering from its
teacher-forced record) and the real Max-Gram, every forward pass costed by the measured curves.

Greedy review is deterministic, so this is an exact replay of everything the target accepts
(all on the reference path); where a drafter's own draft leaves the reference path (tokens the
target rejects anyway) the recorded statistics at the same position stand in. Every forward pass
costs the measured curve at the number of tokens the rung really feeds (block plus catch-up
after rejections, the prompt on the first pass; a target's token tree by the tree curve, a
drafter's pass extending one by its own curve at the nodes it feeds); the engine's own work
(blocks, reviews, Max-Gram, events) costs what it costs in the replay itself, which runs that
very code, timed;
and each review adds the measured full-vocabulary argmax (lenient settings: and softmax) that
the replay's compact vocabulary skips. A drafter's confidence in its own token (what
min_confidence acts on) is its recorded probability at that position. With greedy decoding a
Monte Carlo over the recorded match sequences has no randomness left to sample, so one replay
per prompt is the whole simulation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from csdraft.engine import Cascade, MaxGram, ModelRung, Proposer, Sampling, kmatrix
from csdraft.engine.draft import Draft
from csdraft.engine.proposer import common_prefix
from csdraft.engine.tree import TreeSettings
from csdraft.trace import Commit, Review
from csdraft.tune import settings
from csdraft.tune.analytic import Prediction
from csdraft.tune.calibration import Calibration, PromptRecord
from csdraft.tune.settings import Lenience, PerDrafter


class ReplayRung:
    """A neural rung's session replayed from its teacher-forced record (a ``Scorer``).

    ``score`` answers, for each position asked, the logits recorded at that position of the
    reference continuation (top-K tokens at their log-probabilities, the rest of a compact
    vocabulary spread thin below them; past the record, a dummy token nobody proposes), and
    logs in ``fed`` how many tokens the real session would have fed (the same cache arithmetic
    as a model's session), which is what its forward pass costs. ``reset`` forgets the cache
    only (the engine calls it when a generation starts and ends); ``clear`` empties the log.
    """

    scores_trees = True  # ``score_tree`` and ``keep_path`` below

    def __init__(
        self,
        name: str,
        table: torch.Tensor,
        prompt_len: int,
        reference: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.table = table
        self.prompt_len = prompt_len
        self.reference = list(reference)
        """The reference continuation, along which every recorded row is the real one."""
        self.fed: list[int] = []
        self.fed_tree: list[int] = []
        """Tokens fed by the passes that scored a token tree (costed by the tree curve)."""
        self.seconds = 0.0  # spent in ``score`` itself (not part of the engine's overhead)
        self.tokens = np.empty(0, dtype=np.int64)
        self._fresh = True
        self._tree: tuple[np.ndarray, Draft] | None = None  # the last tree scored

    def reset(self) -> None:
        self.tokens = np.empty(0, dtype=np.int64)
        self._fresh = True

    def clear(self) -> None:
        """Forget the cache and the log: a new replay starts."""
        self.reset()
        self.fed = []
        self.fed_tree = []
        self.seconds = 0.0

    def _kept(self, seq: np.ndarray, most: int) -> int:
        """How many tokens of ``seq`` the real session's cache would keep (at most ``most``)."""
        keep = 0 if self._fresh else min(common_prefix(self.tokens, seq), most)
        self._fresh = False
        return keep

    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        began = time.perf_counter()
        self.fed.append(len(seq) - self._kept(seq, start - 1))
        self.tokens = seq
        first = start - self.prompt_len
        out = self.table[first : len(seq) - self.prompt_len + 1]
        self.seconds += time.perf_counter() - began
        return out

    def score_tree(self, context: np.ndarray, draft: Draft) -> torch.Tensor:
        """Rows after the context and after each node of ``draft``: a node below such nodes
        whose token is the recorded argmax there or the reference's token (a drafter's second
        choice the target takes, whose row the record holds) gets the recorded row of its
        depth, any other node a row whose argmax is the dummy token (a greedy review never
        walks past it, so its row is never read). Feeds the catch-up plus every node."""
        began = time.perf_counter()
        c = len(context)
        self.fed_tree.append(c - self._kept(context, c - 1) + len(draft))
        base = c - self.prompt_len
        rows = [self.table[base]]
        on_path: list[bool] = []
        dummy = self.table[-1]
        for i, (parent, depth) in enumerate(zip(draft.parents, draft.depth(), strict=True)):
            x, at = draft.tokens[i], base + depth - 1
            on_ref = at < len(self.reference) and self.reference[at] == x
            good = (parent < 0 or on_path[parent]) and (
                on_ref or int(rows[parent + 1].argmax()) == x
            )
            on_path.append(good)
            rows.append(self.table[min(base + depth, len(self.table) - 1)] if good else dummy)
        self._tree = (context, draft)
        self.seconds += time.perf_counter() - began
        return torch.stack(rows)

    def keep_path(self, path: Sequence[int]) -> None:
        """The cache keeps the context and the accepted path of the last tree."""
        assert self._tree is not None, "keep_path follows a score_tree"
        context, draft = self._tree
        self.tokens = np.concatenate(
            [context, np.asarray([draft.tokens[i] for i in path], dtype=np.int64)]
        )


def replay_table(
    ids: np.ndarray,
    probs: np.ndarray,
    rows: int,
    vocab: int,
    dummy: int,
    force: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits [rows, vocab] whose softmax puts each recorded top-K token at its recorded
    probability, the remaining mass thinly on the rest, and (``force``) the given token first."""
    table = np.full((rows, vocab), -60.0, dtype=np.float32)
    n = min(len(ids), rows)
    p = probs[:n].astype(np.float64)
    kk = p.shape[1]
    rest = np.clip(1.0 - p.sum(1), 1e-12, None) / max(vocab - kk, 1)
    floor = np.log(np.minimum(rest, p[:, -1] * 0.5).clip(1e-30))
    table[:n] = floor[:, None]
    np.put_along_axis(table[:n], ids[:n], np.log(p.clip(1e-30)).astype(np.float32), axis=1)
    if force is not None:
        for t, token in enumerate(force[:n]):
            if table[t].argmax() != token:
                table[t, token] = table[t].max() + 1.0
    table[n:, dummy] = 0.0
    return torch.from_numpy(table)


@dataclass
class _ReplayPrompt:
    """One recorded prompt in the replay's compact vocabulary: a replayed session per neural
    rung (target first), Max-Gram's compact bigram table, prompt, reference and eos ids."""

    sessions: list[ReplayRung]
    bigram: dict[int, int]
    prompt: list[int]
    ref: list[int]
    eos: list[int]


class Replay:
    """Predicts any k-matrix, lenience and min_confidence by running the engine over the
    recorded prompts (see the module docstring): exact for what the target accepts, measured
    costs for every forward pass the engine would make. Each setting runs the sub-ladder its
    k-matrix uses (``kmatrix.sub_ladder``), as the real runs do."""

    def __init__(self, cal: Calibration) -> None:
        self.cal = cal
        self.prompts = [self._build(rec) for rec in cal.records]
        self._ar: list[float] | None = None

    def _build(self, rec: PromptRecord) -> _ReplayPrompt:
        cal = self.cal
        n = cal.n_neural
        real: set[int] = set(rec.prompt) | set(rec.ref) | set(cal.eos_ids)
        for ids in rec.top_ids:
            real.update(int(t) for t in ids.ravel())
        bigram = cal.bigram or {}
        frontier = [t for t in real if t in bigram]
        while frontier:  # Max-Gram's fallback chains through the bigram table
            nxt = [bigram[t] for t in frontier if bigram[t] not in real]
            real.update(nxt)
            frontier = [t for t in nxt if t in bigram]
        order = sorted(real)
        index = {t: i for i, t in enumerate(order)}
        vocab = len(order) + n
        rows = max(cal.max_new_tokens, len(rec.ref)) + 2
        sessions = []
        for r in range(n):
            ids = np.vectorize(index.__getitem__, otypes=[np.int64])(rec.top_ids[r])
            force = [index[t] for t in rec.ref] if r == 0 else None
            table = replay_table(ids, rec.top_p[r], rows, vocab, len(order) + r, force)
            sessions.append(
                ReplayRung(cal.names[r], table, len(rec.prompt), [index[t] for t in rec.ref])
            )
        compact = {index[a]: index[b] for a, b in bigram.items() if a in index and b in index}
        return _ReplayPrompt(
            sessions,
            compact,
            [index[t] for t in rec.prompt],
            [index[t] for t in rec.ref],
            [index[t] for t in cal.eos_ids if t in index],
        )

    def _proposer(
        self, p: _ReplayPrompt, rung: int, lenience: Lenience, floor: PerDrafter
    ) -> Proposer:
        """Drafting rung ``rung`` (ladder index) of a replayed prompt: a model rung over its
        replayed session, or Max-Gram over the compact vocabulary."""
        cal = self.cal
        if cal.neural(rung):
            return ModelRung(
                p.sessions[rung],
                cal.names[rung],
                settings.of_rung(lenience, rung),
                settings.of_rung(floor, rung),
            )
        assert cal.maxgram is not None and rung == cal.maxgram_rung
        return MaxGram(cal.maxgram.max_ngram, cal.maxgram.min_ngram, p.bigram)

    def _run(
        self,
        p: _ReplayPrompt,
        k: Sequence[Sequence[int]],
        lenience: Lenience,
        floor: PerDrafter,
        tree: TreeSettings | None = None,
    ) -> tuple[float, int, bool]:
        """Replay one prompt: (predicted seconds, target reviews, output equals reference).

        Predicted seconds = the measured forward cost of every pass at the tokens it feeds +
        the replay's own wall time outside the replayed forwards (the engine's Python: blocks,
        reviews, Max-Gram, events) + the full-vocabulary argmax (and, lenient, softmax) that a
        real review adds over the replay's compact vocabulary.
        """
        cal = self.cal
        kept, sub = kmatrix.sub_ladder(k)
        target = ModelRung(p.sessions[0], cal.names[0], tree=tree)
        rungs = [target, *(self._proposer(p, r, lenience, floor) for r in kept)]
        cascade = Cascade(rungs, sub, Sampling(), 0)
        lenient = any(getattr(r, "lenience", 1.0) > 1 for r in rungs)
        for session in p.sessions:
            session.clear()
        out: list[int] = []
        target_reviews, vocab_s = 0, 0.0
        began = time.perf_counter()
        for event in cascade.generate(p.prompt, cal.max_new_tokens, p.eos):
            if isinstance(event, Review):
                target_reviews += event.reviewer == 0
                rows = len(event.proposed) + 1
                vocab_s += cal.argmax(rows) + (cal.softmax(rows) if lenient else 0.0)
            elif isinstance(event, Commit):
                out += event.tokens
        engine_s = time.perf_counter() - began - sum(s.seconds for s in p.sessions)
        seconds = sum(cal.costs[r](n) for r, s in enumerate(p.sessions) for n in s.fed)
        tree_cost = cal.tree_cost or cal.costs[0]
        seconds += sum(tree_cost(n) for n in p.sessions[0].fed_tree)
        # A drafter's tree passes (extending the target's trees): its own curve by tokens fed.
        seconds += sum(cal.costs[r](n) for r, s in enumerate(p.sessions[1:], 1) for n in s.fed_tree)
        return seconds + max(0.0, engine_s) + vocab_s, target_reviews, out == p.ref

    def ar_seconds(self) -> list[float]:
        """Predicted seconds of plain autoregressive decoding per prompt."""
        if self._ar is None:
            self._ar = [self._run(p, [], 1.0, 0.0)[0] for p in self.prompts]
        return self._ar

    def predict(
        self,
        k: Sequence[Sequence[int]],
        lenience: Lenience = 1.0,
        floor: PerDrafter = 0.0,
        tree: TreeSettings | None = None,
    ) -> Prediction:
        """Predicted speedup over ``ar`` (ratio of summed seconds) and tokens per target
        review of ``k`` (over the whole ladder) with ``lenience``, min_confidence ``floor``
        and, at the target's review, token trees ``tree`` (costed by the measured tree
        curve), over all calibration prompts."""
        ar = self.ar_seconds()
        runs = [self._run(p, k, lenience, floor, tree) for p in self.prompts]
        seconds = [r[0] for r in runs]
        tokens = sum(len(p.ref) for p in self.prompts)
        reviews = sum(r[1] for r in runs)
        total = sum(seconds)
        return Prediction(
            speedup=sum(ar) / total if total > 0 else 0.0,
            tokens_per_review=tokens / reviews if reviews else 0.0,
            seconds=seconds,
            ar_seconds=list(ar),
            exact=all(r[2] for r in runs),
        )
