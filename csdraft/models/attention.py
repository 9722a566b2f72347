"""Attention for drafters with grouped-query attention: the query heads that share a key/value
head attend to it in place (``enable_gqa``) instead of transformers' copy of every cached key
and value once per query head at every block pass (a cost growing with the context). The
numbers are those of transformers' sdpa path: the same kernel on the same operands."""

from __future__ import annotations

from typing import Any

import torch

GQA_ATTENTION = "csdraft_gqa"
"""The name ``gqa_attention`` is registered under in transformers' AttentionInterface."""


def gqa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [batch, heads, rows, dim],
    key/value [batch, kv heads, keys, dim] -> [batch, rows, heads, dim]. Without a mask, a
    block is causal over its own rows (and sees every earlier key)."""
    rows, keys = query.shape[2], key.shape[2]
    causal = attention_mask is None and rows > 1 and rows == keys
    if attention_mask is None and rows > 1 and keys > rows:
        attention_mask = torch.ones(rows, keys, dtype=torch.bool, device=query.device)
        attention_mask = attention_mask.tril(keys - rows)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        is_causal=causal,
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def use_gqa_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a model that runs transformers' sdpa attention with grouped query heads to
    ``gqa_attention`` (any other model is returned as it is)."""
    from transformers import AttentionInterface

    config = model.config
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if config._attn_implementation != "sdpa" or not heads or kv_heads == heads:
        return model
    AttentionInterface.register(GQA_ATTENTION, gqa_attention)
    model.set_attn_implementation(GQA_ATTENTION)
    return model
