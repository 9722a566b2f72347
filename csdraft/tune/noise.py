"""Noise: whether the machine looked busy while tune measured, how wide the interval on a
measured margin is, and whether a setting beats the current one by more than that.

A tuner must not turn noise into a recommendation. The real runs measure ``ar`` on every prompt
they cover, and tune knows ar's time on those prompts two more ways: the calibration's
reference runs (an earlier measurement of the same generations) and the replay's prediction
(its own model of this machine, built from the calibration's cost curves). When these disagree
by more than ``BUSY_THRESHOLD``, the machine looks busy: tune re-measures while its budget
allows, else widens its interval, and it names a winner only when the winner's margin over the
current settings is larger than the interval.

Every spread here is a ratio (``apart``): timings that differ by a factor F can move a ratio of
two timings by that factor, so a measured speedup ratio R over the current settings is only
trusted when R > F, that is, when its margin R - 1 is over F - 1. Noise only ever adds time, so
repeated measurements are judged by their two fastest: a slow outlier stops counting once
another measurement confirms the fastest (which is the one the speedups use).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BUSY_THRESHOLD = 0.15
"""How far apart ar's timings may be before tune says the machine looks busy: its repeated
measurements on the same prompts (the calibration's reference runs and every round of real
runs), or the replay's prediction and the real runs. On a quiet machine the replay of ar lands
within a few percent of its measurement (the report prints both); bench flags a busy machine
at the same 15%."""

MAX_REMEASURES = 2
"""Extra rounds of real runs over the same prompts (within ``--budget``) that tune spends when
the machine looks busy, before it gives up and widens its interval instead."""


def apart(values: Iterable[float]) -> float | None:
    """How far apart repeated timings of the same thing are: the second fastest over the
    fastest, minus 1 (0.1: 10% longer; for two timings, ``max / min - 1``); None with fewer
    than two, or a zero."""
    vals = sorted(float(v) for v in values)
    if len(vals) < 2 or vals[0] <= 0:
        return None
    return vals[1] / vals[0] - 1


@dataclass
class ArTimings:
    """ar's seconds over the prompts the real runs covered, every way tune knows them.

    ``predicted_s``: the replay's prediction (None: a ladder judged by real runs alone);
    ``calibration_s``: the calibration's reference runs; ``rounds_s``: each round of real runs;
    ``measured_s``: the real runs as the speedups use them (each prompt's fastest round)."""

    predicted_s: float | None
    calibration_s: float
    rounds_s: list[float] = field(default_factory=list)
    measured_s: float | None = None

    def __post_init__(self) -> None:
        if self.measured_s is None and self.rounds_s:
            self.measured_s = min(self.rounds_s)

    @property
    def spread(self) -> float | None:
        """How far apart ar's measurements are (the calibration's and every real round's two
        fastest)."""
        return apart([self.calibration_s, *self.rounds_s])

    @property
    def calibration_gap(self) -> float | None:
        """How far the replay was from the calibration's reference runs (reported for
        context: a replay already off there points at the model, or at a machine that was
        busy while calibrating)."""
        if self.predicted_s is None:
            return None
        return apart([self.predicted_s, self.calibration_s])

    @property
    def replay_gap(self) -> float | None:
        """How far the replay is from the real runs."""
        if self.predicted_s is None or not self.measured_s:
            return None
        return apart([self.predicted_s, self.measured_s])

    @property
    def busy(self) -> bool:
        """Whether ar's timings disagree by more than ``BUSY_THRESHOLD``: with each other,
        or with the replay's prediction."""
        return any(g is not None and g > BUSY_THRESHOLD for g in (self.spread, self.replay_gap))

    def describe(self) -> str:
        """'ar measured 451.0 s vs 57.0 s predicted (+691%) and 60.2 s during calibration
        (spread 649%)': the numbers behind ``busy``."""
        measured = self.measured_s or 0.0
        parts = [f"ar measured {measured:.2f} s"]
        if self.predicted_s is not None:
            parts.append(f"vs {self.predicted_s:.2f} s predicted")
            if self.predicted_s > 0:
                parts.append(f"({100 * (measured / self.predicted_s - 1):+.0f}%)")
            parts.append("and")
        else:
            parts.append("vs")
        parts.append(f"{self.calibration_s:.2f} s during calibration")
        if self.spread is not None:
            parts.append(f"(spread {100 * self.spread:.0f}%)")
        return " ".join(parts)


def should_remeasure(ar: ArTimings, rounds: int, left_s: float, round_s: float) -> bool:
    """Whether to run the real runs again: the machine looks busy after ``rounds`` rounds,
    fewer than ``MAX_REMEASURES`` extra ones ran, and ``left_s`` of the budget fits another
    round of ``round_s``."""
    return ar.busy and rounds - 1 < MAX_REMEASURES and left_s >= round_s


def noise_band(ar: ArTimings, others: Sequence[Sequence[float]] = (), widen: bool = False) -> float:
    """Half-width of the interval on a measured margin (0.03: +-3%): the largest spread of
    the repeated measurements (ar's, and ``others``: the compared settings' per-round totals,
    when they ran more than one round); with ``widen`` (the machine still looked busy and
    nothing was left to re-measure), at least the replay's gap from the real runs as well."""
    spreads = [ar.spread, *(apart(o) for o in others)]
    if widen:
        spreads.append(ar.replay_gap)
    return max((s for s in spreads if s is not None), default=0.0)


@dataclass
class MeasuredMargin:
    """The best measured setting against the current settings: its margin (``baseline_s /
    winner_s - 1``: +0.05 is 5% faster) and the noise interval around it."""

    margin: float | None
    noise: float

    @property
    def declared(self) -> bool:
        """Whether the margin is larger than the noise: only then is there a winner."""
        return self.margin is not None and self.margin > self.noise

    def text(self) -> str:
        """'+5.1% ± 3.0%'."""
        if self.margin is None:
            return f"- ± {100 * self.noise:.1f}%"
        return f"{100 * self.margin:+.1f}% ± {100 * self.noise:.1f}%"


def verdict(baseline_s: float | None, winner_s: float | None, noise: float) -> MeasuredMargin:
    """The verdict on a winner that took ``winner_s`` where the current settings took
    ``baseline_s`` on the same prompts, with a noise interval of ``noise``."""
    if not baseline_s or not winner_s:
        return MeasuredMargin(None, noise)
    return MeasuredMargin(baseline_s / winner_s - 1, noise)
