"""``csdraft generate --batch``: line for line the outputs of separate ``generate`` calls, in
input order, from a file or stdin; bad lines are one-line usage errors naming the line."""

from __future__ import annotations

import json

from test_cli import _env, ladder_dir, run  # noqa: F401 - fixtures

LINES = [
    {"prompt": "w1 w2 w3 w4 w1 w2 w3"},
    {"prompt": "w5 w6", "temperature": 0.9, "seed": 4, "max_new_tokens": 7},
    {"prompt": "w9 w9 w9 w8 w7 w6 w5 w4 w3 w2 w1 w9 w9", "stop": ["w3"]},
]


def test_batch_equals_separate_generate_calls(capsys, monkeypatch, ladder_dir, tmp_path):
    cfg = str(ladder_dir / "cascades.yaml")
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in LINES) + "\n\n")
    code, out, err = run(capsys, monkeypatch, "generate", "--config", cfg, "--batch", str(path))
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    want = []
    for line in LINES:
        args = ["generate", "--config", cfg, "--json", "-p", line["prompt"]]
        for key in ("temperature", "seed", "max_new_tokens"):
            if key in line:
                args += [f"--{key.replace('_', '-')}", str(line[key])]
        args += [a for s in line.get("stop", []) for a in ("--stop", s)]
        code, one, err = run(capsys, monkeypatch, *args)
        assert code == 0, err
        want.append(json.loads(one))
    assert [g["token_ids"] for g in got] == [w["token_ids"] for w in want]
    assert [g["text"] for g in got] == [w["text"] for w in want]
    stdin = "\n".join(json.dumps(x) for x in LINES)
    code, again, _ = run(
        capsys, monkeypatch, "generate", "--config", cfg, "--batch", "-", stdin=stdin
    )
    assert code == 0 and [json.loads(x)["token_ids"] for x in again.splitlines()] == [
        w["token_ids"] for w in want
    ]


def test_bad_lines_are_one_line_usage_errors(capsys, monkeypatch, ladder_dir):
    cfg = str(ladder_dir / "cascades.yaml")
    cases = {
        '{"prompt": "w1"}\n{"promt": "w2"}': "line 2: unknown key",
        '{"prompt": "w1"}\nnot json': "line 2: not valid JSON",
        '{"prompt": ""}': "line 1: expected a non-empty 'prompt'",
        '{"prompt": "w1", "temperature": -1}': "line 1",
        "\n\n": "no prompts",
    }
    for stdin, message in cases.items():
        code, out, err = run(
            capsys, monkeypatch, "generate", "--config", cfg, "--batch", "-", stdin=stdin
        )
        assert code == 2 and message in err and err.count("\n") == 1 and not out, (stdin, err)


def test_lines_written_survive_an_interrupt(capsys, monkeypatch, ladder_dir, tmp_path):
    """Each result is written as soon as it and those before it are done: Ctrl-C after two
    keeps their lines, says how many were written, and exits 130."""
    from csdraft.api import Ladder

    iter_many = Ladder.iter_many

    def interrupted(self, *args, **kwargs):
        results = iter_many(self, *args, **kwargs)
        yield next(results)
        yield next(results)
        raise KeyboardInterrupt

    monkeypatch.setattr(Ladder, "iter_many", interrupted)
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in LINES))
    cfg = str(ladder_dir / "cascades.yaml")
    code, out, err = run(capsys, monkeypatch, "generate", "--config", cfg, "--batch", str(path))
    assert code == 130
    lines = out.splitlines()
    assert len(lines) == 2 and all(json.loads(line)["text"] for line in lines)
    assert "2 of 3 results written" in err and "interrupted" in err and "Traceback" not in err
