"""Tiny random encoder-decoder models on disk (T5 and BART, sharing ``tiny_tokenizer``) and
ladder YAML over them, for the encoder-decoder tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_ladder import tiny_tokenizer

TOKENIZER = tiny_tokenizer()
EOS, PAD = TOKENIZER.eos_token_id, TOKENIZER.pad_token_id


def t5_config(width: int = 32, layers: int = 2, vocab: int = len(TOKENIZER)):
    """A tiny T5 config sized to ``TOKENIZER`` (relative positions: no length limit)."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab,
        d_model=width,
        d_kv=8,
        d_ff=2 * width,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        eos_token_id=EOS,
        pad_token_id=PAD,
        decoder_start_token_id=PAD,
        tie_word_embeddings=False,
    )


def bart_config(width: int = 32, layers: int = 2, positions: int = 64, vocab: int = len(TOKENIZER)):
    """A tiny BART config sized to ``TOKENIZER`` (learned positions: ``positions`` at most);
    no forced tokens, so transformers' greedy ``generate`` is the plain argmax."""
    from transformers import BartConfig

    return BartConfig(
        vocab_size=vocab,
        d_model=width,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * width,
        decoder_ffn_dim=2 * width,
        max_position_embeddings=positions,
        dropout=0.0,
        eos_token_id=EOS,
        pad_token_id=PAD,
        bos_token_id=0,
        decoder_start_token_id=EOS,
        forced_eos_token_id=None,
        forced_bos_token_id=None,
        tie_word_embeddings=False,
    )


def random_model(config, seed: int) -> torch.nn.Module:
    """A random model of ``config``, its matrices drawn wider than the default init so that
    its greedy outputs vary (tied-looking tiny models repeat their input token)."""
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


def model_dir(path: Path, config, seed: int, base: Path | None = None, noise: float = 0.0):
    """Save a random model of ``config`` (or a copy of ``base`` with ``noise`` added to every
    weight, so its drafts often agree) with the tokenizer; returns ``path``."""
    from transformers import AutoModelForSeq2SeqLM

    if base is None:
        model = random_model(config, seed)
    else:
        torch.manual_seed(seed)
        model = AutoModelForSeq2SeqLM.from_pretrained(base)
    if noise:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * p.std() * torch.randn_like(p))
    model.save_pretrained(path)
    TOKENIZER.save_pretrained(path)
    return path


def truncated_dir(path: Path, base: Path, layers: int = 1) -> Path:
    """Save a smaller model made of ``base``'s first ``layers`` encoder and decoder layers (its
    embeddings, norms and head too): a smaller drafter that still agrees with ``base`` at
    times."""
    from transformers import AutoModelForSeq2SeqLM

    full = AutoModelForSeq2SeqLM.from_pretrained(base)
    config = full.config.to_dict()
    for key in ("num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers"):
        if key in config:
            config[key] = layers
    small = AutoModelForSeq2SeqLM.from_config(type(full.config).from_dict(config))
    small.load_state_dict(full.state_dict(), strict=False)  # the layers past ``layers`` go
    small.save_pretrained(path)
    TOKENIZER.save_pretrained(path)
    return path


def reference(path: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy ``generate`` of the model at ``path`` (float32), without the
    decoder start token, cut after the first eos (as the engine stops there)."""
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens
    )
    new = out[0, 1:].tolist()
    return new[: new.index(EOS) + 1] if EOS in new else new


def ladder_yaml(path: Path, models: list[Path], k_matrix: list[list[int]], maxgram: bool = True):
    """A ladder file ``path`` named 'encdec': ``models`` (target first) as float32 rungs, then
    Max-Gram when ``maxgram``; returns ``path``."""
    names = ["target"] + [f"d{i}" for i in range(1, len(models))]
    lines = ["encdec:", "  rungs:"]
    for name, model in zip(names, models, strict=True):
        lines += [f"    - {{name: {name}, model: '{model}', dtype: float32}}"]
    if maxgram:
        lines += ["    - {kind: max-gram, max_ngram: 4, min_ngram: 1}"]
    lines += [f"  k_matrix: {k_matrix}"]
    path.write_text("\n".join(lines) + "\n")
    return path
