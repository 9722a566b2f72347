"""csdraft: Cascade Speculative Drafting for Hugging Face causal LMs (see ``csdraft.api``)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Ladder", "LadderSpec", "Result", "RungSpec", "__version__", "build_cascade", "load"]


def __getattr__(name: str) -> Any:
    # The API imports torch; `import csdraft` (and so the CLI's --help) stays cheap until used.
    if name in ("Ladder", "Result", "load"):
        from csdraft import api

        return getattr(api, name)
    if name in ("LadderSpec", "RungSpec", "build_cascade"):
        from csdraft import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'csdraft' has no attribute {name!r}")
