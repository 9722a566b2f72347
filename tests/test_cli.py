"""The generate command end to end on tiny ladders: output, exactness, and one-line errors."""

from __future__ import annotations

import io
import json
import sys

import pytest
import yaml
from tiny_ladder import make_tiny_ladder, tiny_model_dir, tiny_tokenizer

from csdraft import cli


@pytest.fixture(scope="module")
def ladder_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    make_tiny_ladder(root, drafters=1, maxgram=True)
    return root


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CSDRAFT_CONFIG", str(tmp_path / "user.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run(capsys, monkeypatch, *args: str, stdin: str | bytes | None = None) -> tuple[int, str, str]:
    """Run ``csdraft ARGS`` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["csdraft", *args])
    if isinstance(stdin, bytes):
        stream = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    else:
        stream = io.StringIO(stdin if stdin is not None else "")
    monkeypatch.setattr(sys, "stdin", stream)
    cli._state["debug"] = False
    capsys.readouterr()  # drop whatever the test's own setup printed
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err


PROMPT = "w1 w2 w3 w4 w1 w2 w3"


def reference(ladder_dir, n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(ladder_dir / "target")
    ids = tiny_tokenizer()(PROMPT, return_tensors="pt")["input_ids"]
    out = target.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=2)
    return out[0, ids.shape[1] :].tolist()


def test_json_output_equals_target_greedy(capsys, monkeypatch, ladder_dir):
    cfg = str(ladder_dir / "cascades.yaml")
    code, out, err = run(
        capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT, "--json", "-n", "12"
    )
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"text", "token_ids", "lossless", "stats"}
    assert result["lossless"] is True and result["stats"]["lossless"] is True
    assert result["token_ids"] == reference(ladder_dir, 12)
    stats = result["stats"]
    assert stats["target_forwards"] >= 1
    assert stats["new_tokens"] == len(result["token_ids"])
    assert {"tiny-target", "tiny-d1"} <= set(stats["reviews"])


def test_a_ladder_with_trees_gives_the_targets_greedy_output(capsys, monkeypatch, ladder_dir):
    raw = yaml.safe_load((ladder_dir / "cascades.yaml").read_text())
    raw["tiny"]["tree"] = {"budget": 10, "top_k": 2, "min_prob": 1.0}  # branch everywhere
    cfg = ladder_dir / "trees.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    code, out, err = run(
        capsys, monkeypatch, "generate", "-c", str(cfg), "-p", PROMPT, "--json", "-n", "12"
    )
    assert code == 0, err
    assert json.loads(out)["token_ids"] == reference(ladder_dir, 12)


def test_stdin_prompt_and_plain_output(capsys, monkeypatch, ladder_dir):
    cfg = str(ladder_dir / "cascades.yaml")
    code, out, err = run(
        capsys, monkeypatch, "generate", "-c", cfg, "-n", "8", "--raw", stdin=PROMPT
    )
    assert code == 0, err
    expected = tiny_tokenizer().decode(reference(ladder_dir, 8), skip_special_tokens=True)
    assert out.strip() == expected.strip()  # only the text on stdout, no colour codes
    assert "\x1b[" not in out


def test_overrides_keep_output(capsys, monkeypatch, ladder_dir):
    cfg = str(ladder_dir / "cascades.yaml")
    args = ["generate", "-c", cfg, "-p", PROMPT, "--json", "-n", "12"]
    code, out, err = run(capsys, monkeypatch, *args, "--k-matrix", "5,1;0,2", "--lenience", "3")
    assert code == 0, err
    assert json.loads(out)["token_ids"] == reference(ladder_dir, 12)


def test_stop_string_cuts_after_it(capsys, monkeypatch, ladder_dir):
    cfg = str(ladder_dir / "cascades.yaml")
    ref = reference(ladder_dir, 12)
    words = tiny_tokenizer().convert_ids_to_tokens(ref)
    stop = words[4]
    cut = words.index(stop) + 1
    args = ["generate", "-c", cfg, "-p", PROMPT, "--json", "-n", "12", "--stop", stop]
    code, out, _ = run(capsys, monkeypatch, *args)
    assert code == 0
    result = json.loads(out)
    assert result["token_ids"] == ref[:cut]
    assert result["stats"]["finish"] == "stop"


def test_sampling_is_reproducible(capsys, monkeypatch, ladder_dir):
    cfg = str(ladder_dir / "cascades.yaml")
    args = ["generate", "-c", cfg, "-p", PROMPT, "--json", "-n", "10", "--temperature", "1.0"]
    outs = [json.loads(run(capsys, monkeypatch, *args, "--seed", "7")[1]) for _ in range(2)]
    assert outs[0]["token_ids"] == outs[1]["token_ids"]


def test_ctrl_c_keeps_what_was_generated(capsys, monkeypatch, ladder_dir):
    from csdraft.engine.cascade import Cascade

    original = Cascade.review
    calls = {"target": 0}

    def interrupt_on_third_target_review(self, rung, seq, block):
        if rung.index == 0:
            calls["target"] += 1
            if calls["target"] == 3:
                raise KeyboardInterrupt
        return original(self, rung, seq, block)

    monkeypatch.setattr(Cascade, "review", interrupt_on_third_target_review)
    cfg = str(ladder_dir / "cascades.yaml")
    code, out, err = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT, "--json")
    assert code == 130
    result = json.loads(out)
    assert result["stats"]["finish"] == "interrupted"
    assert 2 <= len(result["token_ids"]) < 16
    assert "interrupted" in err
    assert "Traceback" not in err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("csdraft: error:"), err
    assert "Traceback" not in err
    return lines[0]


def write_config(tmp_path, ladder_dir, **changes):
    raw = yaml.safe_load((ladder_dir / "cascades.yaml").read_text())
    raw["tiny"].update(changes)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["-p", "   "], 2, "prompt is empty"),
        (["-l", "nope"], 2, "unknown ladder 'nope'"),
        (["--k-matrix", "[[1]]"], 2, "k_matrix"),
        (["--k-matrix", "1,-1;0,1"], 2, "k_matrix[0][1] = -1"),
        (["--k-matrix", "[[1,2],[3,4]]"], 2, "below the diagonal"),
        (["--lenience", "0.5"], 2, "lenience"),
        (["--lenience", "nan"], 2, "lenience"),
        (["--min-confidence", "1.5"], 2, "min_confidence"),
        (["--temperature", "-1"], 2, "temperature"),
        (["--top-p", "0"], 2, "top_p"),
    ],
)
def test_usage_errors(capsys, monkeypatch, ladder_dir, args, code, needle):
    cfg = str(ladder_dir / "cascades.yaml")
    base = ["generate", "-c", cfg, "-p", PROMPT]
    if args[0] == "-p":
        base = base[:-2]
    got, _, err = run(capsys, monkeypatch, *base, *args)
    assert got == code
    assert needle in one_line_error(err)


def test_empty_stdin(capsys, monkeypatch, ladder_dir):
    cfg = str(ladder_dir / "cascades.yaml")
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, stdin="\n")
    assert code == 2
    assert "prompt is empty" in one_line_error(err)


def test_malformed_yaml(capsys, monkeypatch, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiny:\n  target: [unclosed\n")
    code, _, err = run(capsys, monkeypatch, "generate", "-c", str(bad), "-p", PROMPT)
    assert code == 2
    assert "malformed YAML" in one_line_error(err)


def test_missing_key_names_ladder_and_key(capsys, monkeypatch, tmp_path, ladder_dir):
    cfg = write_config(tmp_path, ladder_dir, drafters="not-a-list")
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT)
    assert code == 2
    assert "ladder 'tiny': drafters" in one_line_error(err)


def test_missing_model(capsys, monkeypatch, tmp_path, ladder_dir):
    cfg = write_config(tmp_path, ladder_dir, target={"model": str(tmp_path / "nowhere")})
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT)
    assert code == 1
    one_line_error(err)


def test_corrupt_model(capsys, monkeypatch, tmp_path, ladder_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ladder_dir / "target", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cfg = write_config(tmp_path, ladder_dir, target={"model": str(broken)})
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT)
    assert code == 1
    one_line_error(err)


def test_a_drafter_whose_tokenizer_cannot_cross_as_text(capsys, monkeypatch, tmp_path, ladder_dir):
    """Another tokenizer crosses as text; a word-level one that loses text cannot."""
    other = tiny_tokenizer([f"v{i}" for i in range(60)])
    odd = tiny_model_dir(tmp_path / "odd", 3, other)
    cfg = write_config(tmp_path, ladder_dir, drafters=[{"model": str(odd), "name": "odd"}])
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT)
    assert code == 1
    line = one_line_error(err)
    assert "rung 'odd'" in line and "does not decode its own encoding" in line


def test_prompt_longer_than_context(capsys, monkeypatch, ladder_dir):
    cfg = str(ladder_dir / "cascades.yaml")
    long_prompt = " ".join(["w1"] * 300)
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", long_prompt)
    assert code == 2
    assert "exceeds the target's context of 256" in one_line_error(err)


def test_cascade_is_faster_in_target_forwards(capsys, monkeypatch, ladder_dir):
    """A drafter that agrees with the target saves target forward passes."""
    cfg = str(ladder_dir / "cascades.yaml")
    code, out, _ = run(capsys, monkeypatch, "generate", "-c", cfg, "-p", PROMPT, "--json")
    stats = json.loads(out)["stats"]
    assert stats["tokens_per_target_forward"] > 1.0


def no_model_loads(monkeypatch):
    """Make any model load fail loudly: the checks under test must come before it."""
    from csdraft.api import Ladder

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(Ladder, "load", refuse)


def test_non_utf8_stdin_is_refused_before_loading(capsys, monkeypatch, ladder_dir):
    no_model_loads(monkeypatch)
    cfg = str(ladder_dir / "cascades.yaml")
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, stdin=b"ok \xff\xfe bytes")
    assert code == 2
    assert "stdin is not UTF-8 text (byte 0xff at offset 3)" in one_line_error(err)


def test_unwritable_trace_is_refused_before_loading(capsys, monkeypatch, ladder_dir):
    no_model_loads(monkeypatch)
    cfg = str(ladder_dir / "cascades.yaml")
    args = ["generate", "-c", cfg, "-p", PROMPT, "--json", "--save-trace", "/proc/nope.jsonl"]
    code, out, err = run(capsys, monkeypatch, *args)
    assert code == 2 and out == ""
    assert "--save-trace: cannot write /proc/nope.jsonl" in one_line_error(err)


def test_a_failed_trace_save_keeps_the_output(capsys, monkeypatch, ladder_dir, tmp_path):
    """The JSON is printed before the trace is written, so a failure there loses nothing."""
    from csdraft import trace
    from csdraft.errors import CsdraftError

    def fail(*args, **kwargs):
        raise CsdraftError("cannot write the trace: disk full")

    monkeypatch.setattr(trace, "save", fail)
    cfg = str(ladder_dir / "cascades.yaml")
    args = ["generate", "-c", cfg, "-p", PROMPT, "--json", "-n", "6"]
    code, out, err = run(capsys, monkeypatch, *args, "--save-trace", str(tmp_path / "t.jsonl"))
    assert code == 1
    assert len(json.loads(out)["token_ids"]) == 6
    assert "disk full (the output above is complete)" in one_line_error(err)


def test_deeply_nested_k_matrix(capsys, monkeypatch, ladder_dir):
    cfg = str(ladder_dir / "cascades.yaml")
    for depth, needle in ((100_000, "200000 characters long"), (1_000, "nested too deep")):
        deep = "[" * depth + "]" * depth
        args = ["generate", "-c", cfg, "-p", PROMPT, "--k-matrix", deep]
        code, _, err = run(capsys, monkeypatch, *args)
        assert code == 2
        assert needle in one_line_error(err)


def test_huge_prompt_is_refused_before_loading(capsys, monkeypatch, ladder_dir):
    no_model_loads(monkeypatch)
    cfg = str(ladder_dir / "cascades.yaml")
    huge = " ".join(["w1"] * 7000)  # 20,999 bytes, far beyond the tiny target's 256 tokens
    code, _, err = run(capsys, monkeypatch, "generate", "-c", cfg, stdin=huge)
    assert code == 2
    assert "exceeds the target's context of 256" in one_line_error(err)


@pytest.mark.parametrize(
    ("where", "args"),
    [
        ("csdraft.inspector.run_inspect", ["inspect"]),
        ("csdraft.tune.run_tune", ["tune", "k-matrix", "--data", "gsm8k"]),
        ("csdraft.tune.deferral.run_tune_deferral", ["tune", "deferral"]),
        ("csdraft.bench.run_bench", ["bench", "gsm8k"]),
        ("csdraft.api.Ladder.load", ["generate", "-p", PROMPT]),
    ],
)
def test_ctrl_c_in_any_command_says_interrupted(capsys, monkeypatch, ladder_dir, where, args):
    """Ctrl-C outside the loops that keep partial work (here: while starting up) is one line
    and exit 130 in every command, not typer's silent exit."""

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(where, interrupt)
    cfg = str(ladder_dir / "cascades.yaml")
    code, _, err = run(capsys, monkeypatch, *args, "-c", cfg)
    assert code == 130
    assert [ln for ln in err.splitlines() if ln.strip()] == ["csdraft: interrupted"]


def test_a_deferral_list_of_the_wrong_length_is_written_as_rules(capsys, monkeypatch, ladder_dir):
    no_model_loads(monkeypatch)
    cfg = str(ladder_dir / "cascades.yaml")
    args = ["generate", "-c", cfg, "-p", PROMPT, "--deferral", "chow,diff,v3", "--alpha", "0.1"]
    code, _, err = run(capsys, monkeypatch, *args)
    assert code == 2
    line = one_line_error(err)
    assert "chow@0.1, diff@0.1, v3@0.1" in line and "Deferral(" not in line
