"""Results files read back: --resume continues only the identical run (the whole ladder spec,
the methods' settings), and a file of the wrong shape is one line saying what is wrong where,
for --resume, --report and --compare alike."""

from __future__ import annotations

import json

import pytest
import yaml

from csdraft.bench.results import first_difference
from csdraft.bench.run import run_bench, run_compare, run_report
from csdraft.errors import UsageError


def bench(config, data, out, methods="ar,csd", **options):
    return run_bench("gsm8k", data=data, config=config, ladder="tiny", methods=methods,
                     max_new_tokens=4, warmup=0, no_plot=True, quiet=True, out=out,
                     **options)  # fmt: skip


@pytest.fixture
def partial(tiny_config, gsm8k_file, tmp_path):
    """A results file cut short after its first prompt (of two)."""
    out = tmp_path / "r.json"
    first = bench(tiny_config, gsm8k_file, out, methods="ar,csd,csd@tiny-slow")
    cut = {**first, "complete": False, "stopped": "after prompt 1 of 2"}
    cut["prompts"] = first["prompts"][:1]
    out.write_text(json.dumps(cut))
    return out


def edited(tiny_config, tmp_path, ladders, **changes):
    raw = yaml.safe_load(tiny_config.read_text())
    for ladder in ladders.split(","):
        raw[ladder].update(changes)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("ladders", "changes", "needles"),
    [
        ("tiny,tiny-slow", {"dtype": "bfloat16"}, ["(ladder.", "dtype 'float32' -> 'bfloat16')"]),
        ("tiny", {"k_matrix": [[2, 0], [0, 2]]}, ["(ladder.", "k_matrix[0][0] 3 -> 2)"]),
        ("tiny", {"generation": {"seed": 7}}, ["(ladder.", "seed", "-> 7)"]),
        ("tiny-slow", {"min_confidence": 0.5}, ["(method_configs.csd@tiny-slow.", "0.3 -> 0.5)"]),
    ],
)
def test_resume_refuses_a_ladder_or_method_that_differs(
    tiny_config, gsm8k_file, tmp_path, partial, ladders, changes, needles
):
    """Same ladder name, same methods, same settings: only the spec (or another ladder's that
    a method uses) differs, and the resumed run would have mixed the two."""
    config = edited(tiny_config, tmp_path, ladders, **changes)
    with pytest.raises(UsageError) as err:
        bench(config, gsm8k_file, partial, methods="ar,csd,csd@tiny-slow", resume=True)
    msg = str(err.value)
    assert msg.startswith(f"--resume: {partial} is another run (") and "\n" not in msg
    for needle in needles:
        assert needle in msg
    assert json.loads(partial.read_text())["complete"] is False  # the file is left as it was


def test_resume_of_the_identical_run_goes_on(tiny_config, gsm8k_file, partial):
    again = bench(tiny_config, gsm8k_file, partial, methods="ar,csd,csd@tiny-slow", resume=True)
    assert [p["index"] for p in again["prompts"]] == [0, 1] and again["complete"]


def test_resume_refuses_a_file_from_before_full_spec_checks(tiny_config, gsm8k_file, partial):
    old = json.loads(partial.read_text())
    del old["ladder"]["spec"]
    partial.write_text(json.dumps(old))
    with pytest.raises(UsageError, match="predates full-spec checks.*start a new run"):
        bench(tiny_config, gsm8k_file, partial, methods="ar,csd,csd@tiny-slow", resume=True)


def test_first_difference_names_the_key_path():
    old = {"target": {"dtype": "int8"}, "k": [[1, 2]], "g": {"stop": []}}
    assert first_difference(old, old) is None
    assert first_difference(old, {**old, "target": {"dtype": "bfloat16"}}, "ladder") == (
        "ladder.target.dtype 'int8' -> 'bfloat16'"
    )
    assert first_difference(old, {**old, "k": [[1, 3]]}) == "k[0][1] 2 -> 3"
    assert first_difference(old, {**old, "k": [[1, 2], [0, 1]]}) == "k [[1, 2]] -> [[1, 2], [0, 1]]"
    assert first_difference(old, {**old, "x": 1}) == "x (none) -> 1"
    assert first_difference({"a": 1}, {"a": 1.0}) is None


def damage(path, where: str) -> None:
    results = json.loads(path.read_text())
    if where == "settings":
        del results["settings"]
    else:
        del results["prompts"][0]["results"]["ar"]["wall_s"]
    path.write_text(json.dumps(results))


@pytest.mark.parametrize(
    ("where", "needle"),
    [("settings", "is damaged: no 'settings'"),
     ("wall_s", "is damaged: no 'wall_s' in prompts[0].results.ar")],
)  # fmt: skip
@pytest.mark.parametrize("flag", ["--resume", "--report", "--compare"])
def test_a_results_file_of_the_wrong_shape_is_one_line(
    tiny_config, gsm8k_file, partial, flag, where, needle
):
    damage(partial, where)
    with pytest.raises(UsageError) as err:
        if flag == "--resume":
            bench(tiny_config, gsm8k_file, partial, methods="ar,csd,csd@tiny-slow", resume=True)
        elif flag == "--report":
            run_report(partial, None, no_plot=True, as_json=False)
        else:
            run_compare(partial, partial)
    assert str(err.value) == f"{flag}: {partial} {needle}"


def test_the_cli_says_it_in_one_line(partial, capsys, monkeypatch):
    import sys

    from csdraft import cli

    damage(partial, "wall_s")
    monkeypatch.setattr(sys, "argv", ["csdraft", "bench", "--report", str(partial), "--no-plot"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err == f"csdraft: error: --report: {partial} is damaged: no 'wall_s' in prompts[0]" + (
        ".results.ar"
    )
