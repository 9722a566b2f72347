"""Finding, preparing, checking and loading models (the public API of the package).

- ``resolve``: a model reference -> an offline pack, a GGUF file, a local directory or a hub id;
- ``packs``, ``gguf``: preparing packs and GGUF files once into ``cache_dir()/"models"``;
- ``cache``: what the on-disk cache shares (locks, temporary folders, manifests, digests);
- ``int8``: int8 drafters and their cache; ``tokenizers``: tokenizer identity;
- ``load``: the backend factory; ``transformers_backend``: the transformers backend.

Importing this package stays cheap: torch and transformers are imported when a model is loaded
(``TransformersModel`` and ``TransformersScorer`` are imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from csdraft.exactness import NEAR_TIE, near_tie
from csdraft.models.cache import (
    MANIFEST,
    CacheCheck,
    CacheDamaged,
    verify_model_cache,
)
from csdraft.models.gguf import prepare_gguf
from csdraft.models.load import BACKENDS, load, load_model, load_tokenizer
from csdraft.models.packs import PACKS, OfflinePack, prepare_pack
from csdraft.models.resolve import cache_dir, resolve
from csdraft.models.tokenizers import (
    TOKENIZER_FILES,
    tokenizer_files_digest,
    tokenizer_fingerprint,
)

if TYPE_CHECKING:
    from csdraft.models.transformers_backend import TransformersModel, TransformersScorer

    LoadedModel = TransformersModel

__all__ = [
    "BACKENDS",
    "MANIFEST",
    "NEAR_TIE",
    "PACKS",
    "TOKENIZER_FILES",
    "CacheCheck",
    "CacheDamaged",
    "LoadedModel",
    "OfflinePack",
    "TransformersModel",
    "TransformersScorer",
    "cache_dir",
    "load",
    "load_model",
    "load_tokenizer",
    "near_tie",
    "prepare_gguf",
    "prepare_pack",
    "resolve",
    "tokenizer_files_digest",
    "tokenizer_fingerprint",
    "verify_model_cache",
]

_LAZY = {
    "TransformersModel": "TransformersModel",
    "TransformersScorer": "TransformersScorer",
    "LoadedModel": "TransformersModel",  # the old name of a loaded transformers model
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        backend = importlib.import_module("csdraft.models.transformers_backend")
        return getattr(backend, _LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
