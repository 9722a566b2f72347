"""Batch-invariant int8 targets: a block pass computes, for each row, bit for bit what a
one-token pass computes, so a ladder over an int8 target outputs exactly what that target
outputs alone (no near-tie excuse).

Where a forward pass can depend on its batch, and what this module does about it:

- Linear layers (``RowInt8Linear``): activations are quantized with one scale per row (token)
  and multiplied with int8 weights (one scale per output channel) in int32 by fbgemm. Integer
  sums are exact in any order, and everything around them (the row's max, the scalings,
  rounding, the bias) is one correctly rounded operation per element, so a row's output cannot
  depend on the other rows. (fbgemm's dynamic int8 linear, the drafters', takes one activation
  scale per pass: a block then computes something else than one-token passes, by up to a top-2
  margin of 1.4 on Qwen2.5-Coder-1.5B.)
- Attention (``rowwise_attention``): each query row runs its own scaled-dot-product call over
  the keys it may see, the very call a one-token pass at that position makes (the query heads
  sharing a key/value head go in as that call's rows, as transformers does for one token), so
  the kernel's blocking is the same either way.
- The rest runs in float32: norms reduce each row alone (the same loop whatever the number of
  rows), and element-wise operations (rotary embedding, SiLU, residuals) are per element. The
  one caveat is torch's vectorised transcendental functions, whose scalar tail loop may round
  differently: real models' widths (multiples of 32: hidden size, head size, MLP width) leave no
  tail. ``tests/models/test_invariant.py`` checks block against one-token logits bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from csdraft.errors import UsageError
from csdraft.models.int8 import Int8Layer, prepack

ATTENTION = "csdraft_rowwise"
"""The name ``rowwise_attention`` is registered under in transformers' AttentionInterface."""


class RowInt8Linear(Int8Layer):
    """A linear layer with int8 weights (symmetric, one scale per output channel) and int8
    activations with one scale per row (token), run by fbgemm: each row is first scaled so
    that its largest magnitude is ``ROW_PEAK`` (127; see there), the whole
    block goes through fbgemm's int8 kernel with the fixed activation scale 1 (int32 sums), and
    each output row is scaled back. Every step
    is the same for a row whatever else is in its pass (batch-invariant), in one kernel call
    (per-row scales through ``torch._int_mm`` compute the same, 3-5x slower here)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__(qweight.shape[1], qweight.shape[0])
        self.packed = prepack(qweight, scale, None)  # the bias goes on after the rescaling
        self.register_buffer("bias", None if bias is None else bias.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.float().reshape(-1, self.in_features)
        peak = rows.abs().amax(-1, keepdim=True).clamp_min(1e-12)
        top = ROW_PEAK
        out = _fixed_scale_linear(rows * (top / peak), 1.0, top + 1, self.packed) * (peak / top)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


ROW_PEAK = 127
"""Each row is scaled to this peak, its zero point one above (8-bit activations, 1..255).
On CPUs without VNNI (AVX2, AVX-512 without VNNI) fbgemm multiplies unsigned activations by
signed weights in pairs summed into int16, which saturate when both weights of a pair are near
the channel's largest and the activations high: rare with real weights (heavy-tailed, so most
quantize small), common with uniformly spread ones. A peak of 63 (7-bit) never saturates, but
costs more than saturation does: on an AMD EPYC with AVX2, teacher-forced along 10 GSM8K
reference solutions (1562 tokens), Qwen2.5-Coder-1.5B's int8 argmax agreed with its float32
argmax at 97.7% of positions with 127 and 96.3% with 63. Either way the path stays
batch-invariant (the kernel's arithmetic for a row does not depend on the other rows)."""

_fixed_scale_linear = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
"""fbgemm's int8 linear with a given activation scale and zero point (float in, float out)."""


def rowwise_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention one query row at a time (transformers' attention-function signature): row i
    of a block sees the keys a one-token pass at its position sees: the causal prefix, or the
    columns a 4D mask allows (token trees; bool, or additive with 0 where allowed).
    query [batch, heads, rows, dim], key/value [batch, kv heads, keys, dim] -> [batch, rows,
    heads, dim]."""
    batch, heads, rows, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    group = heads // kv_heads
    out = query.new_empty(batch, rows, heads, value.shape[-1])
    for i in range(rows):
        if attention_mask is None:
            k, v = key[:, :, : keys - rows + i + 1], value[:, :, : keys - rows + i + 1]
        else:
            row = attention_mask[0, 0, i]
            seen = (row if row.dtype == torch.bool else row == 0).nonzero()[:, 0]
            k, v = key.index_select(2, seen), value.index_select(2, seen)
        q = query[:, :, i].reshape(batch, kv_heads, group, dim)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scaling)
        out[:, i] = o.reshape(batch, heads, -1)
    return out, None


def make_batch_invariant(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a model whose linear layers are ``RowInt8Linear`` to row-wise attention (full
    causal attention only: a model with sliding-window layers is refused)."""
    from transformers import AttentionInterface

    floating = {
        type(m).__name__ for m in model.modules() if type(m).__name__ in ("Linear", "Conv1D")
    }
    if floating:
        raise UsageError(
            f"{type(model).__name__}: its {sorted(floating)} projections are not int8 layers, so "
            "its passes are not batch-invariant (use bfloat16 for this target)"
        )
    kinds = set(getattr(model.config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise UsageError(
            f"{type(model).__name__}: int8 targets attend row by row with full causal attention; "
            f"this model has {sorted(kinds - {'full_attention'})} layers (use bfloat16)"
        )
    AttentionInterface.register(ATTENTION, rowwise_attention)
    model.set_attn_implementation(ATTENTION)
    return model
