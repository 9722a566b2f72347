"""Synthetic inputs for the tune tests: ladder specs without models, survival curves, and a
calibration of one prompt whose drafter disagrees on a schedule."""

from __future__ import annotations

import numpy as np

from csdraft import tune
from csdraft.spec import MAX_GRAM, LadderSpec, RungSpec
from csdraft.tune import CostCurve


def geometric(a: float, depth: int = 40) -> np.ndarray:
    """Survival of i.i.d. acceptance: P(run >= j) = a^j."""
    return np.array([a**j for j in range(depth)])


def spec_with(drafters: int, maxgram: bool) -> LadderSpec:
    """A ladder spec (no models needed) with ``drafters`` neural drafters."""
    rungs = [RungSpec(ref="t", name="target")]
    rungs += [RungSpec(ref=f"d{i}", name=f"d{i}") for i in range(1, drafters + 1)]
    rungs += [RungSpec(kind=MAX_GRAM, name="max-gram")] if maxgram else []
    return LadderSpec("synthetic", tuple(rungs))


def synthetic_calibration(
    agree_every: int | None, t: int = 20, c: float = 0.1, seed: int = 0
) -> tune.Calibration:
    """A target and one drafter over one prompt; the drafter disagrees every ``agree_every``
    positions (None: never)."""
    rng = np.random.default_rng(seed)
    prompt = list(range(1, 9))
    ref = [int(x) for x in rng.integers(20, 60, size=t)]
    k_top = 3

    def top(first: list[int]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((t + 1, k_top), dtype=np.int64)
        ids[:, 0] = first
        ids[:, 1] = 100
        ids[:, 2] = 101
        probs = np.tile(np.array([0.9, 0.05, 0.01], np.float32), (t + 1, 1))
        return ids, probs

    target_ids, target_p = top([*ref, 7])
    drafted = [*ref, 7]
    if agree_every:
        for i in range(agree_every - 1, t, agree_every):
            drafted[i] = 100
    draft_ids, draft_p = top(drafted)
    if agree_every:
        draft_ids[np.array(drafted) == 100, 1] = 102  # top-K ids stay distinct
    rec = tune.PromptRecord(
        prompt, ref, "length", 1.0, 1.0, t, [target_ids, draft_ids], [target_p, draft_p]
    )
    zero = CostCurve.constant(0.0)
    return tune.Calibration(
        names=["target", "drafter"],
        n_neural=2,
        maxgram=None,
        bigram=None,
        costs=[CostCurve.constant(1.0), CostCurve.constant(c)],
        argmax=zero,
        softmax=zero,
        overhead_s=0.0,
        maxgram_s=0.0,
        records=[rec],
        max_new_tokens=t,
        eos_ids=[],
    )


def ctrl_c_after_first_prompt(monkeypatch) -> None:
    """Make tune's real runs raise KeyboardInterrupt once their first prompt is measured."""
    from csdraft.tune import verify

    real = verify.interleaved

    def first_prompt_then_ctrl_c(*args, **kwargs):
        runs = real(*args, **kwargs)
        yield next(runs)
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "interleaved", first_prompt_then_ctrl_c)
