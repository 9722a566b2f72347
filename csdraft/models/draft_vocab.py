"""A drafter's draft vocabulary: its output head cut to the token ids it is likely to need
(FR-Spec's idea, Zhao et al. 2025), so each of its passes computes a fraction of the logits.

A drafter's logits only choose what it proposes; the reviews above it decide the output, so a
cut head changes drafts, never the output. Outside the kept ids a drafter's logits are -inf:
it never proposes those tokens, and when sampling its q is 0 there, which speculative sampling
allows (the residual max(0, p - q) keeps them for the reviewer). The kept ids are the ``size``
lowest and every added (special) token: byte-level BPE vocabularies (Qwen2, Llama 3, GPT-2)
number their tokens in merge order, so the low ids are the common pieces (on GSM8K answers of
the Qwen2.5-Coder-1.5B target, 98.7% of its tokens are among the lowest 65,536 ids).
"""

from __future__ import annotations

from typing import Any

import torch

WHOLE = 2**31 - 1
"""A size no vocabulary reaches: the whole head (``csd-vocab@all``)."""


def kept_ids(tokenizer: Any, size: int, vocab: int) -> torch.Tensor:
    """The ids a draft vocabulary of ``size`` keeps out of a ``vocab``-row head, ascending:
    the ``size`` lowest and the tokenizer's added tokens."""
    added = sorted(i for i in getattr(tokenizer, "added_tokens_decoder", {}) if size <= i < vocab)
    return torch.cat([torch.arange(min(size, vocab)), torch.tensor(added, dtype=torch.long)])


class DraftHead(torch.nn.Module):
    """An output head over the kept ids only; its logits come out at the full width, -inf
    at every id it does not keep."""

    def __init__(self, rows: torch.nn.Module, keep: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.rows = rows
        self.register_buffer("keep", keep, persistent=False)
        self.out_features = vocab

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.rows(x)
        out = logits.new_full((*logits.shape[:-1], self.out_features), float("-inf"))
        return out.index_copy_(-1, self.keep, logits)

    def extra_repr(self) -> str:
        return f"keeps {len(self.keep)} of {self.out_features} ids"


def cut_head(head: torch.nn.Module, keep: torch.Tensor) -> DraftHead:
    """``head`` (a linear layer, float or ``int8.Int8Linear``) computing the rows ``keep`` only,
    each row's weights as they were."""
    from csdraft.models.int8 import Int8Linear, unpack

    if isinstance(head, Int8Linear):  # int8 runs on the CPU only
        qweight, scale, bias = unpack(head)
        rows: torch.nn.Module = Int8Linear(
            qweight[keep], scale[keep], None if bias is None else bias[keep]
        )
        return DraftHead(rows, keep, head.out_features)
    if type(head) is not torch.nn.Linear:
        raise TypeError(f"no draft vocabulary for an output head of type {type(head).__name__}")
    weight, bias = head.weight, head.bias
    keep = keep.to(weight.device)
    rows = torch.nn.Linear(head.in_features, len(keep), bias=bias is not None)
    rows = rows.to(dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        rows.weight.copy_(weight[keep])
        if bias is not None:
            rows.bias.copy_(bias[keep])
    return DraftHead(rows, keep, head.out_features)
