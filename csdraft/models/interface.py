"""What a loaded model of any backend offers (``LoadedModel``) and what loading one reads of a
rung's spec (``LoadSpec``): the interface every backend's model class satisfies, kept apart so
that the backends and ``load`` both depend on it and not on each other."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from csdraft.engine.proposer import Scorer


class LoadSpec(Protocol):
    """What ``load`` reads of a rung's spec (``csdraft.ladder``'s model specs satisfy it)."""

    @property
    def ref(self) -> str:
        """The model reference (``resolve``: a pack, a GGUF file, a directory, a hub id)."""
        ...

    @property
    def name(self) -> str:
        """The rung's name, for messages."""
        ...

    @property
    def dtype(self) -> str:
        """One of the backend's ``dtypes``."""
        ...

    @property
    def device(self) -> str: ...

    @property
    def backend(self) -> str:
        """A key of ``BACKENDS``."""
        ...


@runtime_checkable
class LoadedModel(Protocol):
    """A loaded model of any backend: what the engine, the API and ``inspect`` use of it."""

    scores_trees: ClassVar[bool]
    """Whether its sessions score token trees in one pass (``score_tree``, ``keep_path``)."""
    supports_vocab: ClassVar[bool]
    """Whether a drafter's session may cut its output head to a draft vocabulary."""
    cpu_only: ClassVar[bool]
    """Whether it runs on the CPU only."""
    dtypes: ClassVar[tuple[str, ...]]
    """The ``dtype`` values a spec may ask of it."""

    ref: str
    source: str
    """Where it came from, in words (``resolve``)."""
    path: Path | None
    """The folder it (or its tokenizer) was loaded from; None: the Hugging Face cache."""
    dtype: str
    device: str
    tokenizer: PreTrainedTokenizerBase
    batch_invariant: bool
    """Whether a block pass computes, row for row, bit for bit what one-token passes compute."""

    @classmethod
    def reference_problem(cls, ref: str) -> str | None:
        """Why this backend cannot load model reference ``ref`` (checked without loading
        anything), or None when it may."""
        ...

    @classmethod
    def from_spec(
        cls,
        spec: LoadSpec,
        progress: bool = True,
        share_tokenizer: LoadedModel | None = None,
        batch_invariant: bool = False,
    ) -> LoadedModel:
        """Load the model ``spec`` names (see ``load``)."""
        ...

    def session(self, name: str, vocab: int | None = None) -> Scorer:
        """A fresh scorer with its own cache (``vocab``: a drafter's draft vocabulary)."""
        ...

    def next_logits(self, context: Sequence[int], prompt_tokens: int | None = None) -> torch.Tensor:
        """float32 logits of the token after ``context``; ``prompt_tokens``: where its prompt
        ends (an encoder-decoder encodes that part; None: all of it; decoder-only models
        ignore it)."""
        ...

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end generation."""
        ...

    @property
    def context_length(self) -> int | None:
        """The longest context it takes, when known."""
        ...

    @property
    def vocab_size(self) -> int:
        """The width of its logits."""
        ...

    @property
    def compute_dtype(self) -> str:
        """What it computes in, in words (``inspect``)."""
        ...

    @property
    def weight_format(self) -> str | None:
        """The weights' own format where it is not ``compute_dtype`` (a GGUF's
        quantization), else None."""
        ...

    def parameter_count(self) -> int: ...

    def weight_bytes(self) -> int:
        """Bytes of the weights as they are held."""
        ...

    def int8_layers(self) -> int:
        """How many linear layers run csdraft's int8 path."""
        ...
