"""What the on-disk cache shares: locks, temporary folders, manifests and their digests.

A prepared model directory (an offline pack or a converted GGUF) holds a manifest,
``csdraft-manifest.json``, written last, that lists every file with its size, its sha256 and a
*sampled digest*: a sha256 over ``SAMPLE_WINDOWS`` evenly spaced windows of ``SAMPLE_WINDOW``
bytes (the first and the last included), cheap enough to check on every load. A damaged file
(truncated, or overwritten in place at the same size) is reported in one line
(``CacheDamaged``); ``verify_model_cache(path, full=True)`` re-hashes everything.

Preparations hold a lock per model (``file_lock``, the holder's pid written inside, so that a
process waiting for it can say whom it waits for) and work in temporary folders under
``cache_dir()/"tmp"``, each with a lock of its own held by its owner while it lives, so that
folders left by a killed process are found and removed (``remove_stale_temp``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csdraft.console import byte_progress
from csdraft.errors import CsdraftError

MANIFEST = "csdraft-manifest.json"
MANIFEST_FORMAT = 2
"""1: sizes only (csdraft <= 0.1.0); 2: sizes, sha256 and sampled digests."""
SAMPLE_WINDOW = 64 * 1024
SAMPLE_WINDOWS = 64
"""A sampled digest reads 64 windows of 64 KiB (4 MiB) however large the file: any damage
spanning more than size/63 bytes (56 MB of a 3.5 GB file) is certain to be seen, and files up
to 4 MiB are hashed whole."""
WAIT_REPORT_S = 15.0
"""How often a process waiting for another's preparation says so."""
LEGACY_TEMP_AGE_S = 3600.0
"""Temporary entries with no lock (left by csdraft <= 0.1.0) are removed once this old."""
_POLL_S = 0.2
_CHUNK = 8 * 1024 * 1024


def cache_dir() -> Path:
    """The csdraft cache: ``$CSDRAFT_HOME`` if set, else the platform user cache dir."""
    env = os.environ.get("CSDRAFT_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("csdraft"))


def one_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of ``exc``'s message (its type's name when it has none), cut to
    ``limit`` characters: how an error from a library is quoted in a one-line message."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return line


class CacheDamaged(CsdraftError):
    """A cached model whose files differ from what its manifest recorded."""

    def __init__(self, path: Path, why: str, advice: str | None = None) -> None:
        self.path = Path(path)
        self.why = why
        advice = advice or f"delete {path} and run again to re-prepare it"
        super().__init__(f"cached model at {path} is damaged ({why}); {advice}")


@dataclass(frozen=True)
class CacheCheck:
    """What ``verify_model_cache`` checked: the files and bytes of a cached model, whether
    every file was compared with a recorded digest at the level asked (``complete``), the
    files that had none (manifests written by older versions record no full sha256), and
    how long it took."""

    path: Path
    files: int
    bytes: int
    full: bool
    complete: bool
    unverified: tuple[str, ...]
    seconds: float


# --------------------------------------------------------------------------- output


def warn(message: str) -> None:
    """One warning line on stderr (shown even when progress output is off)."""
    print(f"csdraft: warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def cache_writes() -> Iterator[None]:
    """Turn a failed write into the cache (permissions, a read-only or full disk) into one
    line in csdraft's words."""
    try:
        yield
    except OSError as exc:
        reasons = {
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system",
            errno.ENOSPC: "no space left on device",
            errno.EDQUOT: "disk quota exceeded",
        }
        if exc.errno not in reasons:
            raise
        advice = "set CSDRAFT_HOME to a writable folder"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = "free some space there or set CSDRAFT_HOME to a folder with room"
        raise CsdraftError(
            f"cannot write to the csdraft cache at {cache_dir()} ({reasons[exc.errno]}); {advice}"
        ) from exc


# --------------------------------------------------------------------------- permissions


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode a new file gets under the current umask."""
    return 0o666 & ~_umask()


def relax_permissions(root: Path) -> None:
    """mkdtemp makes 0700 dirs (and some writers 0600 files): apply the usual umask instead."""
    umask = _umask()
    for p in [root, *root.rglob("*")]:
        with contextlib.suppress(OSError):
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


# --------------------------------------------------------------------------- locks


@contextlib.contextmanager
def file_lock(
    name: str, what: str | None = None, progress: bool = True, wait: bool = True
) -> Iterator[bool]:
    """Hold the cache-wide lock ``name`` (yields True), writing this process's pid into it.

    While another process holds it, say so on stderr every ``WAIT_REPORT_S`` seconds (unless
    ``progress`` is off), naming that process and ``what`` it prepares. With ``wait=False``,
    yield False at once instead of waiting."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _acquire(fd, what or name, progress, wait):
            yield False
            return
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield True
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, what: str, progress: bool, wait: bool) -> bool:
    start = time.monotonic()
    reports = 0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not wait:
                return False
        now = time.monotonic()
        if progress and now >= start + reports * WAIT_REPORT_S:
            elapsed = f" ({now - start:.0f} s)" if reports else ""
            print(
                f"csdraft: waiting for {_holder(fd)} to finish preparing {what}{elapsed}",
                file=sys.stderr,
                flush=True,
            )
            reports += 1
        time.sleep(_POLL_S)


