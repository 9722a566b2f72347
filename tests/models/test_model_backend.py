"""Tests for csdraft.models' backend factory and the transformers backend's loaded model."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from model_fixtures import own_home, tiny_dir_fixture  # noqa: F401 - fixtures

from csdraft.errors import UsageError
from csdraft.ladder import ModelSpec
from csdraft.models import (
    BACKENDS,
    LoadedModel,
    TransformersModel,
    TransformersScorer,
    load,
    load_model,
)


def test_backends_table_and_unknown_backend(tiny_dir):
    assert list(BACKENDS) == ["transformers", "llama.cpp"]
    spec = SimpleNamespace(ref=str(tiny_dir), name="drafty", dtype="float32", device="cpu")
    spec.backend = "vllm"
    with pytest.raises(UsageError) as err:
        load(spec, progress=False)
    msg = str(err.value)
    assert "drafty" in msg and "'vllm'" in msg and "known backends: llama.cpp, transformers" in msg


def test_load_spec_returns_a_transformers_model(tiny_dir):
    lm = load(ModelSpec(ref=str(tiny_dir), name="t", dtype="float32"), progress=False)
    assert isinstance(lm, TransformersModel) and isinstance(lm, LoadedModel)
    assert (lm.ref, lm.path, lm.dtype, lm.device) == (str(tiny_dir), tiny_dir, "float32", "cpu")
    assert lm.source == f"local dir {tiny_dir}" and not lm.model.training
    # a spec from before the backend field existed loads with transformers too
    old = SimpleNamespace(ref=str(tiny_dir), name="t", dtype="bfloat16", device="cpu")
    assert load(old, False).compute_dtype == "bfloat16"
    # the old loader still returns the same kind of object
    assert isinstance(load_model(str(tiny_dir), progress=False), TransformersModel)


def test_model_facts(tiny_dir):
    full = load_model(str(tiny_dir), "float32", progress=False)
    config = full.model.config
    assert full.context_length == 64 and full.vocab_size == config.vocab_size
    assert full.compute_dtype == "float32" and full.int8_layers() == 0
    int8 = load_model(str(tiny_dir), "int8", progress=False)
    assert int8.dtype == "int8" and int8.compute_dtype == "float32"
    assert int8.int8_layers() == 2 * 7 + 1  # q k v o gate up down per layer, and the head
    assert int8.parameter_count() == full.parameter_count()
    assert int8.weight_bytes() < full.weight_bytes()
    bf16 = load_model(str(tiny_dir), "bfloat16", progress=False)
    assert bf16.compute_dtype == "bfloat16" and bf16.weight_bytes() * 2 == full.weight_bytes()


def test_eos_ids(tiny_dir):
    lm = load_model(str(tiny_dir), "float32", progress=False)
    eos = lm.tokenizer.eos_token_id
    assert lm.eos_ids == [eos]
    lm.model.generation_config.eos_token_id = [7, eos, 5]
    assert lm.eos_ids == sorted({5, 7, eos})
    lm.model.generation_config.eos_token_id = None
    assert lm.eos_ids == [eos]


def test_next_logits_and_sessions(tiny_dir):
    lm = load_model(str(tiny_dir), "float32", progress=False)
    seq = np.array([3, 9, 4, 17, 5, 6, 8], dtype=np.int64)
    with torch.no_grad():
        full = lm.model(torch.from_numpy(seq)[None]).logits[0]
    got = lm.next_logits(seq.tolist())
    assert got.dtype == torch.float32 and got.shape == (lm.vocab_size,)
    torch.testing.assert_close(got, full[-1], rtol=1e-5, atol=1e-5)

    a, b = lm.session("a"), lm.session("b")
    assert isinstance(a, TransformersScorer) and (a.name, b.name) == ("a", "b")
    # the start of a sequence, then the rest: logits for each new position and the next
    torch.testing.assert_close(a.score(seq[:4], 1), full[:4], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.score(seq, 4), full[3:], rtol=1e-4, atol=1e-4)
    # a rejected tail is cropped from the cache: scoring another continuation is exact
    other = np.concatenate([seq[:5], [11, 12]])
    with torch.no_grad():
        want = lm.model(torch.from_numpy(other)[None]).logits[0]
    torch.testing.assert_close(a.score(other, 5), want[4:], rtol=1e-4, atol=1e-4)
    assert b.cache is None  # sessions share the model, never the cache
    a.reset()
    assert a.cache is None and len(a.tokens) == 0


def test_importing_models_stays_cheap():
    code = (
        "import sys, csdraft.models as m; "
        "assert callable(m.load) and 'transformers' in m.BACKENDS; "
        "print(sorted(x for x in ('torch', 'transformers', 'llama_cpp') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
