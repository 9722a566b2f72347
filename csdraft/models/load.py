"""Loading a model rung: the backends (``BACKENDS``, ``backend_class``) and ``load``, which
dispatches a rung's spec to its backend.

A backend is a class that satisfies ``interface.LoadedModel``: it loads itself from a spec
(``from_spec``), declares what it can do as class attributes (``scores_trees``,
``supports_vocab``, ``cpu_only``, ``dtypes``, ``reference_problem``), so that a ladder is
checked without loading anything and nothing matches backend names, and hands the engine a
``Scorer`` per rung (``session``). Each backend imports its heavy dependencies only when it
loads something; importing this module imports neither torch nor llama.cpp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from csdraft.errors import UsageError
from csdraft.models.interface import LoadedModel, LoadSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _transformers() -> type[LoadedModel]:
    from csdraft.models.transformers_backend import TransformersModel

    return TransformersModel


def _llamacpp() -> type[LoadedModel]:
    from csdraft.models.llamacpp_backend import LlamaCppModel

    return LlamaCppModel


BACKENDS: dict[str, Callable[[], type[LoadedModel]]] = {
    "transformers": _transformers,
    "llama.cpp": _llamacpp,
}
"""Backend name (``backend:`` of a ladder's model) -> its model class, imported when asked."""


def backend_class(name: str) -> type[LoadedModel]:
    """The model class of backend ``name`` (a one-line UsageError naming the known ones)."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]()


def device_problem(backend: type[LoadedModel], name: str, device: str) -> str | None:
    """Why backend ``name`` cannot run a model on ``device`` (a CPU-only backend elsewhere),
    or None: the one statement of that rule, for ``spec.validate`` and ``load``."""
    if backend.cpu_only and device != "cpu":
        return f"backend {name} runs on the CPU here; got device {device!r}"
    return None


def load(
    spec: LoadSpec,
    progress: bool = True,
    share_tokenizer: LoadedModel | None = None,
    batch_invariant: bool = False,
) -> LoadedModel:
    """Load the model ``spec`` names with the backend it names.

    ``share_tokenizer``: a loaded model (the target) whose tokenizer object is reused when the
    two models' tokenizer files are identical. ``batch_invariant``: as a target (int8 on
    transformers then computes its blocks exactly as one-token passes; backends without such a
    path ignore it and say so in ``batch_invariant``)."""
    try:
        cls = backend_class(spec.backend)
    except UsageError as exc:
        raise UsageError(f"model '{spec.name}': {exc}") from None
    if problem := device_problem(cls, spec.backend, spec.device):
        raise UsageError(f"model '{spec.name}': {problem}")
    return cls.from_spec(spec, progress, share_tokenizer, batch_invariant)


def load_tokenizer(ref: str, progress: bool = True) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of ``ref`` (resolved as the transformers backend resolves it)."""
    from csdraft.models.transformers_backend import load_tokenizer as load

    return load(ref, progress)