def _holder(fd: int) -> str:
    """'process PID' from a lock file's content ('another process' if it names none)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


# --------------------------------------------------------------------------- temporary folders


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A fresh folder under ``cache_dir()/"tmp"``, removed on exit. Its lock file (beside it,
    holding the owner's pid) stays locked while the folder lives, so that ``remove_stale_temp``
    knows a folder whose owner died."""
    root = cache_dir() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    while True:
        stem = f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
        lock = root / f"{stem}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # a cleaner may have taken the unlocked file for a dead one in between: retry
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    path = root / stem
    try:
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        path.mkdir()
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def remove_stale_temp() -> list[Path]:
    """Remove temporary folders whose owner is gone (their lock is free), and lock-less
    leftovers of older versions once ``LEGACY_TEMP_AGE_S`` old; return what was removed.
    Never fails: a cache that cannot be written keeps its leftovers."""
    removed: list[Path] = []
    root = cache_dir() / "tmp"
    try:
        entries = list(root.iterdir())
    except OSError:
        entries = []
    names = {e.name for e in entries}
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.name.endswith(".lock"):
                folder = root / entry.name[: -len(".lock")]
                if _remove_if_unlocked(entry, folder):
                    removed.append(folder)
            elif f"{entry.name}.lock" not in names and _age(entry) > LEGACY_TEMP_AGE_S:
                _remove(entry)
                removed.append(entry)
    with contextlib.suppress(OSError):  # int8 files half written by csdraft <= 0.1.0
        for entry in (cache_dir() / "int8").glob("*.tmp"):
            if _age(entry) > LEGACY_TEMP_AGE_S:
                entry.unlink()
                removed.append(entry)
    return removed


def _remove_if_unlocked(lock: Path, folder: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its owner is alive
        existed = folder.exists()
        _remove(folder)
        lock.unlink(missing_ok=True)
        return existed
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _age(path: Path) -> float:
    """Seconds since anything in ``path`` (itself included) last changed."""
    newest = path.lstat().st_mtime
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            for n in dirnames + filenames:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(dirpath, n)).st_mtime)
    return time.time() - newest


# --------------------------------------------------------------------------- digests


