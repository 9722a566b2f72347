"""Tiny models on disk for the csdraft.models tests: a Llama directory, a Qwen2 GGUF file, fake
offline packs and prepared cache entries, all built in code (no downloads)."""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from tiny_ladder import small_config, tiny_tokenizer

from csdraft.models import MANIFEST, PACKS, OfflinePack, cache_dir

WORDS = [f"w{i}" for i in range(90)]


def make_tokenizer(words=WORDS):
    return tiny_tokenizer(words)


def write_tiny_dir(path: Path) -> Path:
    """A tiny random Llama model and tokenizer saved as a plain directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    config = small_config(LlamaConfig, len(tok), 64, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- a tiny GGUF

_QWEN2_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def write_tiny_gguf(path: Path, seed: int = 1):
    """Write a tiny random Qwen2 model with a byte-level BPE vocab as an F32 GGUF file."""
    import gguf
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokens = ["<|endoftext|>", "<|im_end|>", "Ġ"]
    tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġa", "ab"]
    config = small_config(Qwen2Config, len(tokens), 128, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_block_count(2)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    w.add_token_merges(["Ġ a", "a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for key, value in model.state_dict().items():
        if key in fixed:
            name = fixed[key]
        else:
            _, _, layer, *rest = key.split(".")
            name = f"blk.{layer}.{_QWEN2_NAMES['.'.join(rest[:-1])]}.{rest[-1]}"
        w.add_tensor(name, value.float().numpy().copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def fake_pack(tmp_path, monkeypatch, data: bytes, n_parts=3, digest=None, filename="x.gguf"):
    """Register a pack whose chunk modules live in tmp_path and hold ``data`` split in parts."""
    prefix = f"csdraft_fake_{uuid.uuid4().hex[:8]}_part"
    mods = tmp_path / "mods"
    step = -(-len(data) // n_parts)
    names = []
    for i in range(n_parts):
        pkg = mods / f"{prefix}{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / "chunk.bin").write_bytes(data[i * step : (i + 1) * step])
        (pkg / "__init__.py").write_text(
            textwrap.dedent(
                """
                import os
                def get_part_path():
                    return os.path.join(os.path.dirname(__file__), "data", "chunk.bin")
                """
            )
        )
        names.append(pkg.name)
    monkeypatch.syspath_prepend(str(mods))
    pack = OfflinePack(
        name=f"fake-{prefix[13:21]}",
        modules=tuple(names),
        filename=filename,
        size=len(data),
        sha256=digest or hashlib.sha256(data).hexdigest(),
        extra="fake-extra",
    )
    monkeypatch.setitem(PACKS, pack.name, pack)
    return pack


def prepared_copy(tiny_dir: Path, name: str) -> Path:
    """Put tiny_dir into the cache as if it were a pack prepared by csdraft 0.1.0: a manifest
    with sizes only."""
    target = cache_dir() / "models" / name
    shutil.copytree(tiny_dir, target)
    files = {p.name: p.stat().st_size for p in target.iterdir()}
    (target / MANIFEST).write_text(json.dumps({"format": 1, "files": files}))
    return target


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    assert err.value.exit_code == 1
    return msg


def overwrite_middle(path: Path, length: int, seed: int = 0) -> None:
    """Overwrite ``length`` bytes in the middle of ``path`` with random ones (same size)."""
    size = path.stat().st_size
    data = torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(seed))
    with open(path, "r+b") as fh:
        fh.seek(max(0, size // 2 - length // 2))
        fh.write(bytes(data.to(torch.uint8).tolist()))
    assert path.stat().st_size == size
