"""Tests for csdraft.tune.noise on synthetic numbers: when the machine looks busy, how wide
the noise interval is, and when a setting is called the winner."""

from __future__ import annotations

import pytest

from csdraft import tune
from csdraft.tune import ArTimings


def test_apart_is_the_ratio_of_the_two_fastest():
    assert tune.apart([10.0, 11.0]) == pytest.approx(0.1)
    assert tune.apart([11.0, 10.0]) == pytest.approx(0.1)
    assert tune.apart([10.0, 30.0, 10.5]) == pytest.approx(0.05)  # a slow outlier is noise
    assert tune.apart([5.0]) is None
    assert tune.apart([0.0, 3.0]) is None


def test_a_quiet_machine_is_not_busy():
    ar = ArTimings(predicted_s=10.2, calibration_s=10.0, rounds_s=[10.4])
    assert ar.measured_s == 10.4
    assert ar.spread == pytest.approx(0.04)
    assert ar.replay_gap == pytest.approx(10.4 / 10.2 - 1)
    assert not ar.busy
    assert tune.noise_band(ar) == pytest.approx(0.04)


def test_the_issue_example_is_busy():
    """57 s predicted and about that in calibration, 451 s measured in the real runs."""
    ar = ArTimings(predicted_s=57.0, calibration_s=60.0, rounds_s=[451.0])
    assert ar.busy
    line = ar.describe()
    assert (
        "451.00 s" in line and "57.00 s predicted" in line and "60.00 s during calibration" in line
    )
    assert "+691%" in line
    # widened, the interval covers the replay's gap: a 3x margin is not above that noise
    band = tune.noise_band(ar, widen=True)
    assert band >= 451 / 57 - 1
    assert not tune.verdict(3.057 * 10, 10, band).declared


def test_busy_when_the_replay_misses():
    # ar's two measurements agree, but the replay predicted 30% less
    ar = ArTimings(predicted_s=10.0, calibration_s=13.0, rounds_s=[13.1])
    assert ar.spread is not None and ar.spread < tune.BUSY_THRESHOLD
    assert ar.calibration_gap == pytest.approx(0.3)
    assert ar.busy
    assert not ArTimings(predicted_s=12.0, calibration_s=13.0, rounds_s=[13.1]).busy


def test_busy_when_ars_measurements_disagree_until_a_round_confirms_the_fastest():
    ar = ArTimings(predicted_s=10.0, calibration_s=10.0, rounds_s=[12.5])
    assert ar.spread == pytest.approx(0.25)
    assert ar.busy
    again = ArTimings(predicted_s=10.0, calibration_s=10.0, rounds_s=[12.5, 10.1])
    assert again.measured_s == 10.1  # the fastest round: noise only adds time
    assert again.spread == pytest.approx(0.01)
    assert not again.busy
    slow = ArTimings(predicted_s=10.0, calibration_s=10.0, rounds_s=[12.5, 12.4])
    assert slow.busy  # both real rounds slower than calibration and the replay


def test_remeasure_only_while_busy_and_the_budget_fits_a_round():
    busy = ArTimings(predicted_s=10.0, calibration_s=10.0, rounds_s=[20.0])
    quiet = ArTimings(predicted_s=10.0, calibration_s=10.0, rounds_s=[10.2])
    assert tune.should_remeasure(busy, rounds=1, left_s=100.0, round_s=30.0)
    assert not tune.should_remeasure(quiet, rounds=1, left_s=100.0, round_s=30.0)
    assert not tune.should_remeasure(busy, rounds=1, left_s=29.0, round_s=30.0)
    last = 1 + tune.MAX_REMEASURES
    assert tune.should_remeasure(busy, rounds=last - 1, left_s=100.0, round_s=30.0)
    assert not tune.should_remeasure(busy, rounds=last, left_s=100.0, round_s=30.0)


def test_the_band_is_the_largest_spread_measured():
    ar = ArTimings(predicted_s=10.0, calibration_s=10.0, rounds_s=[10.5, 10.2])
    assert tune.noise_band(ar) == pytest.approx(0.02)
    # the compared settings' own rounds moved more than ar's
    assert tune.noise_band(ar, [[5.0, 5.4], [6.0, 6.1]]) == pytest.approx(0.08)
    # widening adds the replay's gap from the real runs
    off = ArTimings(predicted_s=8.0, calibration_s=10.0, rounds_s=[10.2])
    assert tune.noise_band(off, widen=True) == pytest.approx(10.2 / 8.0 - 1)
    assert tune.noise_band(off) == pytest.approx(0.02)


def test_a_winner_needs_a_margin_larger_than_the_noise():
    v = tune.verdict(baseline_s=10.51, winner_s=10.0, noise=0.03)
    assert v.margin == pytest.approx(0.051)
    assert v.declared
    assert v.text() == "+5.1% ± 3.0%"
    assert not tune.verdict(10.2, 10.0, 0.03).declared  # +2% within +-3%
    assert not tune.verdict(10.0, 10.0, 0.0).declared  # the current one itself
    assert not tune.verdict(9.0, 10.0, 0.0).declared  # slower
    assert not tune.verdict(None, 10.0, 0.0).declared
    assert tune.verdict(None, 10.0, 0.05).text() == "- ± 5.0%"
