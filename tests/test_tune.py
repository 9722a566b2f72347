"""Tests for csdraft.tune: the cost models' arithmetic, the replay against the real engine,
the candidate grid, writing tuned ladders, and ``csdraft tune k-matrix`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_ladder import make_tiny_ladder
from typer.testing import CliRunner

from csdraft import tune
from csdraft.cli import app
from csdraft.errors import CsdraftError, UsageError
from csdraft.ladder import (
    LadderSpec,
    MaxGramSpec,
    ModelSpec,
    add_ladder,
    check_k_matrix,
    get_ladder,
    parse_config,
)
from csdraft.trace import Commit, Review, Stats
from csdraft.tune import CostCurve


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CSDRAFT_CONFIG", str(tmp_path / "user-cascades.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def geometric(a: float, depth: int = 40) -> np.ndarray:
    """Survival of i.i.d. acceptance: P(run >= j) = a^j."""
    return np.array([a**j for j in range(depth)])


def spec_with(drafters: int, maxgram: bool) -> LadderSpec:
    """A ladder spec (no models needed) with ``drafters`` neural drafters."""
    return LadderSpec(
        "synthetic",
        ModelSpec("t", "target"),
        tuple(ModelSpec(f"d{i}", f"d{i}") for i in range(1, drafters + 1)),
        MaxGramSpec() if maxgram else None,
    )


# ------------------------------------------------------------------ analytic model arithmetic


@pytest.mark.parametrize(("a", "g", "c"), [(0.8, 4, 0.1), (0.5, 1, 0.3), (0.95, 12, 0.02)])
def test_ewif_closed_form(a, g, c):
    assert tune.ewif(a, g, c) == pytest.approx((1 - a ** (g + 1)) / ((1 - a) * (g * c + 1)))
    assert tune.expected_tokens(a, g) == pytest.approx(sum(a**j for j in range(g + 1)))


def test_ewif_perfect_acceptance():
    assert tune.expected_tokens(1.0, 5) == 6
    assert tune.ewif(1.0, 5, 0.2) == pytest.approx(6 / 2)
    g, best = tune.best_ewif(0.9, 0.05)
    assert best == max(tune.ewif(0.9, x, 0.05) for x in range(1, 17))
    assert tune.ewif(0.9, g, 0.05) == best


@pytest.mark.parametrize("a", [0.3, 0.7, 0.9])
@pytest.mark.parametrize("g", [1, 4, 8])
@pytest.mark.parametrize("c", [0.05, 0.3])
def test_cascade_model_reduces_to_ewif(a, g, c):
    """One drafter, constant costs, i.i.d. acceptance: the recursive model is EWIF."""
    model = tune.AnalyticModel(
        [CostCurve.constant(1.0).review, CostCurve.constant(c).review],
        {(0, 1): geometric(a)},
        has_maxgram=False,
    )
    pred = model.predict([[g]])
    assert pred.speedup == pytest.approx(tune.ewif(a, g, c))
    assert pred.tokens_per_review == pytest.approx(tune.expected_tokens(a, g))


def test_prompt_lookup_costs_nothing_to_draft():
    model = tune.AnalyticModel(
        [CostCurve.constant(1.0).review], {(0, 1): geometric(0.5)}, has_maxgram=True
    )
    assert model.predict([[6]]).speedup == pytest.approx(tune.expected_tokens(0.5, 6))


def test_perfect_acceptance_fills_every_block():
    ones = np.ones(40)
    single = tune.AnalyticModel(
        [CostCurve.constant(1.0).review, CostCurve.constant(0.1).review],
        {(0, 1): ones},
        has_maxgram=False,
    )
    assert single.predict([[5]]).tokens_per_review == pytest.approx(6)
    cascade = tune.AnalyticModel(
        [CostCurve.constant(1.0).review, CostCurve.constant(0.1).review],
        {(0, 1): ones, (0, 2): ones, (1, 2): ones},
        has_maxgram=True,
    )
    pred = cascade.predict([[4, 2], [0, 3]])
    assert pred.tokens_per_review == pytest.approx(7)
    # the drafter writes 4 tokens in one review of 3 Max-Gram proposals, all kept
    assert pred.speedup == pytest.approx(7 * 1.0 / (1.0 + 0.1))


def test_cost_curve_interpolates_and_is_made_monotone():
    curve = CostCurve([1, 4, 8], [1.0, 2.0, 4.0])
    assert curve(1) == 1.0 and curve(0) == 1.0
    assert curve(6) == pytest.approx(3.0)
    assert curve(12) == pytest.approx(6.0)  # last slope continues
    assert curve.review(3) == curve(4)
    noisy = tune.monotone(CostCurve([1, 2, 8], [9.0, 1.0, 2.0]))
    assert noisy.seconds == [1.0, 1.0, 2.0]


def test_block_segments_follow_cumulative_counts():
    k = [[4, 2], [0, 6]]
    assert tune.block_segments(k, 0, 100) == [(1, 4), (2, 2)]
    assert tune.block_segments(k, 0, 5) == [(1, 4), (2, 1)]
    assert tune.block_segments(k, 1, 3) == [(2, 3)]
    assert tune.block_segments(k, 2, 9) == []  # Max-Gram has no row


def test_statistics_helpers():
    assert tune.run_lengths(np.array([1, 1, 0, 1, 1, 1], bool)).tolist() == [2, 1, 0, 3, 2, 1]
    proposals = np.array([[5, 6, 9], [6, 7, -1], [1, 2, 3]])
    assert tune.prefix_lengths(proposals, np.array([5, 6, 7])).tolist() == [2, 2, 0]
    s = tune.survival(np.array([0, 1, 2, 3]), depth=3)
    assert s.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


# ------------------------------------------------------------------ replay on synthetic records


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


def test_replay_perfect_drafter_fills_blocks():
    cal = synthetic_calibration(None, t=20, c=0.1)
    pred = tune.Replay(cal).predict([[4]])
    assert pred.exact
    assert pred.tokens_per_review == pytest.approx(5)  # 4 target reviews of 5 tokens
    # ar: 20 target passes; sd: 4 target passes + 16 one-token drafter passes (plus the
    # replay's own microseconds of engine time)
    assert pred.speedup == pytest.approx(20 / (4 + 16 * 0.1), rel=0.02)


def test_replay_counts_rejections_exactly():
    cal = synthetic_calibration(3, t=12)  # drafter wrong at positions 2, 5, 8, 11
    pred = tune.Replay(cal).predict([[4]])
    assert pred.exact
    # each review keeps 2 drafts and corrects the third: 3 tokens per target review
    assert pred.tokens_per_review == pytest.approx(3)


# ------------------------------------------------------------------ candidates


@pytest.mark.parametrize(("drafters", "maxgram"), [(1, False), (0, True), (1, True), (2, True)])
def test_candidates_respect_shape_rules(drafters, maxgram):
    spec = spec_with(drafters, maxgram)
    d = spec.drafting_rungs
    grid = tune.candidate_grid(d)
    assert grid
    assert len(set(grid)) == len(grid)
    for i, k in enumerate(grid):
        assert check_k_matrix([list(r) for r in k], spec, "test") == k
        assert tune.canonical(k) == k
        assert any(k[0])
        for nb in tune.neighbours(k) if i < 200 else ():
            check_k_matrix([list(r) for r in nb], spec, "test")
    if d == 2:
        assert len(grid) > 100
        assert ((4, 2), (0, 6)) in grid


def test_candidate_grid_samples_large_ladders_reproducibly():
    grid = tune.candidate_grid(4, limit=500, seed=3)
    assert grid == tune.candidate_grid(4, limit=500, seed=3)
    spec = spec_with(3, True)
    for k in grid:
        check_k_matrix([list(r) for r in k], spec, "test")


def test_canonical_reduce_and_families():
    assert tune.canonical([[0, 5], [0, 3]]) == ((0, 5), (0, 0))  # drafter 1 never runs
    assert tune.canonical([[0, 0], [0, 3]]) is None  # that is plain ar
    assert tune.reduce([[4, 0], [0, 0]], 1, True) == ([1], False, [[4]])
    assert tune.reduce([[0, 5], [0, 0]], 1, True) == ([], True, [[5]])
    assert tune.reduce([[4, 2], [0, 6]], 1, True) == ([1], True, [[4, 2], [0, 6]])
    k3 = [[3, 0, 2], [0, 0, 4], [0, 0, 5]]  # drafter 2 unused
    assert tune.reduce(k3, 2, True) == ([1], True, [[3, 2], [0, 4]])
    assert tune.family([[4, 0], [0, 6]]) == "vertical"
    assert tune.family([[4, 2], [0, 0]]) == "horizontal"
    assert tune.family([[4, 2], [0, 6]]) == "combined"
    assert tune.family([[4, 0], [0, 0]]) == "single"


def test_tuned_spec_drops_unused_rungs():
    spec = spec_with(2, True)
    cand = tune.Candidate(((3, 0, 2), (0, 0, 0), (0, 0, 0)), 2.0)
    new = tune.tuned_spec(spec, cand, "slim")
    assert new.name == "slim"
    assert [d.name for d in new.drafters] == ["d1"]
    assert new.maxgram is not None
    assert new.k_matrix == ((3, 2), (0, 0))
    assert new.lenience == (2.0,)
    floored = tune.tuned_spec(
        spec, tune.Candidate(((3, 0, 2), (0, 2, 0), (0, 0, 0)), 1.0, 0.4), "f"
    )
    assert floored.min_confidence == (0.4, 0.4)


def test_settings_that_cannot_act_are_neutral():
    # one drafter + Max-Gram: n_neural = 2 (target and drafter)
    assert tune.setting_key(((0, 5), (0, 0)), 3.0, 0.5, 2) == (((0, 5), (0, 0)), 1.0, 0.0)
    assert tune.setting_key(((4, 0), (0, 0)), 3.0, 0.5, 2) == (((4, 0), (0, 0)), 1.0, 0.5)
    assert tune.setting_key(((4, 0), (0, 3)), 3.0, 0.5, 2) == (((4, 0), (0, 3)), 3.0, 0.5)
    spec = spec_with(1, True).with_settings(k_matrix=[[8, 0], [0, 4]], min_confidence=0.4)
    assert tune.current_setting(spec) == (((8, 0), (0, 4)), 1.0, 0.4)
    steps = tune._nearby(tune.Candidate(((8, 0), (0, 4)), 1.0, 0.4))
    assert (((8, 0), (0, 4)), 1.0, 0.3) in steps and (((8, 0), (0, 4)), 1.0, 0.5) in steps
    assert (((9, 0), (0, 4)), 1.0, 0.4) in steps


def test_pick_for_measurement_covers_the_questions():
    def cand(k, floor, speed):
        return tune.Candidate(k, 1.0, floor, pred=tune.Prediction(speed, 3.0, [1.0], [2.0]))

    best = cand(((9, 2), (0, 4)), 0.7, 2.3)
    near = cand(((9, 3), (0, 4)), 0.7, 2.29)  # all but the best: not worth a real run
    at_current_k = cand(((8, 0), (0, 4)), 0.6, 2.2)
    current = cand(((8, 0), (0, 4)), 0.4, 2.0)
    vertical = cand(((6, 0), (0, 3)), 0.4, 1.9)
    horizontal = cand(((4, 3), (0, 0)), 0.4, 1.8)
    no_maxgram = cand(((4, 0), (0, 0)), 0.4, 1.7)
    lookup = cand(((0, 3), (0, 0)), 0.0, 1.3)
    lenient = cand(((9, 2), (0, 4)), 0.7, 2.28)
    lenient.lenience = 3.0
    ranked = [best, near, lenient, at_current_k, current, vertical, horizontal, no_maxgram, lookup]
    picked = tune.pick_for_measurement(ranked, current, 2, True, 1e9, 1.0, most=10)
    # the best vertical-only setting is at_current_k, already picked
    assert picked == [best, current, at_current_k, lenient, horizontal, lookup, no_maxgram]
    # a budget that fits one round of only a few keeps the best and the current first
    assert tune.pick_for_measurement(ranked, current, 2, True, 3.5, 1.0) == [best, current]


# ------------------------------------------------------------------ writing


def test_write_never_clobbers(tmp_path):
    cfg = tmp_path / "ladders.yaml"
    spec = spec_with(1, True).with_settings(k_matrix=[[4, 2], [0, 6]], lenience=1.0)
    add_ladder(cfg, spec.with_settings(name="synthetic-tuned"))
    before = cfg.read_text()
    with pytest.raises(CsdraftError, match="already has a ladder"):
        add_ladder(cfg, spec.with_settings(name="synthetic-tuned"))
    cand = tune.Candidate(((3, 3), (0, 5)), 1.0)
    path, name = tune.write_winner(spec, cand, None, cfg)
    assert (path, name) == (cfg, "synthetic-tuned-2")
    _, name3 = tune.write_winner(spec, cand, None, cfg)
    assert name3 == "synthetic-tuned-3"
    _, mine = tune.write_winner(spec, cand, "synthetic-tuned", cfg)
    assert mine == "synthetic-tuned-4"
    assert cfg.read_text().startswith(before)  # appended, nothing rewritten
    ladders = parse_config(cfg.read_text(), str(cfg))
    assert ladders["synthetic-tuned"].k_matrix == ((4, 2), (0, 6))
    assert ladders["synthetic-tuned-2"].k_matrix == ((3, 3), (0, 5))
    assert tune.unique_name("x", ["x", "x-2"]) == "x-3"


# ------------------------------------------------------------------ tiny real models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-tune")
    cfg = make_tiny_ladder(root, drafters=1, maxgram=True)
    prompts = root / "prompts.jsonl"
    rows = [{"prompt": " ".join(f"w{(7 * i + 3 * j) % 60}" for j in range(14))} for i in range(3)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg, prompts


def test_replay_matches_the_engine_on_tiny_models(tiny):
    """Everything the target accepts is replayed exactly: target reviews match a real run."""
    from csdraft.generation import LoadedLadder

    cfg, _ = tiny
    loaded = LoadedLadder.load(get_ladder("tiny", cfg), progress=False)
    prompts = [loaded.encode(f"w{i} w{i + 1} w{i + 2} w{2 * i} w{i + 1} w{i + 2}") for i in (1, 5)]
    cal = tune.calibrate(loaded, prompts, 20, lengths=(1, 4), repeats=1)
    replay = tune.Replay(cal)
    tokens = sum(len(r.ref) for r in cal.records)
    settings = [([[3, 3], [0, 3]], 0.0), ([[2, 0], [0, 0]], 0.0), ([[0, 5], [0, 0]], 0.0)]
    settings += [([[1, 4], [0, 6]], 0.0), ([[6, 0], [0, 3]], 0.3), ([[5, 2], [0, 4]], 0.6)]
    stopped = 0
    for k, floor in settings:
        pred = replay.predict(k, 1.0, floor)
        assert pred.exact
        kept, use_mag, sub = tune.reduce(k, 1, True)
        cascade = loaded.cascade(
            drafters=kept, maxgram=use_mag, k_matrix=sub, min_confidence=floor if kept else None
        )
        forwards = 0
        for rec in cal.records:
            events = list(cascade.generate(rec.prompt, 20, loaded.eos_ids))
            for rung in cascade.rungs:
                rung.reset()
            stats = Stats.of(events)
            assert [t for e in events if isinstance(e, Commit) for t in e.tokens] == rec.ref
            forwards += stats.target_forwards
            blocks = [len(e.proposed) for e in events if isinstance(e, Review) and e.reviewer == 0]
            stopped += floor > 0 and min(blocks) < sum(sub[0])  # a draft ended early
        assert pred.tokens_per_review == pytest.approx(tokens / forwards), (k, floor)
    assert stopped  # min_confidence really acted in this test
    agree = tune.agreement(cal)
    assert set(agree.rate) == {(0, 1), (0, 2), (1, 2)}
    assert all(0 <= v <= 1 for v in agree.rate.values())


def test_cli_tune_end_to_end(tiny):
    cfg, prompts = tiny
    result = CliRunner().invoke(
        app,
        [
            "tune", "k-matrix", "--config", str(cfg), "--data", str(prompts), "--limit", "2",
            "--budget", "3", "--max-new-tokens", "12", "--seed", "1", "--write",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = result.output
    for needle in ("candidates: predicted vs measured", "answers", "vertical only", "winner"):
        assert needle in out
    line = next(ln for ln in out.splitlines() if "identical outputs:" in ln)
    same, runs = line.rsplit("identical outputs:", 1)[1].strip().split("/")
    assert same == runs and int(runs) > 0
    assert "wrote ladder tiny-tuned" in out
    tuned = get_ladder("tiny-tuned", cfg)
    check_k_matrix([list(r) for r in tuned.k_matrix], tuned, "test")
    again = CliRunner().invoke(
        app,
        [
            "tune", "k-matrix", "--config", str(cfg), "--data", str(prompts), "--limit", "1",
            "--budget", "0", "--max-new-tokens", "8", "--write", "tiny",
        ],
    )  # fmt: skip
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert "wrote ladder tiny-2" in again.output
    assert "predictions only" in again.output


def test_cli_tune_help_explains_the_k_matrix():
    result = CliRunner().invoke(app, ["tune", "k-matrix", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "row r belongs to reviewer r" in text
    assert "cumulative counts" in text
    assert "--write" in text


def test_cli_tune_name_needs_write(tiny):
    cfg, prompts = tiny
    result = CliRunner().invoke(
        app, ["tune", "k-matrix", "--config", str(cfg), "--data", str(prompts), "mine"]
    )
    assert isinstance(result.exception, UsageError)


def test_divergence_reports_the_margin():
    rec = tune.PromptRecord([1], [5, 6, 7], "length", 0, 0, 3, margin=np.array([3.0, 0.0, 2.0]))
    text = tune.divergence([5, 9, 7], [5, 6, 7], rec, tie=0.125)
    assert "token 1" in text and "margin there 0" in text and "near-tie" in text
    assert "a bug" in tune.divergence([8, 6, 7], [5, 6, 7], rec, tie=0.125)
    assert tune.near_tie(torch.bfloat16) > tune.near_tie(torch.float32)
