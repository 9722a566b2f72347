"""Neural rungs: a model that scores a block of new tokens against its own KV cache.

The cascade needs only ``score``; any backend (transformers today, llama.cpp later) that can
score new tokens and crop its cache is a rung.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class Rung(Protocol):
    """Anything that returns next-token logits for the tail of a token sequence."""

    name: str

    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        """Logits [len(seq) - start + 1, vocab] predicting each of seq[start:] and the next."""
        ...

    def reset(self) -> None:
        """Forget the cache."""
        ...


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token arrays (vectorised)."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class HFRung:
    """A transformers causal LM with a KV cache that feeds only tokens it has not seen.

    ``score`` crops the cache back to the longest prefix it shares with ``seq`` (rejected drafts
    go), feeds the rest in one forward pass and computes logits only where they are asked for.
    """

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        self.model = model
        self.name = name
        self.device = next(model.parameters()).device
        self.cache = None
        self.tokens = np.empty(0, dtype=np.int64)  # what the cache holds

    def reset(self) -> None:
        self.cache = None
        self.tokens = np.empty(0, dtype=np.int64)

    @torch.inference_mode()
    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        from transformers import DynamicCache

        keep = min(common_prefix(self.tokens, seq), start - 1)
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
            keep = 0
        elif keep < len(self.tokens):
            self.cache.crop(keep - len(self.tokens))  # negative: drop that many from the end
        new = torch.from_numpy(np.ascontiguousarray(seq[keep:])).to(self.device)[None]
        out = self.model(
            input_ids=new,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=len(seq) - start + 1,
        )
        self.cache = out.past_key_values
        self.tokens = seq
        return out.logits[0].float().cpu()
