"""Tiny random ladders on disk: model directories, a tokenizer and a cascades.yaml for them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(autouse=True, name="_env")
def own_env(tmp_path, monkeypatch):
    """For the test modules that import it: every test gets its own cache and user config, and
    no hub access."""
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CSDRAFT_CONFIG", str(tmp_path / "user-cascades.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_tokenizer(words: list[str] = WORDS):
    """A word-level fast tokenizer with <unk>, <eos>, <pad>."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "<pad>": 2}
    for w in words:
        vocab[w] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    from tokenizers.decoders import WordPiece

    tok.decoder = WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )


BPE_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Naïve café owners serve crème brûlée; "
    "数学很有趣 and 你好世界! def f(x):\n    return x * 2\n\n"
) * 20


def bpe_tokenizer(size: int, extra: str = ""):
    """A byte-level BPE (GPT-2 style) trained on ``BPE_CORPUS`` + ``extra`` to ``size`` tokens,
    with <eos> and a <sep> special: two sizes or extras give genuinely different tokenizers."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=["<eos>", "<sep>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([BPE_CORPUS + extra], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", additional_special_tokens=["<sep>"]
    )


FOREIGN_EXTRA = "zebra quokka fjord " * 40 + "brûlée 世界 " * 30
"""What the foreign tokenizer (``bpe_tokenizer(330, FOREIGN_EXTRA)``) learns besides."""


def make_mixed_ladder(root: Path, drafter_tokenizer=None, name: str = "mixed") -> Path:
    """A target with one byte-level BPE, a drafter with another (or ``drafter_tokenizer``),
    and Max-Gram; return the config path."""
    target = tiny_model_dir(root / "target", 0, bpe_tokenizer(300))
    foreign = drafter_tokenizer or bpe_tokenizer(330, FOREIGN_EXTRA)
    drafter = tiny_model_dir(root / "drafter", 1, foreign)
    ladder = {
        "rungs": [
            {"name": "tiny-t", "model": str(target), "dtype": "float32"},
            {"name": "tiny-f", "model": str(drafter), "dtype": "float32"},
            {"kind": "max-gram", "max_ngram": 4},
        ],
        "k_matrix": [[3, 0], [0, 3]],
        "generation": {"max_new_tokens": 16},
    }
    config = root / "cascades.yaml"
    config.write_text(yaml.safe_dump({name: ladder}, sort_keys=False))
    return config


def small_config(config_cls, vocab_size: int, max_positions: int, **settings):
    """A ``config_cls`` (LlamaConfig, Qwen2Config) for a tiny model: two layers 32 wide, four
    attention heads sharing two key/value heads; ``settings``: the rest of the config."""
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        **settings,
    )


def tiny_model_dir(path: Path, seed: int, tokenizer, base: Path | None = None, noise: float = 0.0):
    """Save a tiny Llama (or a noisy copy of ``base``, so drafts often agree) with the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = small_config(
        LlamaConfig,
        len(tokenizer),
        256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config) if base is None else LlamaForCausalLM.from_pretrained(base)
    if noise:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn_like(p))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_ladder(root: Path, drafters: int = 1, maxgram: bool = True, name: str = "tiny"):
    """Build a target and ``drafters`` noisy copies under ``root``; return the config path."""
    tok = tiny_tokenizer()
    target = tiny_model_dir(root / "target", 0, tok)
    models = [
        tiny_model_dir(root / f"drafter{i}", i, tok, base=target, noise=0.003 * i)
        for i in range(1, drafters + 1)
    ]
    d = drafters + (1 if maxgram else 0)
    k = [[(3 if c >= r else 0) for c in range(d)] for r in range(d)]
    ladder = {
        "target": {"model": str(target), "name": "tiny-target"},
        "drafters": [{"model": str(m), "name": f"tiny-d{i + 1}"} for i, m in enumerate(models)],
        "maxgram": {"max_ngram": 4} if maxgram else False,
        "k_matrix": k,
        "dtype": "float32",
        "generation": {"max_new_tokens": 16},
    }
    config = root / "cascades.yaml"
    config.write_text(yaml.safe_dump({name: ladder}, sort_keys=False))
    return config
