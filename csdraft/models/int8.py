"""int8 drafters: linear layers with int8 weights run by fbgemm's dynamic int8 kernel, and
their cache.

About 2.5x faster than bfloat16 for a 0.5B model on a 2-core CPU. Meant for drafters, whose
exact numbers never reach the output. The int8 weights are cached on disk
(``cache_dir()/"int8"/KEY.safetensors``, keyed by the source weights' paths, sizes and
modification times), so a later start only packs them for the kernel. Each cache file records a
sampled digest of its contents in its safetensors metadata; a file that does not match it is
damaged: it is deleted and computed again, with a warning. A cache that cannot be written is
skipped (the weights are quantized in memory). Projections that read the same input (q/k/v,
gate/up) run as one layer (``SharedInput``): one kernel call and one activation quantization
where there were three or two, bit for bit the same outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from csdraft.models.cache import cache_dir, file_mode, sampled_digest, temp_dir, warn

if TYPE_CHECKING:
    from csdraft.models.resolve import _Resolved

__all__ = [
    "FUSED",
    "LONG_BLOCK",
    "SINK_RATIO",
    "Int8Layer",
    "Int8Linear",
    "Part",
    "SharedInput",
    "int8_weights",
    "parameter_count",
    "prepack",
    "quantize_int8",
    "unpack",
    "weight_bytes",
]

LONG_BLOCK = 16
"""Blocks of at least this many tokens (prompts) are checked for attention sinks."""
SINK_RATIO = 8.0
"""A token whose largest activation is this many times the block's median token peak is an
attention sink (Qwen2.5's first token peaks about 18x above the rest)."""


class Int8Layer(torch.nn.Module):
    """A linear layer whose weights are int8 (what ``parameter_count``, ``weight_bytes`` and
    inspect count); built from ``int8_weights``' (int8 weight, scale) and a float bias."""

    weight = None
    """No float weight: code that reads a linear layer's ``weight`` to pick a dtype and skips a
    non-tensor one (transformers' T5 feed-forward) leaves the activations as they are."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def prepack(qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """An int8 weight (one scale per output channel) and its bias packed for fbgemm."""
    zero = torch.zeros(len(scale), dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors (kept to 2.14)
        weight = torch._make_per_channel_quantized_tensor(qweight, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(weight, bias)


def unpack(layer: Int8Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The int8 weight, float32 scales and bias an ``Int8Linear`` was packed from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors (kept to 2.14)
        weight, bias = torch.ops.quantized.linear_unpack(layer.packed)
        return weight.int_repr(), weight.q_per_channel_scales().float(), bias


class Int8Linear(Int8Layer):
    """A linear layer with int8 weights (symmetric, one scale per output channel) run by
    fbgemm's dynamic int8 kernel: activations are quantized on the fly, the output is float32.
    The weight is packed for the kernel once, here. Fast; for drafters (a target takes
    ``invariant.RowInt8Linear``).

    The kernel quantizes activations with one scale per pass, so one token with massive
    activations (an attention sink) would coarsen every other token of its block: in a long
    block such tokens get a pass of their own."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__(qweight.shape[1], qweight.shape[0])
        self.packed = prepack(qweight, scale, bias)

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


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of a model, its int8 layers' weights included (a tied output head once,
    though int8 keeps a copy of it)."""
    int8 = {name: m for name, m in model.named_modules() if isinstance(m, Int8Layer)}
    count = sum(p.numel() for p in model.parameters())
    count += sum(m.in_features * m.out_features for m in int8.values())
    head = int8.get("lm_head")
    if head is not None and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        count -= head.in_features * head.out_features
    return count


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's weights: its parameters plus each int8 layer's int8 weight and
    float32 scales (held as buffers or by the packed kernel, not as parameters)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params + sum(
        m.in_features * m.out_features + 4 * m.out_features
        for m in model.modules()
        if isinstance(m, Int8Layer)
    )


def int8_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantization: (int8 weight, float32 scale)."""
    w = weight.float()
    scale = w.abs().amax(dim=1).clamp_min(1e-8) / 127
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def quantize_int8(
    model: torch.nn.Module, cache: Path | None = None, layer: type[Int8Layer] = Int8Linear
) -> torch.nn.Module:
    """Replace every linear layer by a ``layer`` (``Int8Linear``: fbgemm, fast;
    ``invariant.RowInt8Linear``: batch-invariant); the rest of the model runs in float32.

    With ``cache`` (a safetensors file), the int8 weights and scales are read from it when it
    holds every layer and matches its recorded digest, else computed and written there for the
    next load (atomically; skipped when the cache cannot be written). A damaged file is
    deleted and computed again, with a warning on stderr."""
    linears = [(name, mod) for name, mod in model.named_modules() if type(mod) is torch.nn.Linear]
    stored = _read_cache(cache) if cache is not None else {}
    fits = bool(stored) and all(
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
        fused = _fused_groups(model, {name for name, _ in linears})
        for names in fused:
            group = SharedInput(layer(*_joined(model, stored, names)), _widths(model, names))
            parent, _, _ = names[0].rpartition(".")
            short = "_".join(n.rpartition(".")[2].removesuffix("_proj") for n in names)
            _replace(model, f"{parent}.{short}_proj" if parent else f"{short}_proj", group)
            for i, name in enumerate(names):
                _replace(model, name, group.part(i))
        done = {name for names in fused for name in names}
        for name, linear in linears:
            if name not in done:
                bias = None if linear.bias is None else linear.bias.float()
                new = layer(stored[f"{name}.qweight"], stored[f"{name}.scale"], bias)
                _replace(model, name, new)
    if cache is not None and not fits and linears:
        _write_cache(cache, stored)
    return model.float()


# ---------------------------------------------------------------- projections fused per input

FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Sibling projections that Llama-style blocks (Llama, Qwen2, Mistral, ...) apply to the same
input: each group becomes one int8 layer, one kernel call and one activation quantization
instead of two or three. Per-output-channel weight scales and an activation scale computed
from the input alone make each output column what its own layer computes, bit for bit."""


class SharedInput(torch.nn.Module):
    """One int8 layer computing several sibling projections of the same input at once; each
    sibling is a ``part`` that returns its columns. The first part called on an input runs the
    layer; the others take their columns from that result (the input is recognised by
    identity, and the result is dropped once every part has taken its own)."""

    def __init__(self, layer: Int8Layer, widths: list[int]) -> None:
        super().__init__()
        self.layer = layer
        self.bounds = [sum(widths[:i]) for i in range(len(widths) + 1)]
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._pending: set[int] = set()

    def part(self, index: int) -> Part:
        """The module standing for sibling ``index``."""
        return Part(self, index)

    def columns(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Sibling ``index``'s output for ``x``."""
        if x is not self._input or index not in self._pending:
            self._input, self._output = x, self.layer(x)
            self._pending = set(range(len(self.bounds) - 1))
        out = self._output
        self._pending.discard(index)
        if not self._pending:
            self._input = self._output = None
        assert out is not None
        return out[..., self.bounds[index] : self.bounds[index + 1]]


class Part(torch.nn.Module):
    """One sibling of a ``SharedInput`` (not a module of its own parameters: the group holds
    them, so counts of int8 layers count the fused layer once)."""

    def __init__(self, group: SharedInput, index: int) -> None:
        super().__init__()
        self.__dict__["group"] = group  # not a submodule: the weights belong to the parent's
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.columns(x, self.index)

    def extra_repr(self) -> str:
        lo, hi = self.group.bounds[self.index], self.group.bounds[self.index + 1]
        return f"columns {lo}:{hi} of a fused int8 layer"


def _fused_groups(model: torch.nn.Module, linears: set[str]) -> list[list[str]]:
    """The groups of ``FUSED`` siblings present as plain linear layers of one input width."""
    groups = []
    for parent, _ in model.named_modules():
        for siblings in FUSED:
            names = [f"{parent}.{s}" if parent else s for s in siblings]
            if all(n in linears for n in names):
                widths = {model.get_submodule(n).in_features for n in names}
                if len(widths) == 1:
                    groups.append(names)
    return groups


def _joined(
    model: torch.nn.Module, stored: dict[str, torch.Tensor], names: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The int8 weights, scales and biases of ``names`` stacked as one layer's."""
    biases = [model.get_submodule(n).bias for n in names]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [
                torch.zeros(model.get_submodule(n).out_features) if b is None else b.float()
                for n, b in zip(names, biases, strict=True)
            ]
        )
    qweight = torch.cat([stored[f"{n}.qweight"] for n in names])
    return qweight, torch.cat([stored[f"{n}.scale"] for n in names]), bias


def _widths(model: torch.nn.Module, names: list[str]) -> list[int]:
    return [model.get_submodule(n).out_features for n in names]


def _replace(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


# --------------------------------------------------------------------------- the int8 cache

_DIGEST_KEY = "csdraft_sampled_digest"
"""The safetensors metadata entry holding a cache file's sampled digest."""
_PLACEHOLDER = "0" * 64


def _int8_cache(res: _Resolved) -> Path | None:
    """Where the int8 weights of ``res`` are kept: keyed by its weight files' paths, sizes and
    modification times, so changed weights never meet stale int8 ones. None when the model's
    files cannot be found (a hub id missing from the local cache)."""
    folder = res.path
    if folder is None:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(res.ref, "config.json")
        folder = Path(config).parent if isinstance(config, str) else None
    if folder is None:
        return None
    weights = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        return None
    stamp = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in weights]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:24]
    return cache_dir() / "int8" / f"{key}.safetensors"


