"""Files a user asked for: checked for writability before the long work, written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from csdraft.errors import CsdraftError, UsageError


def check_writable(path: Path | None, option: str) -> None:
    """A one-line UsageError now, before any model loads, if ``path`` cannot be written: its
    folder cannot be made, or a file cannot be created there (tried: permissions alone do not
    tell, e.g. for root in /proc), or the path is a folder."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option}: {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
        if path.exists():
            with path.open("a"):
                pass
    except OSError as e:
        raise UsageError(f"{option}: cannot write {path} ({e.strerror or e})") from None


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename), creating
    folders; failures become one-line CsdraftErrors."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CsdraftError(f"cannot write {path}: {e.strerror or e}") from None
