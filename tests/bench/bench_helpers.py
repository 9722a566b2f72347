"""Helpers for the bench tests: JSON-lines files and a tiny byte-level ladder's parts."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from engine_helpers import build_model

GSM8K_ROWS = [
    {
        "question": "Janet has 16 eggs and eats 3. How many are left?",
        "answer": "16 - 3 = <<16-3=13>>13\n#### 13",
    },
    {"question": "A robe takes 2 bolts and half that much more. Total?", "answer": "#### 3"},
    {"question": "What is 1,000 + 234?", "answer": "1,000 + 234 = 1,234\n#### 1,234"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
    """engine_helpers' tiny float32 Llama (16 wide, one layer, spread-out logits: no near-ties
    between the two best tokens), with ``eos`` as its eos and pad token."""
    return build_model(
        "llama", vocab, max_position_embeddings=1024, eos_token_id=eos, pad_token_id=eos
    )