def _header(path: Path) -> tuple[int, bytes]:
    """The length and bytes of a safetensors file's JSON header."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > 100 * 1024 * 1024:
            raise ValueError(f"{path}: not a safetensors file")
        header = fh.read(n)
    if len(header) != n:
        raise ValueError(f"{path}: truncated header")
    return n, header


def int8_cache_digest(path: Path) -> tuple[str | None, str]:
    """(recorded, actual) sampled digest of an int8 cache file: over its tensor index (the
    header without its metadata) and samples of its tensor data. ``recorded`` is None for
    files written by older versions."""
    n, header = _header(path)
    index = json.loads(header)
    meta = index.pop("__metadata__", None) or {}
    canonical = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    return meta.get(_DIGEST_KEY), sampled_digest(path, start=8 + n, prefix=canonical)


def _read_cache(cache: Path) -> dict[str, torch.Tensor]:
    """The tensors of an int8 cache file whose digest matches; {} when there is none (or one
    from an older version, without a digest); a damaged one is deleted, with a warning."""
    if not cache.is_file():
        return {}
    try:
        recorded, actual = int8_cache_digest(cache)
        if recorded is None:
            return {}  # written by an older version: computed again and rewritten
        if recorded == actual:
            return load_file(str(cache))
        why = "its contents differ from when it was written"
    except Exception as exc:  # noqa: BLE001 - unreadable: damaged
        why = f"unreadable: {type(exc).__name__}"
    warn(f"the int8 cache {cache} is damaged ({why}); computing it again")
    with contextlib.suppress(OSError):
        cache.unlink()
    return {}


def _write_cache(cache: Path, stored: dict[str, torch.Tensor]) -> None:
    """Write ``stored`` to ``cache`` atomically with its digest in the metadata, following the
    umask; skipped without a word when the cache cannot be written."""
    tensors = {k: v.contiguous() for k, v in stored.items()}
    with contextlib.suppress(Exception), temp_dir("int8") as work:
        tmp = work / cache.name
        save_file(tensors, str(tmp), metadata={_DIGEST_KEY: _PLACEHOLDER})
        _, actual = int8_cache_digest(tmp)
        n, header = _header(tmp)
        marker = f'"{_PLACEHOLDER}"'.encode()
        if header.count(marker) != 1:
            return
        with open(tmp, "r+b") as fh:  # same length: the header and the data stay in place
            fh.seek(8 + header.index(marker) + 1)
            fh.write(actual.encode())
        os.chmod(tmp, file_mode())
        cache.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, cache)
