"""Loading a model rung: the backend factory (``BACKENDS``, ``load``: transformers, and
llama.cpp for GGUF files) and the transformers loaders kept under their old names
(``load_model``, ``load_tokenizer``).

A backend is a function ``(spec, progress, share_tokenizer, batch_invariant) -> loaded
model`` (``batch_invariant``: load a target so that its block passes compute what its one-token
passes compute, where the backend can; it says so in the model's ``batch_invariant``); the loaded
model offers ``session(name, vocab=None)`` (a scorer the engine can drive; ``vocab``: a
drafter's draft vocabulary, refused by backends without one), ``next_logits``, ``eos_ids``,
``context_length``, ``vocab_size`` and the size facts ``inspect`` shows. Each backend imports
its heavy dependencies only when it loads something.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from csdraft.errors import UsageError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from csdraft.models.transformers_backend import TransformersModel


def _load_transformers_spec(
    spec: Any, progress: bool = True, share_tokenizer: Any = None, batch_invariant: bool = False
) -> TransformersModel:
    return load_model(spec.ref, spec.dtype, spec.device, progress, share_tokenizer, batch_invariant)


def _load_llamacpp_spec(
    spec: Any, progress: bool = True, share_tokenizer: Any = None, batch_invariant: bool = False
) -> Any:
    from csdraft.models.llamacpp_backend import load_spec

    return load_spec(spec, progress, share_tokenizer)  # llama.cpp has no batch-invariant path


BACKENDS: dict[str, Callable[..., Any]] = {
    "transformers": _load_transformers_spec,
    "llama.cpp": _load_llamacpp_spec,
}
"""Backend name (``backend:`` of a ladder's model) -> loader of a ``ModelSpec``."""


def load(
    spec: Any, progress: bool = True, share_tokenizer: Any = None, batch_invariant: bool = False
) -> TransformersModel:
    """Load the model a ``csdraft.ladder.ModelSpec`` names with the backend it names.

    ``share_tokenizer``: a loaded model (the target) whose tokenizer object is reused when the
    two models' tokenizer files are identical. ``batch_invariant``: as a target (int8 on
    transformers then computes its blocks exactly as one-token passes)."""
    backend = getattr(spec, "backend", "transformers") or "transformers"
    loader = BACKENDS.get(backend)
    if loader is None:
        name = getattr(spec, "name", None) or spec.ref
        raise UsageError(
            f"model '{name}': unknown backend {backend!r}; known backends: "
            f"{', '.join(sorted(BACKENDS))}"
        )
    return loader(
        spec, progress=progress, share_tokenizer=share_tokenizer, batch_invariant=batch_invariant
    )


def load_model(ref: str, *args: Any, **kwargs: Any) -> TransformersModel:
    """Load ``ref`` with transformers: ``transformers_backend.load_transformers`` (dtype,
    device, progress, share_tokenizer), imported only when called."""
    from csdraft.models.transformers_backend import load_transformers

    return load_transformers(ref, *args, **kwargs)


def load_tokenizer(ref: str, progress: bool = True) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of ``ref`` (same resolution as ``load_model``)."""
    from csdraft.models.transformers_backend import load_tokenizer as load

    return load(ref, progress)


def backend_class(name: str) -> Any:  # TEMPORARY stub until the h-struct merge
    """The model class of backend ``name`` (its capabilities as class attributes)."""
    from types import SimpleNamespace

    if name == "transformers":
        return SimpleNamespace(
            scores_trees=True, supports_vocab=True, cpu_only=False,
            dtypes=("bfloat16", "float16", "float32", "int8"),
            reference_problem=lambda ref: None,
        )
    if name == "llama.cpp":
        from csdraft.models.packs import has_gguf

        return SimpleNamespace(
            scores_trees=False, supports_vocab=False, cpu_only=True, dtypes=("gguf",),
            reference_problem=lambda ref: None if has_gguf(ref) else (
                f"backend llama.cpp runs GGUF files: {ref!r} is neither an offline pack nor a "
                "path ending in .gguf"
            ),
        )
    raise UsageError(f"backend: expected one of transformers, llama.cpp, got {name!r}")


LoadedModel = Any  # TEMPORARY stub until the h-struct merge
