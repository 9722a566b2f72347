"""A lean forward pass for Llama-style decoders (Llama, Qwen2, Mistral with full attention):
the same operations on the same operands as transformers' forward, op for op, without the
framework around them (output records, mask builders, keyword plumbing, module hooks).

On a 2-core CPU that framework costs about 10 ms per pass whatever the model's size (a fifth
of an int8 0.5B drafter's pass), and a drafter runs several passes per target pass. Every piece
with numbers in it (norms, rotary embedding, attention, projections) is the model's own module
or function, called directly, so every result is transformers' own bit for bit
(``tests/models/test_lean.py``) and what a model generates does not depend on which path ran;
models of any other shape take transformers' path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from csdraft.models.int8 import Part as Int8Part

ARCHITECTURES = {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"}
"""The model classes whose decoder layers ``LeanDecoder`` replays."""

ATTENTIONS = {"csdraft_rowwise", "csdraft_gqa"}
"""csdraft's own attention functions (``invariant``, ``attention``): plain causal blocks need no
mask from transformers, so the lean path can call them directly."""


def projections(modules: list[torch.nn.Module]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """One call computing sibling projections of the same input: the fused int8 layer once
    when they are the parts of one (``int8.SharedInput``), else each module in turn."""
    group = getattr(modules[0], "group", None)
    whole = all(isinstance(m, Int8Part) and m.group is group for m in modules) and [
        m.index for m in modules
    ] == list(range(len(group.bounds) - 1))
    if whole:
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
        self.norm_in, self.norm_post = layer.input_layernorm, layer.post_attention_layernorm
        self.rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        self.qkv = projections([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o = attn.o_proj
        self.gate_up = projections([mlp.gate_proj, mlp.up_proj])
        self.down = mlp.down_proj
        self.attend = attend

    def __call__(
        self, h: torch.Tensor, parts: list[Part], cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """The layer over ``h`` [batch, rows, hidden]: the rows of every part one after another.
        Norms, projections, rotary embedding (``cos``/``sin``: each part's own, computed as its
        pass alone computes them, applied element-wise) and the MLP take all rows in one call;
        the cache update and attention take each part's rows alone (its cache and mask)."""
        batch, n, _ = h.shape
        shape = (batch, n, -1, self.head_dim)
        q_all, k_all, v_all = (x.view(shape).transpose(1, 2) for x in self.qkv(self.norm_in(h)))
        q_all, k_all = self.rotate(q_all, k_all, cos, sin)
        outs, at = [], 0
        for part in parts:
            rows = slice(at, at + part.rows)
            at += part.rows
            q = q_all[:, :, rows].contiguous()  # as a pass of this part alone lays it out
            k, v = part.cache.update(k_all[:, :, rows], v_all[:, :, rows], self.index)
            mask = part.mask
            out, _ = self.attend(
                self.attn, q, k, v, mask, dropout=0.0, scaling=self.scaling, sliding_window=None
            )
            outs.append(out.reshape(batch, part.rows, -1))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        h = h + self.o(out.contiguous())
        gate, up = self.gate_up(self.norm_post(h))
        return h + self.down(F.silu(gate) * up)


@dataclass
class Part:
    """One sequence's share of a pass: how many new rows, its own KV cache and its attention
    mask (None: causal)."""

    rows: int
    cache: object
    mask: torch.Tensor | None = None


class LeanDecoder:
    """transformers' forward of a supported causal LM with a KV cache, lean (see the module)."""

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module | None = None) -> None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        base = model.model
        attend = ALL_ATTENTION_FUNCTIONS[model.config._attn_implementation]
        self.embed = base.embed_tokens
        self.rotary = base.rotary_emb
        self.layers = [_Layer(layer, attend) for layer in base.layers]
        self.norm = base.norm
        self.head = model.lm_head if head is None else head

    @classmethod
    def of(cls, model: torch.nn.Module, head: torch.nn.Module | None = None) -> LeanDecoder | None:
        """The lean path for ``model`` (with ``head`` in place of its output head, if given),
        or None where it would not compute transformers' numbers (another architecture or
        attention, sliding windows, hooks, training mode)."""
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
        return cls(model, head) if plain else None

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
        return self.many([(ids, cache, keep)], [(positions, mask)])[0]

    @torch.inference_mode()
    def many(
        self,
        jobs: list[tuple[torch.Tensor, object, int]],
        masks: list[tuple[torch.Tensor | None, torch.Tensor | None]] | None = None,
    ) -> list[torch.Tensor]:
        """One pass over several sequences (ragged): ``jobs`` holds each one's new ``ids``
        [batch, n_i], its own cache and how many last rows' logits it wants; ``masks`` each
        one's ``positions`` and ``mask`` (default: causal after its cache). Every per-row
        operation takes all rows in one call, so with row-independent layers (the int8
        batch-invariant target's) each sequence's logits are bit for bit its pass alone's."""
        masks = masks or [(None, None)] * len(jobs)
        h = self.embed(torch.cat([ids for ids, _, _ in jobs], dim=1))
        parts, rotary, at = [], [], 0
        for (ids, cache, _), (positions, mask) in zip(jobs, masks, strict=True):
            n = ids.shape[1]
            if positions is None:
                start = cache.get_seq_length()
                positions = torch.arange(start, start + n, device=ids.device)[None]
            rotary.append(self.rotary(h[:, at : at + n], positions))  # as its pass alone has it
            parts.append(Part(n, cache, mask))
            at += n
        cos, sin = rotary[0]
        if len(rotary) > 1:
            cos, sin = (torch.cat([r[i] for r in rotary], dim=1) for i in (0, 1))
        for layer in self.layers:
            h = layer(h, parts, cos, sin)
        if len(jobs) == 1:
            return [self.head(self.norm(h)[:, -jobs[0][2] :])]
        ends = np.cumsum([p.rows for p in parts]).tolist()
        wanted = [range(end - keep, end) for end, (_, _, keep) in zip(ends, jobs, strict=True)]
        rows = torch.as_tensor([i for r in wanted for i in r], dtype=torch.long, device=h.device)
        logits = self.head(self.norm(h.index_select(1, rows)))
        return list(logits.split([len(r) for r in wanted], dim=1))