def sampled_digest(
    path: Path,
    start: int = 0,
    prefix: bytes = b"",
    window: int = SAMPLE_WINDOW,
    windows: int = SAMPLE_WINDOWS,
) -> str:
    """sha256 over ``prefix``, the size of ``path`` from byte ``start`` on, and ``windows``
    windows of ``window`` bytes evenly spaced over that span (the first and last included);
    the whole span when it is no longer than all the windows together."""
    with open(path, "rb") as fh:
        fd = fh.fileno()
        span = os.fstat(fd).st_size - start
        digest = hashlib.sha256(f"csdraft-sampled {span} {window} {windows}\0".encode())
        digest.update(prefix)
        if span <= window * windows:
            fh.seek(start)
            while block := fh.read(_CHUNK):
                digest.update(block)
        else:
            for i in range(windows):
                digest.update(os.pread(fd, window, start + i * (span - window) // (windows - 1)))
    return digest.hexdigest()


def file_sha256(path: Path, advance: Any = None) -> str:
    """sha256 of a whole file (``advance(n)`` called after each block read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(_CHUNK):
            digest.update(block)
            if advance is not None:
                advance(len(block))
    return digest.hexdigest()


# --------------------------------------------------------------------------- manifests


def write_manifest(folder: Path, info: dict[str, Any], console: Any = None) -> dict[str, Any]:
    """Record every file of ``folder`` (size, sha256, sampled digest) with ``info`` in its
    manifest; written last, so a folder with a manifest is complete."""
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST]
    rels = [str(p.relative_to(folder)) for p in paths]
    sizes = {rel: p.stat().st_size for rel, p in zip(rels, paths, strict=True)}
    with contextlib.ExitStack() as stack:
        advance = None
        if console is not None:
            bar = stack.enter_context(byte_progress(console))
            task = bar.add_task("hashing", total=sum(sizes.values()))
            advance = lambda n: bar.advance(task, n)  # noqa: E731
        full = {rel: file_sha256(p, advance) for rel, p in zip(rels, paths, strict=True)}
    manifest = {
        "format": MANIFEST_FORMAT,
        **info,
        "files": sizes,
        "sha256": full,
        "sampled": {rel: sampled_digest(p) for rel, p in zip(rels, paths, strict=True)},
        "sampling": {"window": SAMPLE_WINDOW, "windows": SAMPLE_WINDOWS},
    }
    _write_json(folder / MANIFEST, manifest)
    return manifest


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of ``path`` with its file table checked for shape (CacheDamaged if not)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise CacheDamaged(path, f"its manifest {MANIFEST} is missing") from exc
    except (OSError, ValueError) as exc:
        raise CacheDamaged(path, f"its manifest {MANIFEST} is unreadable") from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    ok = isinstance(files, dict) and bool(files)
    ok = ok and all(
        isinstance(rel, str)
        and isinstance(size, int)
        and not Path(rel).is_absolute()
        and ".." not in Path(rel).parts
        for rel, size in files.items()
    )
    for key in ("sha256", "sampled"):
        ok = ok and isinstance(manifest.get(key, {}), dict)
    if not ok:
        raise CacheDamaged(path, f"its manifest {MANIFEST} is unreadable")
    return manifest


def _check_sizes(path: Path, manifest: dict[str, Any]) -> tuple[Any, ...]:
    """Raise unless every listed file exists with its size; return the files' stat stamps."""
    stamps = []
    for rel, size in manifest["files"].items():
        try:
            st = (path / rel).stat()
        except FileNotFoundError as exc:
            raise CacheDamaged(path, f"{rel} is missing") from exc
        if st.st_size != size:
            raise CacheDamaged(path, f"{rel} has {st.st_size} bytes, {size} were written")
        stamps.append((rel, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


def _check_sampled(path: Path, manifest: dict[str, Any]) -> list[str]:
    """Raise if a file's sampled digest differs from the recorded one; return the files that
    have none recorded."""
    sampling = manifest.get("sampling") or {}
    window = int(sampling.get("window", SAMPLE_WINDOW))
    windows = int(sampling.get("windows", SAMPLE_WINDOWS))
    recorded = manifest.get("sampled") or {}
    missing = []
    for rel in manifest["files"]:
        want = recorded.get(rel)
        if want is None:
            missing.append(rel)
        elif sampled_digest(path / rel, window=window, windows=windows) != want:
            raise CacheDamaged(path, f"{rel} differs from when it was written")
    return missing


_checked: dict[Path, tuple[Any, ...]] = {}
"""Prepared directories whose sampled digests matched in this process, with the stat stamps
of their manifest and files then: an unchanged directory is not read again."""


def check_prepared(path: Path, upgrade: bool = True) -> None:
    """The load-time check of a prepared model directory: every file has its recorded size and
    sampled digest (``CacheDamaged`` otherwise). A manifest from an older version, with sizes
    only, gets its sampled digests recorded now (``upgrade``; skipped when the cache cannot be
    written or is locked by a preparation), so that later loads check them."""
    path = Path(path)
    manifest = _read_manifest(path)
    stamps = _check_sizes(path, manifest)
    with contextlib.suppress(OSError):
        st = (path / MANIFEST).stat()
        stamps += ((MANIFEST, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),)
    if _checked.get(path) == stamps:
        return
    missing = _check_sampled(path, manifest)
    if missing and upgrade:
        _add_sampled_digests(path)
        return
    _checked[path] = stamps


def _add_sampled_digests(path: Path) -> None:
    """Record the sampled digests of an old manifest's files, under the model's lock."""
    if path.parent != cache_dir() / "models":
        return
    with contextlib.suppress(OSError), file_lock(path.name, wait=False) as locked:
        if not locked:
            return  # a preparation holds it: sizes were checked, that will do this time
        manifest = _read_manifest(path)
        _check_sizes(path, manifest)
        _check_sampled(path, manifest)
        manifest["sampled"] = {
            rel: manifest.get("sampled", {}).get(rel) or sampled_digest(path / rel)
            for rel in manifest["files"]
        }
        manifest["sampling"] = {"window": SAMPLE_WINDOW, "windows": SAMPLE_WINDOWS}
        manifest["format"] = max(int(manifest.get("format", 1)), MANIFEST_FORMAT)
        _write_json(path / MANIFEST, manifest)


def verify_model_cache(path: Path, full: bool = True) -> CacheCheck:
    """Check a prepared model directory against its manifest: sizes and sampled digests, and
    with ``full`` every file's sha256 (reads every byte). Raise ``CacheDamaged`` (one line:
    what is damaged and how to repair it) on a mismatch. Writes nothing."""
    start = time.monotonic()
    path = Path(path)
    manifest = _read_manifest(path)
    _check_sizes(path, manifest)
    unverified = _check_sampled(path, manifest)
    if full:
        unverified = []
        recorded = manifest.get("sha256") or {}
        for rel in manifest["files"]:
            want = recorded.get(rel)
            if want is None:
                unverified.append(rel)
            elif file_sha256(path / rel) != want:
                raise CacheDamaged(path, f"{rel} differs from when it was written")
    return CacheCheck(
        path=path,
        files=len(manifest["files"]),
        bytes=sum(manifest["files"].values()),
        full=full,
        complete=not unverified,
        unverified=tuple(unverified),
        seconds=time.monotonic() - start,
    )
