"""Tokenizer identity: digests of a model directory's tokenizer files and of a loaded vocab."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def tokenizer_files_digest(folder: Path | None) -> str | None:
    """sha256 over a model directory's tokenizer files (None when it has none): two models
    with equal digests have the same tokenizer, without loading either."""
    if folder is None:
        return None
    digest = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            found = True
            digest.update(f"\0{name}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest() if found else None


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """sha256 over the vocab (sorted token->id), BPE merges if any, and eos/bos/pad/unk ids."""
    digest = hashlib.sha256()
    vocab = sorted(tok.get_vocab().items())
    digest.update(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode())
    merges: list[str] = []
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        with contextlib.suppress(Exception):
            raw = json.loads(backend.to_str()).get("model", {}).get("merges") or []
            merges = [m if isinstance(m, str) else " ".join(m) for m in raw]
    digest.update(b"\0merges\0")
    digest.update("\n".join(merges).encode())
    special = {k: getattr(tok, f"{k}_token_id", None) for k in ("eos", "bos", "pad", "unk")}
    digest.update(b"\0special\0")
    digest.update(json.dumps(special, sort_keys=True).encode())
    return digest.hexdigest()
