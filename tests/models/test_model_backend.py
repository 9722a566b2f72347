"""Tests for csdraft.models' backend factory and the transformers backend's loaded model."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from typing import Protocol

import numpy as np
import pytest
import torch
from model_fixtures import own_home, tiny_dir_fixture  # noqa: F401 - fixtures

from csdraft.errors import UsageError
from csdraft.models import (
    BACKENDS,
    LoadedModel,
    TransformersModel,
    TransformersScorer,
    backend_class,
    load,
)
from csdraft.models.llamacpp_backend import LlamaCppModel, LlamaCppScorer
from csdraft.models.transformers_backend import DTYPES, load_transformers
from csdraft.spec import RungSpec as ModelSpec

CAPABILITIES = {  # scores_trees, supports_vocab, cpu_only, dtypes
    "transformers": (True, True, False, DTYPES),
    "llama.cpp": (False, False, True, ("gguf",)),
}


def protocol_members(protocol: type) -> dict[str, str]:
    """Each member of ``protocol`` and its kind: classvar, data, property, classmethod or
    method."""
    out = {}
    for name, hint in protocol.__annotations__.items():
        out[name] = "classvar" if str(hint).startswith("ClassVar") else "data"
    for name, value in vars(protocol).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            out[name] = "property"
        elif isinstance(value, classmethod):
            out[name] = "classmethod"
        elif inspect.isfunction(value):
            out[name] = "method"
    return out


def kind_problems(cls: type, protocol: type) -> list[str]:
    """Where ``cls`` fails ``protocol`` structurally: a member missing or of another kind (a
    field or a property stands for a data member or a property), or a method or classmethod
    whose parameters differ."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    hints = {
        k: str(v)
        for c in reversed(cls.__mro__)
        for k, v in vars(c).get("__annotations__", {}).items()
    }
    problems = []
    for name, kind in protocol_members(protocol).items():
        try:
            value = inspect.getattr_static(cls, name)
        except AttributeError:
            value = None
        if name in fields or isinstance(value, property):
            got = "readable"
        elif isinstance(value, classmethod):
            got = "classmethod"
        elif isinstance(value, staticmethod):
            got = "staticmethod"
        elif inspect.isfunction(value):
            got = "method"
        elif hints.get(name, "").startswith("ClassVar"):
            got = "classvar"
        else:
            problems.append(f"{cls.__name__}.{name}: missing (want {kind})")
            continue
        want = "readable" if kind in ("data", "property") else kind
        if got != want:
            problems.append(f"{cls.__name__}.{name}: a {got}, want a {kind}")
        elif kind in ("method", "classmethod"):
            params = list(inspect.signature(getattr(cls, name)).parameters)
            wanted = list(inspect.signature(getattr(protocol, name)).parameters)
            if params != wanted:
                problems.append(f"{cls.__name__}.{name}{params}: want parameters {wanted}")
    return problems


@pytest.mark.parametrize("cls", [TransformersModel, LlamaCppModel])
def test_both_backends_satisfy_the_loaded_model_protocol(cls):
    assert kind_problems(cls, LoadedModel) == []
    backend = next(name for name in BACKENDS if backend_class(name) is cls)
    assert (cls.scores_trees, cls.supports_vocab, cls.cpu_only, cls.dtypes) == CAPABILITIES[backend]
    assert all(isinstance(v, bool) for v in CAPABILITIES[backend][:3])


def test_the_protocol_check_can_fail():
    class Broken(TransformersModel):
        reference_problem = staticmethod(lambda ref: None)  # not a classmethod
        cpu_only = property(lambda self: False)  # per instance, not per class

        def session(self, name):  # vocab missing
            return None

    problems = kind_problems(Broken, LoadedModel)
    assert sorted(p.split(":")[0].split("[")[0] for p in problems) == [
        "Broken.cpu_only",
        "Broken.reference_problem",
        "Broken.session",
    ], problems

    class Wider(LoadedModel, Protocol):
        def unload(self) -> None: ...

    assert kind_problems(TransformersModel, Wider) == [
        "TransformersModel.unload: missing (want method)"
    ]
    assert not isinstance(object(), LoadedModel)


