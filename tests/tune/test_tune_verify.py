"""Tests for csdraft.tune.verify: divergences reported through csdraft.exactness, and the
real-run rounds (re-measuring on a busy machine) driven by scripted runners."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from csdraft import exactness, tune
from csdraft.runs import Outcome
from csdraft.tune import verify


def _divergence(got, want, rec, target=None):
    return exactness.compare(got, want, tune.margin_source(rec, want, target), tie=0.125)


def test_divergence_reports_the_margin():
    rec = tune.PromptRecord([1], [5, 6, 7], "length", 0, 0, 3, margin=np.array([3.0, 0.0, 2.0]))
    found = _divergence([5, 9, 7], [5, 6, 7], rec)
    assert found is not None and found.position == 1 and found.near_tie
    text = found.describe()
    assert "token 1" in text and "margin 0" in text and "near-tie" in text
    assert "a bug" in _divergence([8, 6, 7], [5, 6, 7], rec).describe()
    assert _divergence([5, 6, 7], [5, 6, 7], rec) is None
    assert exactness.near_tie(torch.bfloat16) > exactness.near_tie(torch.float32)


def test_divergence_off_the_reference_asks_the_target():
    """Where ar's output left the calibration's reference, the recorded margins do not apply:
    one forward pass of the target gives the margin."""
    rec = tune.PromptRecord([1], [5, 6, 7], "length", 0, 0, 3, margin=np.array([3.0, 3.0, 3.0]))
    asked = []

    class Target:
        def next_logits(self, context, prompt_tokens=None):
            asked.append(list(context))
            return torch.tensor([0.0, 2.0, 1.9])

    found = _divergence([5, 8, 1], [5, 8, 2], rec, Target())
    assert asked == [[1, 5, 8]]  # prompt + ar's output up to the divergence
    assert found is not None and found.margin == pytest.approx(0.1) and found.near_tie
    assert _divergence([5, 8, 1], [5, 8, 2], rec).margin is None


def _scripted(walls: list[float], ids: list[int]):
    """A runner whose generations take the given wall times, in turn."""
    times = iter(walls)

    def run(prompt: list[int], max_new_tokens: int) -> Outcome:
        return Outcome(ids=list(ids), wall_s=next(times), target_forwards=len(ids), forwards={})

    return run


def _setup(monkeypatch, ar_walls, cand_walls, prompts=1, ar_calibration=1.0):
    records = [
        tune.PromptRecord([1, 2], [5, 6], "length", ar_calibration, 0.5, 2) for _ in range(prompts)
    ]
    cal = SimpleNamespace(records=records, max_new_tokens=2)
    replay = SimpleNamespace(ar_seconds=lambda: [ar_calibration] * prompts)
    ladder = SimpleNamespace(target=SimpleNamespace(compute_dtype="float32"))
    cand = tune.Candidate(((4,),), pred=tune.Prediction(2.0, 3.0, [0.5], [1.0]))
    table = {verify.AR: _scripted(ar_walls, [5, 6]), "1": _scripted(cand_walls, [5, 6])}
    monkeypatch.setattr(verify, "runners", lambda ladder, chosen: table)
    return ladder, cal, replay, cand


def test_a_quiet_machine_is_measured_once(monkeypatch):
    ladder, cal, replay, cand = _setup(monkeypatch, [1.02], [0.5])
    runs, ar, widen = verify.measure(ladder, cal, replay, [cand], budget_s=1e6)
    assert len(runs.rounds) == 1 and not ar.busy and not widen
    assert cand.runs == cand.identical == 1
    assert cand.measured_speedup(runs.best(verify.AR)) == pytest.approx(1.02 / 0.5)


def test_a_busy_round_is_measured_again_and_the_fastest_kept(monkeypatch):
    said = []
    ladder, cal, replay, cand = _setup(monkeypatch, [3.0, 1.01], [1.4, 0.5])
    runs, ar, widen = verify.measure(ladder, cal, replay, [cand], 1e6, say=said.append)
    assert len(runs.rounds) == 2 and not widen
    assert len(said) == 1 and "the machine looks busy" in said[0] and "re-measuring" in said[0]
    assert ar.rounds_s == [3.0, 1.01] and ar.measured_s == pytest.approx(1.01)
    assert [o.wall_s for o in cand.outcomes] == [0.5]  # each prompt's fastest round
    assert cand.runs == 2 and cand.identical == 2


def test_a_machine_that_stays_busy_widens_the_interval(monkeypatch):
    walls = [3.0] * (1 + tune.MAX_REMEASURES)
    ladder, cal, replay, cand = _setup(monkeypatch, walls, [1.0] * len(walls))
    runs, ar, widen = verify.measure(ladder, cal, replay, [cand], 1e6)
    assert len(runs.rounds) == 1 + tune.MAX_REMEASURES  # then it gives up
    assert widen and ar.busy
    assert tune.noise_band(ar, widen=widen) >= 3.0 / 1.0 - 1


def test_no_budget_left_means_no_second_round(monkeypatch):
    ladder, cal, replay, cand = _setup(monkeypatch, [3.0], [1.0])
    runs, ar, widen = verify.measure(ladder, cal, replay, [cand], budget_s=1e-9)
    assert len(runs.rounds) == 1 and widen


def test_the_first_round_stops_at_the_budget(monkeypatch):
    """At least one prompt runs; no next prompt starts once it would overrun the budget."""
    ladder, cal, replay, cand = _setup(monkeypatch, [1.0] * 4, [0.5] * 4, prompts=3)
    runs = verify.RealRuns()
    verify.run_round(runs, verify.runners(ladder, [cand]), cal, budget_s=1e-9)
    assert runs.prompts == [0] and len(runs.rounds[0][verify.AR]) == 1
    full = verify.RealRuns()
    verify.run_round(full, verify.runners(ladder, [cand]), cal, budget_s=None)
    assert full.prompts == [0, 1, 2]
