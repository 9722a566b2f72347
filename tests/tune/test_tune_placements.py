"""Issue 35: tune of a ladder with a drafter of another family. Its replay works in the target's
tokens, so tune places the drafters (every order of every subset, Max-Gram at the bottom) and
judges the placements by real runs; the winner is a ladder like any other."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml
from tiny_ladder import (  # noqa: F401 - own_env: a fixture
    FOREIGN_EXTRA,
    bpe_tokenizer,
    own_env,
    tiny_model_dir,
)
from tune_helpers import ctrl_c_after_first_prompt, spec_with
from typer.testing import CliRunner

import csdraft
from csdraft.cli import app
from csdraft.errors import UsageError
from csdraft.ladder import add_ladder, get_ladder, parse_config
from csdraft.spec import validate
from csdraft.tune import noise, placements
from csdraft.tune.search import Candidate
from csdraft.tune.write import tuned_spec

PROMPTS = ["The quick café", "def f(x):\n    return", "你好 brûlée fox"]


@pytest.fixture(scope="module")
def mixed3(tmp_path_factory) -> tuple[Path, Path]:
    """target <- a drafter of its family <- a drafter of another <- Max-Gram, and prompts."""
    root = tmp_path_factory.mktemp("mixed3")
    tok = bpe_tokenizer(300)
    target = tiny_model_dir(root / "target", 0, tok)
    same = tiny_model_dir(root / "same", 1, tok, base=target, noise=0.003)
    foreign = tiny_model_dir(root / "foreign", 2, bpe_tokenizer(330, FOREIGN_EXTRA))
    ladder = {
        "rungs": [
            {"name": "tiny-t", "model": str(target), "dtype": "float32"},
            {"name": "tiny-d", "model": str(same), "dtype": "float32", "min_confidence": 0.3},
            {"name": "tiny-f", "model": str(foreign), "dtype": "float32"},
            {"kind": "max-gram", "max_ngram": 4},
        ],
        "k_matrix": [[3, 0, 0], [0, 3, 0], [0, 0, 3]],
        "generation": {"max_new_tokens": 16},
    }
    config = root / "cascades.yaml"
    config.write_text(yaml.safe_dump({"mixed3": ladder}, sort_keys=False))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return config, prompts


def every_order_of_every_subset(found, drafters) -> None:
    """The placements found are exactly every order of every subset (brute force)."""
    want = {
        t
        for n in range(len(drafters) + 1)
        for t in itertools.product(drafters, repeat=n)
        if len(set(t)) == n
    }
    assert len(found) == len(set(found)) and set(found) == want


def test_placements_are_every_order_of_every_subset():
    for drafters in (("a",), ("a", "b"), ("a", "b", "c")):
        every_order_of_every_subset(placements.placements(drafters, True), drafters)
    assert placements.placements(("a", "b"), True)[:2] == [("a", "b"), ("b", "a")]
    assert () not in placements.placements(("a", "b"), False)  # without Max-Gram: that is ar
    wrong = [p for p in placements.placements(("a", "b"), True) if p != ("b", "a")]
    with pytest.raises(AssertionError):  # the check has teeth: the foreign-above order missing
        every_order_of_every_subset(wrong, ("a", "b"))


def _spec():
    return spec_with(2, True).with_settings(k_matrix=[[6, 0, 0], [0, 4, 0], [0, 0, 8]])


def test_a_placement_is_a_spec_transform_that_round_trips(tmp_path):
    spec = _spec()
    assert placements.placement_k(spec, ("d2", "d1")) == ((6, 0, 0), (0, 8, 0), (0, 0, 4))
    cases = {
        ("d2", "d1"): (["target", "d2", "d1", "max-gram"], ((6, 0, 0), (0, 8, 0), (0, 0, 4))),
        ("d2",): (["target", "d2", "max-gram"], ((6, 0), (0, 8))),
        ("d1",): (["target", "d1", "max-gram"], ((6, 0), (0, 4))),
        (): (["target", "max-gram"], ((6,),)),
    }
    config = tmp_path / "ladders.yaml"
    for placement, (rungs, k) in cases.items():
        order = placements.full_order(spec, placement)
        cand = Candidate(placements.placement_k(spec, placement), order=order)
        assert placements.placement_of(cand, spec.rung_names, 3) == placement
        name = "p-" + ("-".join(placement) or "mg")
        new = tuned_spec(spec, cand, name)
        assert new.rung_names == rungs and new.k_matrix == k
        assert validate(new) == new
        add_ladder(config, new)
        assert parse_config(config.read_text(), str(config))[name] == new
    half = placements.placement_k(spec, ("d2", "d1"), 0.5)
    assert half == ((3, 0, 0), (0, 4, 0), (0, 0, 2))


def test_candidates_put_the_current_and_each_placement_first():
    spec = _spec().with_settings(min_confidence=[0.2, 0.6])
    pool = placements.candidates(spec)
    assert pool[0].label == "current" and pool[0].order is None
    assert pool[0].k == ((6, 0, 0), (0, 4, 0), (0, 0, 8)) and pool[0].floor == (0.2, 0.6)
    assert len({c.key for c in pool}) == len(pool)
    count = len(placements.placements(("d1", "d2"), True))
    first = [placements.placement_of(c, spec.rung_names, 3) for c in pool[: 1 + count]]
    every_order_of_every_subset(set(first), ("d1", "d2"))
    flipped = next(c for c in pool if c.order == ("d2", "d1"))
    assert flipped.floor == (0.6, 0.2)  # each drafter keeps its own min_confidence
    assert tuned_spec(spec, flipped, "x").rung("d2").min_confidence == 0.6
    for c in pool:
        new = c.spec_of(spec)
        assert validate(new) == new
    from csdraft.tune import settings  # a setting shows the min_confidence of what it uses

    assert settings.shown((0.6, 0.2), [1, 3]) == 0.6 and settings.shown(0.4, [3]) == 0.4
    assert settings.shown((0.6, 0.2), [1, 2, 3]) == (0.6, 0.2)
    assert placements.pick(pool, count, budget_s=1.0, ar_s=10.0) == pool[: 1 + count]
    assert placements.pick(pool, count, budget_s=1e6, ar_s=1.0) == pool


def test_tune_places_a_foreign_drafter_and_judges_it(mixed3, monkeypatch):
    cfg, prompts = mixed3
    declared = noise.MeasuredMargin  # the timing-dependent verdict, made a win (test_tune_noise)
    monkeypatch.setattr(noise, "verdict", lambda base, win, band: declared(band + 0.5, band))
    seen = {}
    real = placements.measure

    def spy(loaded, cal, replay, chosen, *args, **kwargs):
        seen.update(names=loaded.spec.rung_names, chosen=list(chosen), replay=replay)
        return real(loaded, cal, replay, chosen, *args, **kwargs)

    monkeypatch.setattr(placements, "measure", spy)
    result = CliRunner().invoke(
        app,
        [
            "tune", "k-matrix", "--config", str(cfg), "--data", str(prompts), "--limit", "2",
            "--budget", "4", "--max-new-tokens", "8", "--write",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    chosen, names = seen["chosen"], seen["names"]
    assert seen["replay"] is None
    placed = [placements.placement_of(c, names, 3) for c in chosen]
    every_order_of_every_subset(set(placed), ("tiny-d", "tiny-f"))
    assert ("tiny-f", "tiny-d") in placed  # the foreign drafter above the other
    assert all(c.runs > 0 and c.identical == c.runs for c in chosen)  # every output is ar's
    out = " ".join(result.output.split())
    for needle in (
        "placements: measured",
        "forward pass cost on this machine",
        "best measured setting of each placement",
        "tiny-f (its own tokenizer): a pass costs",
        "its drafts as tiny-t reviewed them",
        "with it: ",
        "without it: ",
        "wrote ladder mixed3-tuned",
    ):
        assert needle in out, needle
    assert any(f"tiny-f {verb}" in out for verb in ("pays", "does not pay", "neither pays"))
    tuned = get_ladder("mixed3-tuned", cfg)
    assert validate(tuned) == tuned
    ladder = csdraft.load("mixed3-tuned", config=cfg)
    for prompt in PROMPTS:
        got = ladder.generate(prompt, 12, raw=True)
        want = ladder.generate(prompt, 12, raw=True, spec=ladder.spec.keep([], []))
        assert got.token_ids == want.token_ids, prompt


def test_tune_of_a_foreign_ladder_needs_a_budget(mixed3):
    cfg, prompts = mixed3
    from csdraft.tune.run import run_tune

    with pytest.raises(UsageError, match="tiny-f has its own tokenizer.*--budget more than 0"):
        run_tune("mixed3", str(prompts), 1, 0.0, False, None, 0, 4, cfg)


def test_ctrl_c_in_the_placements_runs_keeps_what_was_measured(mixed3, tmp_path, monkeypatch):
    ctrl_c_after_first_prompt(monkeypatch)
    monkeypatch.chdir(tmp_path)
    cfg, prompts = mixed3
    result = CliRunner().invoke(
        app,
        [
            "tune", "k-matrix", "--config", str(cfg), "--data", str(prompts), "--limit", "2",
            "--budget", "600", "--max-new-tokens", "6",
        ],
    )  # fmt: skip
    assert result.exit_code == 130, result.output + repr(result.exception)
    assert "kept the calibration and 1 prompt of real runs" in " ".join(result.output.split())
    (path,) = tmp_path.glob("tune-mixed3-interrupted-*.json")
    kept = json.loads(path.read_text())
    assert kept["predictions"] is None and kept["calibration"]["rungs"][2] == "tiny-f"
    settings = kept["real_runs"]["settings"]
    assert any(s != "ar" and s["rungs"].startswith("tiny-f+tiny-d") for s in settings.values())
    (done,) = kept["real_runs"]["rounds"]
    assert all(s["same_as_ar"] == [True] for s in done["settings"].values())


def test_without_a_replay_ar_is_judged_against_itself():
    quiet = noise.ArTimings(None, 1.0, [1.05])
    assert quiet.replay_gap is None and quiet.calibration_gap is None and not quiet.busy
    busy = noise.ArTimings(None, 1.0, [1.5])
    assert busy.busy and "predicted" not in busy.describe()
    assert noise.noise_band(busy, widen=True) == pytest.approx(0.5)
