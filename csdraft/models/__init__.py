"""Finding, preparing, checking and loading models (the public API of the package).

- ``resolve``: a model reference -> an offline pack, a GGUF file, a local directory or a hub id;
- ``packs``, ``gguf``: preparing packs and GGUF files once into ``cache_dir()/"models"``;
- ``cache``: what the on-disk cache shares (locks, temporary folders, manifests, digests);
- ``int8``: int8 drafters and their cache; ``tokenizers``: tokenizer identity;
- ``interface``: what a loaded model of any backend offers (``LoadedModel``, a Protocol);
- ``load``: the backends (``BACKENDS``, ``backend_class``) and ``load``;
  ``transformers_backend`` and ``llamacpp_backend``: the two backends (``seq2seq``: the
  transformers backend's encoder-decoder rungs).

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
    cache_dir,
    verify_model_cache,
)
from csdraft.models.gguf import prepare_gguf
from csdraft.models.interface import LoadedModel, LoadSpec
from csdraft.models.load import BACKENDS, backend_class, load, load_tokenizer
from csdraft.models.packs import PACKS, OfflinePack, prepare_pack
from csdraft.models.resolve import resolve
from csdraft.models.tokenizers import (
    TOKENIZER_FILES,
    tokenizer_files_digest,
    tokenizer_fingerprint,
)

if TYPE_CHECKING:
    from csdraft.models.transformers_backend import TransformersModel, TransformersScorer

__all__ = [
    "BACKENDS",
    "MANIFEST",
    "NEAR_TIE",
    "PACKS",
    "TOKENIZER_FILES",
    "CacheCheck",
    "CacheDamaged",
    "LoadSpec",
    "LoadedModel",
    "OfflinePack",
    "TransformersModel",
    "TransformersScorer",
    "backend_class",
    "cache_dir",
    "load",
    "load_tokenizer",
    "near_tie",
    "prepare_gguf",
    "prepare_pack",
    "resolve",
    "tokenizer_files_digest",
    "tokenizer_fingerprint",
    "verify_model_cache",
]


def __getattr__(name: str) -> Any:
    """``TransformersModel`` and ``TransformersScorer``, imported (with torch) on first use."""
    if name in ("TransformersModel", "TransformersScorer"):
        from csdraft.models import transformers_backend

        return getattr(transformers_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
