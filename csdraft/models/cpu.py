"""What this CPU computes fast: the facts every speed number here depends on.

Speculation lives on block passes costing little more than one-token passes. That holds on a
CPU for bfloat16 and float16 only where oneDNN has fast kernels for them (AVX-512 and up, or
Arm's bf16): on an AVX2-only CPU torch multiplies half-precision matrices row by row, so a block
of n tokens costs about n one-token passes (measured on an AMD EPYC with AVX2: a bfloat16
Qwen2.5-Coder-1.5B pass took 385 ms for 1 token and 1656 ms for 9), and drafting only loses.
int8 (fbgemm) and float32 blocks stay cheap there.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path
from typing import Any

HALF = ("bfloat16", "float16")


@cache
def _cpuinfo() -> str:
    """/proc/cpuinfo's text (empty where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what platform says."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def has_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists ``flag`` (e.g. 'avx512_vnni') for this CPU."""
    return any(
        flag in line.split(":", 1)[1].split()
        for line in _cpuinfo().splitlines()
        if line.startswith("flags")
    )


@cache
def vector_isa() -> str:
    """The widest vector instruction set torch's CPU kernels use here ('AVX2', 'AVX512', ...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


@cache
def fast_half(dtype: str) -> bool:
    """Whether this CPU multiplies ``dtype`` matrices with fast kernels, so that a block pass
    costs little more than a one-token pass (True for dtypes other than bfloat16/float16)."""
    import torch

    if dtype == "bfloat16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == "float16":
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def slow_blocks(model: Any) -> bool:
    """Whether a loaded model pays about one pass per token of a block here: it computes in
    half precision on a CPU without fast kernels for it."""
    dtype = str(getattr(model, "compute_dtype", ""))
    device = str(getattr(model, "device", "")).split(":")[0]
    return device == "cpu" and dtype in HALF and not fast_half(dtype)


def slow_blocks_warning(models: dict[str, Any]) -> str | None:
    """Given a ladder's loaded models by rung name, the one line telling a user why drafting
    cannot pay for those that ``slow_blocks``; None when there are none."""
    slow = [f"{name} ({m.compute_dtype})" for name, m in models.items() if slow_blocks(m)]
    if not slow:
        return None
    return (
        f"{', '.join(slow)}: this CPU ({vector_isa()}) has no fast half-precision matrix "
        "kernels, so a block of n tokens costs about n one-token passes and drafting gains "
        "nothing here, or loses; int8 keeps blocks cheap (dtype: int8 on the target, as the "
        "default ladder qwen-coder-cpu has; its output is exactly that int8 target's)"
    )
