"""The llama.cpp backend: a GGUF file run as it is by llama-cpp-python's low-level API.

``LlamaCppModel`` holds the llama.cpp model (weights mapped from the GGUF, never converted) and
the transformers tokenizer of the same GGUF, so that drafters of either backend share the
target's token ids. ``LlamaCppScorer`` is a rung's session: one llama context, its KV cache
truncated after a rejection (``llama_memory_seq_rm``), one ``llama_decode`` per block with
logits asked for at every position the engine reads. Token trees are not offered
(``scores_trees`` is False): a ladder that asks for them on such a rung is refused.

Offline packs are assembled once into ``cache_dir()/"gguf"/NAME`` (verified by sha256, then
checked like every prepared model at each load); a ``.gguf`` path is used where it lies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from csdraft.engine.proposer import common_prefix
from csdraft.errors import CsdraftError, UsageError
from csdraft.models.cache import (
    CacheDamaged,
    cache_dir,
    cache_writes,
    check_prepared,
    file_lock,
    one_line,
    remove_stale_temp,
    temp_dir,
    warn,
    write_manifest,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from transformers import PreTrainedTokenizerBase

    from csdraft.models.interface import LoadSpec

EXTRA = "pip install 'csdraft[llamacpp]'"
INSTALL_HINT = f"{EXTRA} (builds llama.cpp from source: a C++ compiler and cmake, 6-10 min)"

N_CTX = 8192
"""The longest context a session holds (prompt and generation), unless the GGUF's training
context is shorter: each context's KV cache is allocated in full (about 230 MB for the 1.5B)."""

N_BATCH = 512
"""Tokens per ``llama_decode`` (a longer prompt is fed in several)."""

CONTEXT_SLACK = 64
"""Positions allocated beyond ``context_length``: a draft block may run a little past it."""

