"""Which CPU representation of a target's linear layers is fastest, and which is batch-invariant.

For the projections of one Qwen2.5-Coder-1.5B layer (q, k, v, o, gate, up, down) it times, per
block size, bfloat16 and float32 ``linear``, fbgemm's dynamic int8 (csdraft's drafters),
per-token int8 (``RowInt8Linear``, csdraft's int8 targets: fbgemm with rows pre-scaled; and
the same through ``torch._int_mm``), int8
weight-only (``_weight_int8pack_mm``, bf16 and fp32 activations) and int4 weight-only
(``_weight_int4pack_mm_for_cpu``, groups of 128, bf16 activations), scaled to the model's 28
layers; and checks, per representation, whether each row of a block pass is bit-identical to
that row passed alone (batch invariance). One layer's weights are reused for all 28, so they
stay in the CPU's caches: the times compare the kernels' compute, not the memory traffic of a
real model (whose int8 weights, 1.5 GB a token, make a real pass slower). Run it alone:

    python scripts/quantized_layers.py [--blocks 1,4,8,16] [--repeats 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from csdraft.models.int8 import Int8Linear, int8_weights
from csdraft.models.invariant import RowInt8Linear

SHAPES = {  # (out, in) of Qwen2.5-Coder-1.5B's projections
    "q": (1536, 1536),
    "k": (256, 1536),
    "v": (256, 1536),
    "o": (1536, 1536),
    "gate": (8960, 1536),
    "up": (8960, 1536),
    "down": (1536, 8960),
}
LAYERS = 28


def representations(weight: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> function of float32 activations [rows, in] for one weight [out, in]."""
    bf16, fp32 = weight.bfloat16(), weight.float()
    q, scale = int8_weights(weight)
    fbgemm, row = Int8Linear(q, scale, None), RowInt8Linear(q, scale, None)
    scale16 = scale.bfloat16()
    out = {
        "bf16": lambda x: torch.nn.functional.linear(x.bfloat16(), bf16),
        "fp32": lambda x: torch.nn.functional.linear(x, fp32),
        "int8 fbgemm (per pass)": fbgemm,
        "int8 per token (RowInt8Linear)": row,
        "int8 per token (_int_mm)": lambda x: per_token_int_mm(x, q, scale),
        "int8 weight-only bf16": lambda x: torch._weight_int8pack_mm(x.bfloat16(), q, scale16),
        "int8 weight-only fp32": lambda x: torch._weight_int8pack_mm(x, q, scale),
    }
    try:
        out["int4 weight-only bf16"] = int4(weight)
    except (RuntimeError, AttributeError) as exc:  # not in every torch build
        print(f"int4 weight-only: unavailable ({type(exc).__name__}: {str(exc)[:80]})")
    return out


def per_token_int_mm(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-token int8 activations times int8 weights in int32 by ``torch._int_mm``."""
    peak = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
    xq = torch.round(x / peak).clamp_(-127, 127).to(torch.int8)
    return torch._int_mm(xq, q.t()).float() * peak * scale


def int4(weight: torch.Tensor, group: int = 128) -> Callable[[torch.Tensor], torch.Tensor]:
    """Asymmetric int4 per group of ``group`` inputs, packed for the CPU kernel."""
    n, k = weight.shape
    w = weight.float().reshape(n, k // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-8)
    zero = lo + 8 * scale  # the kernel computes (q - 8) * scale + zero
    qw = torch.round((w - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(qw.reshape(n, k), 1)
    sz = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().bfloat16()
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), packed, group, sz)


def invariant(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> bool:
    block = fn(x)
    return all(torch.equal(block[i], fn(x[i : i + 1])[0]) for i in range(len(x)))


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", default="1,4,8,16")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    blocks = [int(b) for b in args.blocks.split(",")]
    gen = torch.Generator().manual_seed(0)
    layer = {
        name: representations(torch.randn(o, i, generator=gen) * 0.02)
        for name, (o, i) in SHAPES.items()
    }
    kinds = list(layer["q"])
    inputs = {name: torch.randn(max(blocks), i, generator=gen) for name, (_, i) in SHAPES.items()}
    inputs_big = {name: x * 3 for name, x in inputs.items()}
    inputs_big["q"][0] *= 50  # a row with a large peak, as an attention sink's
    results: dict[str, dict] = {}
    print(f"{'representation':28s} invariant  " + "  ".join(f"{b:>5d} tok" for b in blocks))
    for kind in kinds:
        same = all(invariant(layer[n][kind], inputs_big[n][:8]) for n in SHAPES)
        ms = []
        for b in blocks:
            for _ in range(2):  # warm up
                for n in SHAPES:
                    layer[n][kind](inputs[n][:b])
            start = time.perf_counter()
            for _ in range(args.repeats):
                for n in SHAPES:
                    layer[n][kind](inputs[n][:b])
            ms.append((time.perf_counter() - start) / args.repeats * 1000 * LAYERS)
        results[kind] = {"invariant": same, "ms_per_pass": dict(zip(blocks, ms, strict=True))}
        cols = "  ".join(f"{m:7.1f}ms" for m in ms)
        print(f"{kind:28s} {'yes' if same else 'NO ':9s}  {cols}")
    print(f"(28 layers' projections, lm_head excluded; {torch.get_num_threads()} threads)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
