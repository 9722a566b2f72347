"""Agreement statistics along the reference continuations: run lengths of matching greedy
tokens, Max-Gram's accepted prefixes, and their survival curves for every reviewer and every
rung below it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csdraft.tune.calibration import MAX_RUN, Calibration


def run_lengths(match: np.ndarray) -> np.ndarray:
    """For a boolean vector: how many consecutive Trues start at each index."""
    out = np.zeros(len(match) + 1, dtype=np.int64)
    for i in range(len(match) - 1, -1, -1):
        out[i] = out[i + 1] + 1 if match[i] else 0
    return out[:-1]


def prefix_lengths(proposals: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For proposals [S, depth] made from each position s: how many leading tokens equal
    ``truth[s:]`` (padding -1 never matches)."""
    s, depth = proposals.shape
    if s == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(s)[:, None] + np.arange(depth)[None, :]
    valid = idx < len(truth)
    want = np.asarray(truth)[np.minimum(idx, len(truth) - 1)]
    eq = (proposals == want) & valid & (proposals >= 0)
    return np.cumprod(eq, axis=1).sum(axis=1)


def survival(runs: np.ndarray, depth: int = MAX_RUN) -> np.ndarray:
    """S[j] = P(run >= j) for j = 0..depth + 1 (S[0] = 1)."""
    if len(runs) == 0:
        return np.concatenate([[1.0], np.zeros(depth + 1)])
    return np.array([np.mean(runs >= j) for j in range(depth + 2)])


@dataclass
class Agreement:
    """Greedy agreement between rungs along the reference continuations.

    Keys are (reviewer, drafter) in ladder numbering (Max-Gram last). ``rate``: share of
    positions where the two greedy tokens match (Max-Gram: its first proposed token);
    ``survival[j]``: share of positions from which at least j consecutive tokens match;
    ``mean_run``: mean of those run lengths (Max-Gram: mean accepted prefix of a proposal).
    """

    names: list[str]
    rate: dict[tuple[int, int], float]
    survival: dict[tuple[int, int], np.ndarray]
    mean_run: dict[tuple[int, int], float]
    positions: int


def agreement(cal: Calibration, depth: int = MAX_RUN) -> Agreement:
    """Pairwise agreement of every reviewer with every rung below it (and Max-Gram)."""
    n = cal.n_neural
    mag = cal.maxgram_rung
    pairs = [(r, d) for r in range(n) for d in range(r + 1, n)]
    if mag is not None:
        pairs += [(r, mag) for r in range(n)]
    runs: dict[tuple[int, int], list[np.ndarray]] = {p: [] for p in pairs}
    firsts: dict[tuple[int, int], list[np.ndarray]] = {p: [] for p in pairs}
    for rec in cal.records:
        if not rec.ref:
            continue
        top1 = [rec.top1(r) for r in range(n)]
        for r, d in pairs:
            if d == mag:
                assert rec.mag is not None
                lens = prefix_lengths(rec.mag[:, :depth], top1[r])
                runs[(r, d)].append(lens)
                firsts[(r, d)].append(lens > 0)
            else:
                match = top1[r] == top1[d]
                runs[(r, d)].append(run_lengths(match))
                firsts[(r, d)].append(match)
    rate, surv, mean_run = {}, {}, {}
    for p in pairs:
        allruns = np.concatenate(runs[p]) if runs[p] else np.zeros(0, dtype=np.int64)
        allfirst = np.concatenate(firsts[p]) if firsts[p] else np.zeros(0, dtype=bool)
        rate[p] = float(allfirst.mean()) if len(allfirst) else 0.0
        surv[p] = survival(np.minimum(allruns, depth + 1), depth)
        mean_run[p] = float(allruns.mean()) if len(allruns) else 0.0
    positions = sum(len(r.ref) for r in cal.records)
    return Agreement(cal.names, rate, surv, mean_run, positions)