GGUF_DTYPE = "gguf"
"""The only ``dtype`` of a llama.cpp model: the GGUF's own quantization runs."""


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module with its log quiet and its backend initialised, or a one-line
    UsageError naming the extra."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise UsageError(f"backend llama.cpp needs llama-cpp-python: {INSTALL_HINT}") from exc
    global _QUIET_LOG
    if _QUIET_LOG is None:  # the first call: quiet the log and start the backend, once
        # llama.cpp's log (model loading, vocabulary warnings) is noise here: errors come back
        # as return codes, which csdraft turns into one-line errors
        _QUIET_LOG = llama_cpp.llama_log_callback(_quiet)
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        llama_cpp.llama_log_set(_QUIET_LOG, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
    return llama_cpp


def _quiet(level: int, text: bytes, user_data: Any) -> None:
    """A llama.cpp log callback that drops every message."""


_QUIET_LOG: Any = None
"""``_quiet`` as a ctypes callback, kept alive here for as long as llama.cpp may call it."""


def available() -> bool:
    """Whether llama-cpp-python can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def cpu_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- GGUF files


@dataclass(frozen=True)
class GgufSource:
    """Where a llama.cpp model's GGUF lies, and the folder its tokenizer files are kept in."""

    gguf: Path
    tokenizer_dir: Path
    source: str


def gguf_source(ref: str, progress: bool = True) -> GgufSource:
    """The GGUF file of model reference ``ref`` (an offline pack, assembled once, or a
    ``.gguf`` path) with a folder holding its tokenizer files; a one-line UsageError for
    anything else."""
    from csdraft.models.packs import PACKS

    name = ref.removeprefix("pack:")
    if name in PACKS:
        folder = prepare_pack_gguf(name, progress)
        return GgufSource(folder / PACKS[name].filename, folder, f"offline pack {name} (GGUF)")
    if ref.startswith("pack:"):
        raise UsageError(f"unknown model pack {name!r}; known packs: {', '.join(sorted(PACKS))}")
    problem = LlamaCppModel.reference_problem(ref)
    if problem:
        raise UsageError(problem)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise CsdraftError(f"GGUF file {path} does not exist")
    return GgufSource(path, _gguf_tokenizer_dir(path, progress), f"gguf file {path}")


def prepare_pack_gguf(name: str, progress: bool = True) -> Path:
    """Assemble offline pack ``name``'s GGUF once into ``cache_dir()/"gguf"/NAME`` (sha256
    verified) with its tokenizer files; return that folder. A damaged one is rebuilt."""
    from csdraft.console import progress_console, quiet_transformers
    from csdraft.models.packs import PACKS, _assemble, _chunk_paths, check_assembled

    pack = PACKS[name]
    target = cache_dir() / "gguf" / name
    remove_stale_temp()
    if _sound(target):
        return target
    parts = _chunk_paths(pack)
    lock = f"gguf-{name}"
    with cache_writes(), file_lock(lock, what=f"{name} (GGUF)", progress=progress):
        if _sound(target):
            return target
        console = progress_console(progress)
        start = time.monotonic()
        console.print(f"[bold]csdraft[/]: assembling {pack.filename} for llama.cpp (first use)")
        with temp_dir(lock) as work:
            out = work / name
            out.mkdir()
            digest, size = _assemble(parts, out / pack.filename, console)
            check_assembled(pack, digest, size)
            with quiet_transformers(not progress):
                _save_tokenizer(out / pack.filename, out)
            _install(out, target, {"pack": name, "gguf_sha256": digest, "llama.cpp": True})
        console.print(f"  saved to {target} ({time.monotonic() - start:.0f} s)")
    return target


def _sound(folder: Path) -> bool:
    """Whether ``folder`` holds a complete prepared copy (a damaged one is reported)."""
    if not folder.exists():
        return False
    try:
        check_prepared(folder, upgrade=False)
    except CacheDamaged as exc:
        warn(f"cached GGUF at {folder} is damaged ({exc.why}); rebuilding it")
        return False
    return True


def _gguf_tokenizer_dir(path: Path, progress: bool) -> Path:
    """A cached folder with the transformers tokenizer read from the GGUF file ``path``
    (keyed by its sha256, so it is read once)."""
    from csdraft.console import progress_console, quiet_transformers
    from csdraft.models.gguf import _gguf_digest

    digest = _gguf_digest(path, progress_console(progress))
    target = cache_dir() / "gguf" / f"tokenizer-{digest[:16]}"
    if target.exists() and _sound(target):
        return target
    with cache_writes(), file_lock(target.name, progress=progress):
        if target.exists() and _sound(target):
            return target
        with temp_dir(target.name) as work:
            out = work / target.name
            out.mkdir()
            with quiet_transformers(not progress):
                _save_tokenizer(path, out)
            _install(out, target, {"gguf_file": str(path.resolve()), "gguf_sha256": digest})
    return target


def _install(out: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Give the prepared folder ``out`` its manifest and move it to ``target`` in one rename,
    a damaged copy there moved aside first (call it under the folder's lock)."""
    write_manifest(out, manifest)
    if target.exists():
        with temp_dir(f"{target.name}-damaged") as trash:
            os.replace(target, trash / target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(out, target)


def _save_tokenizer(gguf: Path, out: Path) -> None:
    """Read the transformers tokenizer of ``gguf`` and save its files into ``out``."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise CsdraftError(f"could not read the tokenizer of {gguf.name}: {one_line(exc)}") from exc
    tok.save_pretrained(str(out))


# --------------------------------------------------------------------------- sessions


class LlamaCppScorer:
    """A llama.cpp context driven as a rung: ``score`` drops from the KV cache what ``seq``
    does not share with what it holds, then feeds the rest in one ``llama_decode`` (several
    for a prompt longer than ``N_BATCH``), asking for logits only at the rows it returns.

    The context is taken from the model's pool at the first ``score`` and given back, cleared,
    at ``reset``, so cascades built over one model (bench builds one per method) share a few
    contexts instead of holding one each."""

    scores_trees: ClassVar[bool] = False

    def __init__(self, model: LlamaCppModel, name: str) -> None:
        self.model = model
        self.name = name
        self.ctx: _Context | None = None
        self.tokens = np.empty(0, dtype=np.int64)  # what the KV cache holds, as a sequence

    def reset(self) -> None:
        if self.ctx is not None:
            self.model._give_back(self.ctx)
            self.ctx = None
        self.tokens = np.empty(0, dtype=np.int64)

    def __del__(self) -> None:  # a session dropped without reset gives its context back
        with contextlib.suppress(Exception):
            self.reset()

    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        """Logits [len(seq) - start + 1, vocab] (float32): row i predicts seq[start - 1 + i + 1],
        the last row the token after ``seq``, as ``TransformersScorer.score`` returns them."""
        if self.ctx is None:
            self.ctx = self.model._take()
            self.tokens = np.empty(0, dtype=np.int64)
        keep = min(common_prefix(self.tokens, seq), start - 1)
        if keep < len(self.tokens):
            keep = self.ctx.truncate(keep)
        self.tokens = seq[:keep]  # what the cache holds should a decode fail
        rows = self.ctx.decode(seq[keep:], keep, first_output=start - 1 - keep)
        self.tokens = seq
        return torch.from_numpy(rows)


class _Context:
    """One llama context (sequence 0 only) with a reusable batch."""

    def __init__(self, owner: LlamaCppModel) -> None:
        lc = import_llama_cpp()
        self.lc = lc
        self.n_vocab = owner.vocab_size
        params = lc.llama_context_default_params()
        params.n_ctx = owner.n_ctx
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = owner.n_threads
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as ``Llama``'s default
        params.no_perf = True
        self.ctx = lc.llama_init_from_model(owner.handle, params)
        if not self.ctx:
            raise CsdraftError(f"llama.cpp could not create a context for {owner.ref}")
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(N_BATCH, 0, 1)
        b = self.batch
        self.token = np.ctypeslib.as_array(b.token, shape=(N_BATCH,))
        self.pos = np.ctypeslib.as_array(b.pos, shape=(N_BATCH,))
        self.want = np.ctypeslib.as_array(b.logits, shape=(N_BATCH,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(N_BATCH,))[:] = 1
        for i in range(N_BATCH):
            b.seq_id[i][0] = 0

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.memory, True)

    def truncate(self, keep: int) -> int:
        """Drop positions ``keep`` onward from the KV cache; return how many it keeps (0 when
        llama.cpp cannot cut there and the cache was cleared instead)."""
        if self.lc.llama_memory_seq_rm(self.memory, 0, keep, -1):
            return keep
        self.clear()
        return 0

    def decode(self, ids: np.ndarray, past: int, first_output: int) -> np.ndarray:
        """Feed ``ids`` at positions ``past``..., return float32 logits [len(ids) -
        first_output, vocab] for the positions from ``first_output`` (relative to ``ids``)."""
        out = np.empty((len(ids) - first_output, self.n_vocab), dtype=np.float32)
        filled = 0
        for lo in range(0, len(ids), N_BATCH):
            chunk = ids[lo : lo + N_BATCH]
            n = len(chunk)
            self.token[:n] = chunk
            self.pos[:n] = np.arange(past + lo, past + lo + n)
            self.want[:n] = np.arange(lo, lo + n) >= first_output
            self.batch.n_tokens = n
            code = self.lc.llama_decode(self.ctx, self.batch)
            if code != 0:
                raise CsdraftError(
                    f"llama.cpp decode failed (code {code}) at position {past + lo} with {n} "
                    "tokens; the context may be full"
                )
            rows = int(self.want[:n].sum())
            if rows:
                logits = self.lc.llama_get_logits(self.ctx)
                out[filled : filled + rows] = np.ctypeslib.as_array(
                    logits, shape=(rows, self.n_vocab)
                )
                filled += rows
        return out

    def close(self) -> None:
        if self.ctx:
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.ctx = None


# --------------------------------------------------------------------------- the model


@dataclass(eq=False)
class LlamaCppModel:
    """A GGUF model loaded by llama.cpp, with the transformers tokenizer of the same GGUF.

    ``dtype`` is ``"gguf"`` (the file's own quantization runs; ``weight_format`` says which);
    activations and logits are float32 (``compute_dtype``)."""

    scores_trees: ClassVar[bool] = False
    supports_vocab: ClassVar[bool] = False
    cpu_only: ClassVar[bool] = True
    dtypes: ClassVar[tuple[str, ...]] = (GGUF_DTYPE,)

    ref: str
    source: str
    path: Path
    gguf: Path
    handle: Any  # llama_model_p
    tokenizer: PreTrainedTokenizerBase
    n_ctx: int
    n_threads: int
    weight_format: str
    dtype: str = GGUF_DTYPE
    device: str = "cpu"
    batch_invariant: bool = False
    """llama.cpp's block passes differ from its one-token passes (``exactness.NEAR_TIE``)."""
    _pool: list[_Context] = field(default_factory=list, repr=False)
    _vocab: int = 0
    _eos: tuple[int, ...] = ()

    @classmethod
    def reference_problem(cls, ref: str) -> str | None:
        """Why ``ref`` names no GGUF (neither an offline pack nor a ``.gguf`` path), or None."""
        from csdraft.models.packs import has_gguf

        if has_gguf(ref):
            return None
        return (
            f"backend llama.cpp runs GGUF files: {ref!r} is neither an offline pack nor a path "
            "ending in .gguf"
        )

    @classmethod
    def from_spec(
        cls,
        spec: LoadSpec,
        progress: bool = True,
        share_tokenizer: Any = None,
        batch_invariant: bool = False,
    ) -> LlamaCppModel:
        """``load_llamacpp`` of the spec's reference; llama.cpp has no batch-invariant path
        (``batch_invariant`` stays False)."""
        return load_llamacpp(spec.ref, progress, share_tokenizer)

    def session(self, name: str, vocab: int | None = None) -> LlamaCppScorer:
        """A fresh scorer over this model (its context is taken at its first ``score``).
        A draft vocabulary (``vocab``) needs the transformers backend."""
        if vocab is not None:
            raise UsageError(f"{name}: a draft vocabulary (vocab) needs the transformers backend")
        return LlamaCppScorer(self, name)

    def _take(self) -> _Context:
        return self._pool.pop() if self._pool else _Context(self)

    def _give_back(self, ctx: _Context) -> None:
        ctx.clear()
        self._pool.append(ctx)

    def next_logits(self, context: Sequence[int], prompt_tokens: int | None = None) -> torch.Tensor:
        """float32 logits of the token after ``context`` (a fresh cache)."""
        ctx = self._take()
        try:
            ctx.clear()
            ids = np.asarray(list(context), dtype=np.int64)
            return torch.from_numpy(ctx.decode(ids, 0, len(ids) - 1)[0])
        finally:
            self._give_back(ctx)

    def parameter_count(self) -> int:
        return int(import_llama_cpp().llama_model_n_params(self.handle))

    def weight_bytes(self) -> int:
        """Bytes of the weights as the GGUF stores them (quantized)."""
        return int(import_llama_cpp().llama_model_size(self.handle))

    def int8_layers(self) -> int:
        """No layer runs csdraft's int8 path (the GGUF's own quantization runs instead)."""
        return 0

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end generation: the GGUF's eos and the tokenizer's."""
        return sorted(set(self._eos))

    @property
    def context_length(self) -> int:
        """The longest prompt plus generation a session holds (``N_CTX`` at most)."""
        return self.n_ctx - CONTEXT_SLACK

    @property
    def vocab_size(self) -> int:
        """The width of the logits (the GGUF's vocabulary)."""
        return self._vocab

    @property
    def compute_dtype(self) -> str:
        """``"gguf"``: llama.cpp's own kernels over the GGUF's quantized weights (float32
        activations and logits); ``exactness.NEAR_TIE`` holds its near-tie width."""
        return GGUF_DTYPE

    def close(self) -> None:
        """Free the contexts and the model (the object is unusable afterwards)."""
        lc = import_llama_cpp()
        while self._pool:
            self._pool.pop().close()
        if self.handle:
            lc.llama_model_free(self.handle)
            self.handle = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def load_llamacpp(
    ref: str,
    progress: bool = True,
    share_tokenizer: Any = None,
    n_threads: int | None = None,
) -> LlamaCppModel:
    """Load the GGUF ``ref`` names with llama.cpp (CPU) and its transformers tokenizer.

    ``share_tokenizer``: a loaded model whose tokenizer object is reused when both
    tokenizers' files are byte-identical."""
    from csdraft.console import quiet_transformers
    from csdraft.models.tokenizers import tokenizer_files_digest

    lc = import_llama_cpp()
    src = gguf_source(ref, progress)
    tokenizer = None
    if share_tokenizer is not None:
        digest = tokenizer_files_digest(src.tokenizer_dir)
        other = tokenizer_files_digest(getattr(share_tokenizer, "path", None))
        if digest is not None and digest == other:
            tokenizer = share_tokenizer.tokenizer
    if tokenizer is None:
        from transformers import AutoTokenizer

        with quiet_transformers(True):
            tokenizer = AutoTokenizer.from_pretrained(str(src.tokenizer_dir))
    params = lc.llama_model_default_params()
    params.n_gpu_layers = 0
    handle = lc.llama_model_load_from_file(str(src.gguf).encode(), params)
    if not handle:
        raise CsdraftError(f"llama.cpp could not load {src.gguf}")
    vocab = lc.llama_model_get_vocab(handle)
    n_vocab = int(lc.llama_vocab_n_tokens(vocab))
    if len(tokenizer) > n_vocab:
        lc.llama_model_free(handle)
        raise CsdraftError(
            f"{src.gguf.name}: its tokenizer has {len(tokenizer)} tokens but llama.cpp reads a "
            f"vocabulary of {n_vocab}; the GGUF and its tokenizer disagree"
        )
    eos = {int(lc.llama_vocab_eos(vocab))}
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    trained = int(lc.llama_model_n_ctx_train(handle))
    buf = ctypes.create_string_buffer(128)
    lc.llama_model_desc(handle, buf, len(buf))
    return LlamaCppModel(
        ref=ref,
        source=src.source,
        path=src.tokenizer_dir,
        gguf=src.gguf,
        handle=handle,
        tokenizer=tokenizer,
        n_ctx=min(N_CTX, trained) + CONTEXT_SLACK if trained > 0 else N_CTX + CONTEXT_SLACK,
        n_threads=n_threads or cpu_threads(),
        weight_format=buf.value.decode("utf-8", "replace"),
        _vocab=n_vocab,
        _eos=tuple(e for e in eos if 0 <= e < n_vocab),
    )
