"""A lean forward pass for Llama-style decoders (Llama, Qwen2, Mistral with full attention):
the same operations on the same operands as transformers' forward, op for op, without the
framework around them (output records, mask builders, keyword plumbing, module hooks).

On a 2-core CPU that framework costs about 20 ms per pass whatever the model's size, as much as
a third of an int8 0.5B drafter's pass, and a drafter runs several passes per target pass.
Every result is transformers' own bit for bit (``tests/models/test_lean.py``), so what a model
generates does not depend on which path ran; models of any other shape take transformers' path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from csdraft.models.int8 import Part

ARCHITECTURES = {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"}
"""The model classes whose decoder layers ``LeanDecoder`` replays."""

ATTENTIONS = {"csdraft_rowwise", "csdraft_gqa"}
"""csdraft's own attention functions (``invariant``, ``attention``): plain causal blocks need no
mask from transformers, so the lean path can call them directly."""


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama/Qwen2 RMSNorm, the same operations in the same order."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``apply_rotary_pos_emb`` for one tensor (cos/sin already unsqueezed)."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def projections(modules: list[torch.nn.Module]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """One call computing sibling projections of the same input: the fused int8 layer once
    when they are the parts of one (``int8.SharedInput``), else each module in turn."""
    groups = {id(m.group) for m in modules if isinstance(m, Part)}
    if len(groups) == 1 and all(isinstance(m, Part) for m in modules):
        group = modules[0].group
        if [m.index for m in modules] == list(range(len(group.bounds) - 1)):
            spans = list(zip(group.bounds[:-1], group.bounds[1:], strict=True))

            def fused(x: torch.Tensor) -> list[torch.Tensor]:
                out = group.layer(x)
                return [out[..., lo:hi] for lo, hi in spans]

            return fused
    return lambda x: [m(x) for m in modules]


class _Layer:
    """One decoder layer's weights and callables."""

    def __init__(self, layer: torch.nn.Module, attend: Callable) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.attn = attn
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.index = attn.layer_idx
        self.norm_in = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.norm_post = (
            layer.post_attention_layernorm.weight,
            layer.post_attention_layernorm.variance_epsilon,
        )
        self.qkv = projections([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o = attn.o_proj
        self.gate_up = projections([mlp.gate_proj, mlp.up_proj])
        self.down = mlp.down_proj
        self.attend = attend

    def __call__(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: object,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        batch, n, _ = h.shape
        shape = (batch, n, -1, self.head_dim)
        q, k, v = self.qkv(rms_norm(h, *self.norm_in))
        q = rotate(q.view(shape).transpose(1, 2), cos, sin)
        k = rotate(k.view(shape).transpose(1, 2), cos, sin)
        k, v = cache.update(k, v.view(shape).transpose(1, 2), self.index)
        out, _ = self.attend(
            self.attn, q, k, v, mask, dropout=0.0, scaling=self.scaling, sliding_window=None
        )
        h = h + self.o(out.reshape(batch, n, -1).contiguous())
        gate, up = self.gate_up(rms_norm(h, *self.norm_post))
        return h + self.down(F.silu(gate) * up)


class LeanDecoder:
    """transformers' forward of a supported causal LM with a KV cache, lean (see the module)."""

    def __init__(self, model: torch.nn.Module) -> None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        base = model.model
        attend = ALL_ATTENTION_FUNCTIONS[model.config._attn_implementation]
        self.embed = base.embed_tokens
        self.rotary = base.rotary_emb
        self.layers = [_Layer(layer, attend) for layer in base.layers]
        self.norm = (base.norm.weight, base.norm.variance_epsilon)
        self.head = model.lm_head

    @classmethod
    def of(cls, model: torch.nn.Module) -> LeanDecoder | None:
        """The lean path for ``model``, or None where it would not compute transformers'
        numbers (another architecture or attention, sliding windows, hooks, training mode)."""
        cfg = model.config
        layer_types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
        plain = (
            type(model).__name__ in ARCHITECTURES
            and cfg._attn_implementation in ATTENTIONS
            and getattr(cfg, "hidden_act", None) == "silu"
            and getattr(cfg, "pretraining_tp", 1) == 1
            and layer_types == {"full_attention"}
            and not model.training
            and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        )
        return cls(model) if plain else None

    @torch.inference_mode()
    def __call__(
        self,
        ids: torch.Tensor,
        cache: object,
        keep: int,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, keep, vocab] after feeding ``ids`` [batch, n] into ``cache``: causal
        over the block by default, or with a 4D ``mask`` and ``positions`` (token trees)."""
        h = self.embed(ids)
        if positions is None:
            start = cache.get_seq_length()
            positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
        cos, sin = self.rotary(h, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for layer in self.layers:
            h = layer(h, cos, sin, cache, mask)
        return self.head(rms_norm(h, *self.norm)[:, -keep:])
