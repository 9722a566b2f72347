"""A ladder whose drafter has its own tokenizer, loaded from disk: it loads (no refusal), its
greedy output is the target's own, and a tokenizer that cannot cross as text is refused in one
line."""

from __future__ import annotations

import pytest
from tiny_ladder import make_mixed_ladder, own_env, tiny_tokenizer  # noqa: F401 - fixture

import csdraft
from csdraft.errors import CsdraftError
from csdraft.trace import Stats

PROMPTS = ["The quick café", "def f(x):\n    return", "你好 brûlée fox"]


def test_mixed_ladder_is_the_targets_own_greedy(tmp_path):
    ladder = csdraft.load("mixed", config=make_mixed_ladder(tmp_path))
    target, foreign = ladder.models["tiny-t"], ladder.models["tiny-f"]
    assert target.tokenizer is not foreign.tokenizer
    ar = ladder.spec.keep([], [])
    crossed = 0
    for prompt in PROMPTS:
        got = ladder.generate(prompt, 24, raw=True)
        want = ladder.generate(prompt, 24, raw=True, spec=ar)
        assert got.token_ids == want.token_ids, prompt
        crossed += Stats.of(got.events).proposed.get(0, 0)
    assert crossed > 0  # the foreign drafter's drafts reached the target


def test_a_tokenizer_that_cannot_cross_is_refused(tmp_path):
    config = make_mixed_ladder(tmp_path, drafter_tokenizer=tiny_tokenizer())
    with pytest.raises(CsdraftError, match="tiny-f.*own tokenizer.*does not decode") as err:
        csdraft.load("mixed", config=config)
    assert "\n" not in str(err.value)


def test_tree_extend_by_a_foreign_drafter_is_refused(tmp_path):
    import yaml

    from csdraft.errors import UsageError

    config = make_mixed_ladder(tmp_path)
    ladders = yaml.safe_load(config.read_text())
    ladders["mixed"]["rungs"][0]["tree"] = {"budget": 8, "top_k": 1, "min_prob": 0.8, "extend": 2}
    config.write_text(yaml.safe_dump(ladders))
    with pytest.raises(UsageError, match="tree extend runs tiny-f, whose tokenizer differs"):
        csdraft.load("mixed", config=config)


def test_teacher_forcing_refuses_a_foreign_rung_in_one_line(tmp_path):
    """inspect's and tune's replay statistics teacher-force every rung on the target's tokens;
    tune's real-run calibration (no teacher forcing) times every model in its own tokens."""
    from csdraft.errors import UsageError
    from csdraft.tune.calibration import calibrate

    ladder = csdraft.load("mixed", config=make_mixed_ladder(tmp_path))
    with pytest.raises(UsageError, match="tiny-f has its own tokenizer; inspect's and tune's"):
        calibrate(ladder, [[5, 6, 7]], 4)
    cal = calibrate(ladder, [[5, 6, 7]], 4, lengths=(1, 2), repeats=1, teacher=False)
    assert len(cal.costs) == 2 and all(c(1) > 0 for c in cal.costs)
    assert cal.records[0].ref and not cal.records[0].top_ids
