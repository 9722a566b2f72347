"""``csdraft tune k-matrix``: choose a ladder's k-matrix, min_confidence and lenience for this
machine. One module per concern:

- ``costs``: forward-pass cost curves by block length, measured through each loaded model's
  session, and the full-vocabulary review ops.
- ``calibration``: the target's reference continuations (the ``ar`` cascade, greedy), every
  neural rung teacher-forced along them (top-K and probabilities), Max-Gram's proposals along
  them (``calibrate``).
- ``agreement``: run lengths and survival curves of greedy agreement between rungs.
- ``analytic``: EWIF extended to the cascade (``AnalyticModel``), fast enough for the grid.
- ``replay``: the real engine replayed over the recorded continuations with measured costs
  (``Replay``): the predictor tune reports and acts on.
- ``search``: the candidate grid, neighbours, the search, and which candidates to run.
- ``verify``: the real runs, interleaved per prompt through ``csdraft.runs`` with ar and the
  current settings, outputs checked against ar's with ``csdraft.exactness``.
- ``noise``: whether the machine looked busy, the noise interval, and the verdict: a winner
  only by a margin over the current settings larger than the measured noise.
- ``winner``: the real runs' lines and the winner (or none within the noise), explained and
  written with ``--write``.
- ``placements``: a ladder with a drafter of another family (its own tokenizer), which the
  replay cannot follow: every placement of its drafters judged by real runs alone.
- ``write``: the winner as a new ladder (never overwriting one).
- ``data``: calibration prompts; ``report``: the tables and answers; ``run``: ``run_tune``.

The k-matrix itself (blocks, used rungs, sub-ladders, families) is ``csdraft.engine.kmatrix``.
"""

from csdraft.tune.agreement import Agreement, agreement, prefix_lengths, run_lengths, survival
from csdraft.tune.analytic import AnalyticModel, Prediction, best_ewif, ewif, expected_tokens
from csdraft.tune.calibration import (
    Calibration,
    PromptRecord,
    calibrate,
    maxgram_along,
    teacher_force,
)
from csdraft.tune.costs import CostCurve, measure_cost, measure_vocab_op, monotone
from csdraft.tune.data import load_calibration_prompts
from csdraft.tune.noise import (
    BUSY_THRESHOLD,
    MAX_REMEASURES,
    ArTimings,
    MeasuredMargin,
    apart,
    noise_band,
    should_remeasure,
    verdict,
)
from csdraft.tune.replay import Replay, ReplayRung
from csdraft.tune.report import agreement_table, answers, candidates_table, costs_table
from csdraft.tune.run import run_tune
from csdraft.tune.search import (
    Candidate,
    candidate_grid,
    current_setting,
    nearby,
    neighbours,
    pick_for_measurement,
    search,
    setting_key,
)
from csdraft.tune.verify import RealRuns, margin_source, measure
from csdraft.tune.write import tuned_spec, unique_name, write_winner

__all__ = [
    "BUSY_THRESHOLD",
    "MAX_REMEASURES",
    "Agreement",
    "AnalyticModel",
    "ArTimings",
    "Calibration",
    "Candidate",
    "CostCurve",
    "MeasuredMargin",
    "Prediction",
    "PromptRecord",
    "RealRuns",
    "Replay",
    "ReplayRung",
    "agreement",
    "agreement_table",
    "answers",
    "apart",
    "best_ewif",
    "calibrate",
    "candidate_grid",
    "candidates_table",
    "costs_table",
    "current_setting",
    "ewif",
    "expected_tokens",
    "load_calibration_prompts",
    "margin_source",
    "maxgram_along",
    "measure",
    "measure_cost",
    "measure_vocab_op",
    "monotone",
    "nearby",
    "neighbours",
    "noise_band",
    "pick_for_measurement",
    "prefix_lengths",
    "run_lengths",
    "run_tune",
    "search",
    "setting_key",
    "should_remeasure",
    "survival",
    "teacher_force",
    "tuned_spec",
    "unique_name",
    "verdict",
    "write_winner",
]
