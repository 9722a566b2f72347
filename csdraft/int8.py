"""int8 drafters: linear layers with int8 weights run by fbgemm's dynamic int8 kernel.

About 2.5x faster than bfloat16 for a 0.5B model on a 2-core CPU. Meant for drafters, whose
exact numbers never reach the output. The int8 weights are cached on disk, so a later start
only packs them for the kernel.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LONG_BLOCK = 16
"""Blocks of at least this many tokens (prompts) are checked for attention sinks."""
SINK_RATIO = 8.0
"""A token whose largest activation is this many times the block's median token peak is an
attention sink (Qwen2.5's first token peaks about 18x above the rest)."""


class Int8Linear(torch.nn.Module):
    """A linear layer with int8 weights (symmetric, one scale per output channel) run by
    fbgemm's dynamic int8 kernel: activations are quantized on the fly, the output is float32.
    The weight is packed for the kernel once, here.

    The kernel quantizes activations with one scale per pass, so one token with massive
    activations (an attention sink) would coarsen every other token of its block: in a long
    block such tokens get a pass of their own."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        zero = torch.zeros(len(scale), dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch deprecates quantized tensors (kept to 2.14)
            weight = torch._make_per_channel_quantized_tensor(qweight, scale.double(), zero, 0)
            self.packed = torch.ops.quantized.linear_prepack(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        rows = x.reshape(-1, x.shape[-1])
        if len(rows) >= LONG_BLOCK:  # a prompt: attention sinks get a pass of their own
            peak = rows.abs().amax(-1)
            sink = peak > SINK_RATIO * peak.median()
            if sink.any():
                out = rows.new_empty(len(rows), self.out_features)
                out[~sink] = self._linear(rows[~sink])
                for i in sink.nonzero()[:, 0].tolist():
                    out[i] = self._linear(rows[i : i + 1])[0]
                return out.reshape(*x.shape[:-1], self.out_features)
        return self._linear(x)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of a model, its ``Int8Linear`` weights included (a tied output head once,
    though int8 keeps a copy of it)."""
    int8 = {name: m for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    count = sum(p.numel() for p in model.parameters())
    count += sum(m.in_features * m.out_features for m in int8.values())
    head = int8.get("lm_head")
    if head is not None and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        count -= head.in_features * head.out_features
    return count


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's weights: its parameters plus each ``Int8Linear``'s int8 weight and
    float32 scales (held by the packed kernel, not as parameters)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params + sum(
        m.in_features * m.out_features + 4 * m.out_features
        for m in model.modules()
        if isinstance(m, Int8Linear)
    )


def int8_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantization: (int8 weight, float32 scale)."""
    w = weight.float()
    scale = w.abs().amax(dim=1).clamp_min(1e-8) / 127
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def quantize_int8(model: torch.nn.Module, cache: Path | None = None) -> torch.nn.Module:
    """Replace every linear layer by an ``Int8Linear``; the rest of the model runs in float32.

    With ``cache`` (a safetensors file), the int8 weights and scales are read from it when it
    holds every layer, else computed and written there for the next load (atomically)."""
    linears = [(name, mod) for name, mod in model.named_modules() if type(mod) is torch.nn.Linear]
    stored: dict[str, torch.Tensor] = {}
    if cache is not None and cache.is_file():
        with contextlib.suppress(Exception):  # unreadable or stale: quantize again below
            stored = load_file(str(cache))
    fits = all(
        stored.get(f"{name}.qweight", torch.empty(0)).shape == linear.weight.shape
        for name, linear in linears
    )
    if not fits:
        stored = {}
    with torch.no_grad():
        for name, linear in linears:
            if not fits:
                q, s = int8_weights(linear.weight)
                stored[f"{name}.qweight"], stored[f"{name}.scale"] = q, s
            bias = None if linear.bias is None else linear.bias.float()
            layer = Int8Linear(stored[f"{name}.qweight"], stored[f"{name}.scale"], bias)
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, layer)
    if cache is not None and not fits and linears:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in stored.items()}, str(tmp))
        os.replace(tmp, cache)
    return model.float()