def test_scorers_declare_whether_they_score_trees():
    assert TransformersScorer.scores_trees and hasattr(TransformersScorer, "score_tree")
    assert not LlamaCppScorer.scores_trees and not hasattr(LlamaCppScorer, "score_tree")


def test_reference_problem():
    assert TransformersModel.reference_problem("some/hub-id") is None
    assert LlamaCppModel.reference_problem("x.GGUF") is None
    assert LlamaCppModel.reference_problem("pack:qwen2.5-coder-0.5b-instruct") is None
    for ref in ("some/hub-id", "pack:no-such-pack", "model.safetensors"):
        msg = LlamaCppModel.reference_problem(ref)
        assert msg and repr(ref) in msg and "neither an offline pack nor" in msg


def test_backends_table_and_unknown_backend(tiny_dir):
    assert list(BACKENDS) == ["transformers", "llama.cpp"]
    with pytest.raises(
        UsageError, match=r"^unknown backend 'vllm'; known backends: llama.cpp, transformers$"
    ):
        backend_class("vllm")
    spec = ModelSpec(ref=str(tiny_dir), name="drafty", dtype="float32", backend="vllm")
    with pytest.raises(UsageError) as err:
        load(spec, progress=False)
    msg = str(err.value)
    assert msg.startswith("model 'drafty': unknown backend 'vllm'") and "known backends" in msg


def test_a_cpu_only_backend_refuses_another_device():
    spec = ModelSpec(ref="x.gguf", name="d", dtype="gguf", device="cuda", backend="llama.cpp")
    with pytest.raises(
        UsageError, match=r"^model 'd': backend llama.cpp runs on the CPU here; got device 'cuda'$"
    ):
        load(spec, progress=False)


def test_load_spec_returns_a_transformers_model(tiny_dir):
    lm = load(ModelSpec(ref=str(tiny_dir), name="t", dtype="float32"), progress=False)
    assert isinstance(lm, TransformersModel) and isinstance(lm, LoadedModel)
    assert (lm.ref, lm.path, lm.dtype, lm.device) == (str(tiny_dir), tiny_dir, "float32", "cpu")
    assert lm.source == f"local dir {tiny_dir}" and not lm.model.training
    assert lm.weight_format is None


def test_model_facts(tiny_dir):
    full = load_transformers(str(tiny_dir), "float32", progress=False)
    config = full.model.config
    assert full.context_length == 64 and full.vocab_size == config.vocab_size
    assert full.compute_dtype == "float32" and full.int8_layers() == 0
    int8 = load_transformers(str(tiny_dir), "int8", progress=False)
    assert int8.dtype == "int8" and int8.compute_dtype == "float32"
    assert int8.int8_layers() == 2 * 7 + 1  # q k v o gate up down per layer, and the head
    assert int8.parameter_count() == full.parameter_count()
    assert int8.weight_bytes() < full.weight_bytes()
    bf16 = load_transformers(str(tiny_dir), "bfloat16", progress=False)
    assert bf16.compute_dtype == "bfloat16" and bf16.weight_bytes() * 2 == full.weight_bytes()


def test_eos_ids(tiny_dir):
    lm = load_transformers(str(tiny_dir), "float32", progress=False)
    eos = lm.tokenizer.eos_token_id
    assert lm.eos_ids == [eos]
    lm.model.generation_config.eos_token_id = [7, eos, 5]
    assert lm.eos_ids == sorted({5, 7, eos})
    lm.model.generation_config.eos_token_id = None
    assert lm.eos_ids == [eos]


def test_next_logits_and_sessions(tiny_dir):
    lm = load_transformers(str(tiny_dir), "float32", progress=False)
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


def test_importing_models_and_naming_a_backend_stay_cheap():
    """``csdraft.models`` imports no torch, transformers or llama_cpp, and the llama.cpp class
    (with its capabilities) is known without importing llama_cpp."""
    code = (
        "import sys, csdraft.models as m; from csdraft.models.load import backend_class; "
        "assert callable(m.load) and 'transformers' in m.BACKENDS; "
        "print(sorted(x for x in ('torch', 'transformers', 'llama_cpp') if x in sys.modules)); "
        "cls = backend_class('llama.cpp'); "
        "print(cls.__name__, cls.scores_trees, 'llama_cpp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "LlamaCppModel False False"]
