"""The transformers backend: a loaded Hugging Face causal LM (``TransformersModel``) and its
KV-cached scorer (``TransformersScorer``, what the engine calls a rung); an encoder-decoder
(``Seq2SeqModel``, its scorer in ``seq2seq``) where the model's config says it is one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from csdraft.console import quiet_transformers
from csdraft.engine.draft import Draft
from csdraft.engine.proposer import common_prefix
from csdraft.errors import CsdraftError, UsageError
from csdraft.models.cache import check_prepared, one_line
from csdraft.models.prefixes import PrefixStore
from csdraft.models.resolve import _hub_load, _Resolved, resolve
from csdraft.models.tokenizers import tokenizer_files_digest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from csdraft.models.interface import LoadSpec

DTYPES = ("bfloat16", "float16", "float32", "int8")
"""``int8``: int8 weights in every linear layer (float32 activations), CPU only. A drafter runs
fbgemm's dynamic int8 kernel (about 2.5x faster than bfloat16 for a 0.5B model on a 2-core
CPU); a target, loaded ``batch_invariant``, quantizes activations per token and attends row by
row (``invariant``), so its blocks compute exactly what its one-token passes compute."""


class TransformersScorer:
    """A transformers causal LM with a KV cache that feeds only tokens it has not seen.

    ``score`` crops the cache back to the longest prefix it shares with ``seq`` (rejected drafts
    go), feeds the rest in one forward pass and computes logits only where they are asked for.
    Llama-style models run ``lean.LeanDecoder`` (transformers' numbers without its framework).
    With a ``prefixes`` store, a fresh cache starts from the rows of the longest stored prompt
    prefix of its first sequence, and the session offers the store its own first pass's rows.
    """

    scores_trees: ClassVar[bool] = True
    """``score_tree`` and ``keep_path``: a token tree in one masked forward pass."""

    def __init__(
        self, model: torch.nn.Module, name: str, head: torch.nn.Module | None = None
    ) -> None:
        from csdraft.models.lean import LeanDecoder

        self.model = model
        self.name = name
        self.head = head
        """An output head in place of the model's (a draft vocabulary's), or None."""
        self.lean = LeanDecoder.of(model, head)
        self.device = next(model.parameters()).device
        self.cache = None
        self.tokens = np.empty(0, dtype=np.int64)  # what the cache holds, as a sequence
        self.tree = np.empty(0, dtype=np.int64)  # tree nodes cached after ``tokens``, if any
        self.prefixes: PrefixStore | None = None
        """Where prompts' rows are shared with other sessions of the model; set only where a
        copied row is what this session would compute (``pooled.shares_passes``)."""
        self.offered = False  # whether its first pass's rows went to ``prefixes``

    def reset(self) -> None:
        self._offer()  # a generation that ended after one pass still shares its prompt
        self.cache = None
        self.tokens = np.empty(0, dtype=np.int64)
        self.tree = np.empty(0, dtype=np.int64)
        self.offered = False

    def _offer(self) -> None:
        """Give ``prefixes`` the rows of what the cache holds, once per generation: at its
        second sync (its first pass done) or, after a single pass, when it is reset."""
        if self.prefixes is not None and not self.offered and self.cache is not None:
            self.offered = True
            self.prefixes.add(self.tokens, [(x.keys, x.values) for x in self.cache.layers])

    def _sync(self, seq: np.ndarray, most: int) -> int:
        """Crop the cache to what it shares with ``seq`` (at most ``most`` tokens, tree nodes
        never) and return how many tokens it keeps."""
        from csdraft.models.kv_cache import growing_cache

        if self.cache is None:
            self.cache = growing_cache(self.model.config)
            if self.prefixes is None:
                return 0
            keep, rows = self.prefixes.find(seq, most)
            for layer, (keys, values) in zip(self.cache.layers, rows, strict=False):
                layer.update(keys, values)  # copied into the layer's own room
            self.tokens = seq[:keep].copy()
            return keep
        self._offer()  # the first pass is done
        keep = min(common_prefix(self.tokens, seq), most)
        cached = self.cache.get_seq_length()
        if keep < cached:
            self.cache.crop(keep - cached)  # negative: drop that many from the end
        if len(self.tree):
            self.tree = np.empty(0, dtype=np.int64)
        self.tokens = self.tokens[:keep]  # true to the cache until the pass returns
        return keep

    @torch.inference_mode()
    def score(self, seq: np.ndarray, start: int) -> torch.Tensor:
        logits = self._forward(*self.feed(seq, start))
        self.tokens = seq
        return logits

    @torch.inference_mode()
    def feed(self, seq: np.ndarray, start: int) -> tuple[torch.Tensor, int]:
        """``score``'s first half: crop the cache for ``seq``; the ids [1, n] a pass must feed
        and how many last rows' logits it returns (a ragged pass's share, ``pooled``)."""
        keep = self._sync(seq, start - 1)
        new = torch.from_numpy(np.ascontiguousarray(seq[keep:])).to(self.device)[None]
        return new, len(seq) - start + 1

    def _forward(
        self,
        ids: torch.Tensor,
        keep: int,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Feed ``ids`` [1, n] into the cache (the lean path where the model has one) and return
        the logits of the last ``keep`` positions, float32 on the CPU."""
        if self.lean is not None:
            logits = self.lean(ids, self.cache, keep, positions, mask)
        elif self.head is not None:
            out = self.model.base_model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
            )
            self.cache, logits = out.past_key_values, self.head(out.last_hidden_state[:, -keep:])
        else:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=keep,
            )
            self.cache, logits = out.past_key_values, out.logits
        return logits[0].float().cpu()

    @torch.inference_mode()
    def score_tree(self, context: np.ndarray, draft: Draft) -> torch.Tensor:
        """Logits [1 + len(draft), vocab] in one forward pass: row 0 after ``context``, row
        i + 1 after node i, each node seeing the context and its own ancestors only (a 4D
        additive mask, positions by depth). The cache then holds context and every node, until
        ``keep_path`` keeps one path."""
        keep = self._sync(context, len(context) - 1)
        c, m = len(context) - keep, len(draft)
        ids = np.concatenate([context[keep:], np.asarray(draft.tokens, dtype=np.int64)])
        # allowed[r, col]: new token r may attend to cache column col.
        allowed = torch.ones(c + m, keep + c + m, dtype=torch.bool)
        allowed[:c, keep:] = torch.ones(c, c + m, dtype=torch.bool).tril()
        allowed[c:, keep + c :] = tree_mask(draft)
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        depth = torch.tensor(draft.depth(), dtype=torch.long)
        positions = torch.cat([torch.arange(keep, len(context)), len(context) - 1 + depth])
        ids_t = torch.from_numpy(ids).to(self.device)[None]
        positions, mask = positions[None].to(self.device), mask[None, None].to(self.device)
        logits = self._forward(ids_t, m + 1, positions, mask)
        self.tokens = context
        self.tree = np.asarray(draft.tokens, dtype=np.int64)
        return logits

    @torch.inference_mode()
    def keep_path(self, path: Sequence[int]) -> None:
        """Keep only the tree nodes ``path`` (root first) in the cache after the last
        ``score_tree``: the cache then equals feeding the context and that path alone. Only the
        path's entries move (into the slots after the context); the context's stay put."""
        n, k = len(self.tokens), len(path)
        nodes = n + torch.as_tensor(list(path), dtype=torch.long, device=self.device)
        for layer in self.cache.layers:
            layer.keys[:, :, n : n + k] = layer.keys.index_select(2, nodes)
            layer.values[:, :, n : n + k] = layer.values.index_select(2, nodes)
            layer.keys = layer.keys[:, :, : n + k]
            layer.values = layer.values[:, :, : n + k]
        self.tokens = np.concatenate([self.tokens, self.tree[list(path)]])
        self.tree = np.empty(0, dtype=np.int64)


def tree_mask(draft: Draft) -> torch.Tensor:
    """[m, m] bool: node i may attend to node j (j is i or one of its ancestors)."""
    m = len(draft)
    if draft.parents is None:
        return torch.ones(m, m, dtype=torch.bool).tril()
    allowed = torch.eye(m, dtype=torch.bool)
    for i, p in enumerate(draft.parents):
        if p >= 0:
            allowed[i] |= allowed[p]
    return allowed


@dataclass(eq=False)
class TransformersModel:
    """A loaded transformers model with its tokenizer and where it came from.

    ``dtype`` and ``device`` are as asked (``"int8"``, ``"auto"``...); ``compute_dtype`` is
    what the parameters hold."""

    scores_trees: ClassVar[bool] = True
    supports_vocab: ClassVar[bool] = True
    cpu_only: ClassVar[bool] = False
    dtypes: ClassVar[tuple[str, ...]] = DTYPES
    encoder_decoder: ClassVar[bool] = False

    ref: str
    source: str
    path: Path | None
    model: Any  # transformers.PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    dtype: str = "bfloat16"
    device: str = "cpu"
    batch_invariant: bool = False
    """Whether a block pass computes, row for row, bit for bit what one-token passes compute
    (int8 loaded ``batch_invariant``): then outputs equal the target's own exactly."""

    heads: dict[int, torch.nn.Module] = field(default_factory=dict, repr=False)
    """Draft-vocabulary heads built so far, by size (``draft_vocab``)."""

    prefixes: PrefixStore = field(default_factory=PrefixStore, repr=False)
    """Its recent prompts' cache rows, for the sessions allowed them (``pooled``)."""

    @classmethod
    def reference_problem(cls, ref: str) -> None:
        """None: every reference resolves (``resolve``) or fails with its own message."""
        return None

    @classmethod
    def from_spec(
        cls,
        spec: LoadSpec,
        progress: bool = True,
        share_tokenizer: Any = None,
        batch_invariant: bool = False,
    ) -> TransformersModel:
        """``load_transformers`` with the spec's reference, dtype and device."""
        return load_transformers(
            spec.ref, spec.dtype, spec.device, progress, share_tokenizer, batch_invariant
        )

    def session(self, name: str, vocab: int | None = None) -> TransformersScorer:
        """A fresh KV-cached scorer over this model (its own cache); ``vocab``: a drafter's
        draft vocabulary, its head cut to that many ids (``draft_vocab``; None: the whole)."""
        return TransformersScorer(self.model, name, self.draft_head(vocab))

    def draft_head(self, vocab: int | None) -> torch.nn.Module | None:
        """The output head of a ``vocab``-id draft vocabulary (built once per size), or None
        where it keeps the whole head."""
        from csdraft.models.draft_vocab import cut_head, kept_ids

        if vocab is None:
            return None
        if vocab not in self.heads:
            head = self.model.get_output_embeddings()
            keep = kept_ids(self.tokenizer, vocab, head.out_features)
            try:
                self.heads[vocab] = cut_head(head, keep) if len(keep) < head.out_features else None
            except TypeError as e:
                raise UsageError(f"{self.ref}: {e}") from None
        return self.heads[vocab]

    def parameter_count(self) -> int:
        """Parameters, int8 layers' weights included."""
        from csdraft.models.int8 import parameter_count

        return parameter_count(self.model)

    def weight_bytes(self) -> int:
        """Bytes of the weights, int8 layers' int8 weights and scales included."""
        from csdraft.models.int8 import weight_bytes

        return weight_bytes(self.model)

    def int8_layers(self) -> int:
        """How many linear layers run in int8 (each projection of a fused group counted)."""
        from csdraft.models.int8 import Int8Layer, Part, SharedInput

        fused = {id(m.layer) for m in self.model.modules() if isinstance(m, SharedInput)}
        return sum(
            isinstance(m, Part) or (isinstance(m, Int8Layer) and id(m) not in fused)
            for m in self.model.modules()
        )

    def next_logits(self, context: Sequence[int], prompt_tokens: int | None = None) -> torch.Tensor:
        """float32 logits of the token after ``context`` (one forward pass, no cache)."""
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            ids = torch.tensor([list(context)], dtype=torch.long, device=device)
            out = self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            return out.logits[0, -1].float().cpu()

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end generation (the generation config's and the tokenizer's)."""
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        eos = gen.eos_token_id if gen is not None else None
        ids.update([eos] if isinstance(eos, int) else (eos or []))
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    @property
    def context_length(self) -> int | None:
        """The longest context the model's config allows, when it says."""
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def vocab_size(self) -> int:
        """The width of the logits."""
        return int(self.model.config.vocab_size)

    @property
    def compute_dtype(self) -> str:
        """The torch dtype name of the parameters (int8 models compute in float32)."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def weight_format(self) -> None:
        """None: the weights are held as ``compute_dtype`` says (int8 layers aside)."""
        return None


# --------------------------------------------------------------------------- loading


def _torch_dtype(dtype: str) -> torch.dtype:
    """The dtype to load weights in (int8 models load in bfloat16, then get quantized)."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return torch.bfloat16 if dtype == "int8" else getattr(torch, dtype)


def _device_kwargs(device: str) -> tuple[dict[str, Any], str | None]:
    """from_pretrained kwargs for ``device`` and the device to move to afterwards (or None)."""
    if device == "auto":
        return {"device_map": "auto"}, None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r} (try cpu, cuda, cuda:N or auto)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CsdraftError(f"device {device!r} requested but CUDA is not available to torch")
    return {}, (None if dev.type == "cpu" else device)


def _dir_load(loader: Any, res: _Resolved, **kwargs: Any) -> Any:
    assert res.path is not None
    if res.kind in ("pack", "gguf"):
        check_prepared(res.path)
    try:
        return loader.from_pretrained(str(res.path), **kwargs)
    except CsdraftError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into a one-line user error
        raise CsdraftError(f"could not load {res.source}: {one_line(exc)}") from exc


def load_tokenizer(ref: str, progress: bool = True) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of ``ref`` (same resolution as ``load_transformers``)."""
    from transformers import AutoTokenizer

    res = resolve(ref, progress=progress)
    with quiet_transformers(True):  # transformers' own load bars are noise once a model is prepared
        if res.kind == "hub":
            return _hub_load(AutoTokenizer, ref)
        return _dir_load(AutoTokenizer, res)


def local_context_length(ref: str, progress: bool = True) -> int | None:
    """The model's maximum context from its local config.json (None for hub ids, when the
    config does not say, or for an encoder-decoder: ``seq2seq.length_problem``); cheap: no
    weights are read."""
    res = resolve(ref, progress=progress)
    config = res.path / "config.json" if res.path is not None else None
    if config is None or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    value = None if data.get("is_encoder_decoder") else data.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def load_transformers(
    ref: str,
    dtype: str = "bfloat16",
    device: str = "cpu",
    progress: bool = True,
    share_tokenizer: Any = None,
    batch_invariant: bool = False,
) -> TransformersModel:
    """Load model and tokenizer for ``ref`` in eval mode with the requested dtype and device.

    ``share_tokenizer``: a loaded model (the target) whose tokenizer object is reused when
    both models' tokenizer files are byte-identical, skipping a second load.
    ``batch_invariant``: an int8 model takes the batch-invariant path (``invariant``: per-token
    activation scales, row-wise attention), as a target should; other dtypes have none."""
    torch_dtype = _torch_dtype(dtype)
    dev_kwargs, move_to = _device_kwargs(device)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    res = resolve(ref, progress=progress)
    tokenizer = None
    if share_tokenizer is not None:
        digest = tokenizer_files_digest(res.path)
        if digest is not None and digest == tokenizer_files_digest(
            getattr(share_tokenizer, "path", None)
        ):
            tokenizer = share_tokenizer.tokenizer
    with quiet_transformers(True):  # transformers' own load bars are noise once a model is prepared
        source = ref if res.kind == "hub" else res
        fetch = _hub_load if res.kind == "hub" else _dir_load
        tokenizer = tokenizer or fetch(AutoTokenizer, source)
        seq2seq = bool(fetch(AutoConfig, source).is_encoder_decoder)
        loader = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        model = fetch(loader, source, dtype=torch_dtype, **dev_kwargs)
    if move_to is not None:
        model = model.to(move_to)
    if dtype == "int8":
        if next(model.parameters()).device.type != "cpu":
            raise UsageError(f"{ref}: dtype int8 (dynamic quantization) runs on the CPU only")
        from csdraft.models.int8 import _int8_cache, quantize_int8

        if batch_invariant and seq2seq:
            raise UsageError(
                f"{ref}: an encoder-decoder runs int8 only as fbgemm's dynamic int8 (its "
                "attention has no batch-invariant path); set batch_invariant: false"
            )
        if batch_invariant:
            from csdraft.models.invariant import RowInt8Linear, make_batch_invariant

            model = make_batch_invariant(quantize_int8(model, _int8_cache(res), RowInt8Linear))
        else:
            model = quantize_int8(model, _int8_cache(res))
    if not batch_invariant:
        from csdraft.models.attention import use_gqa_attention

        model = use_gqa_attention(model)
    model.eval()
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        gen.pad_token_id = eos
    return (Seq2SeqModel if seq2seq else TransformersModel)(
        ref=ref,
        source=res.source,
        path=res.path,
        model=model,
        tokenizer=tokenizer,
        dtype=dtype,
        device=device,
        batch_invariant=batch_invariant and dtype == "int8",
    )


@dataclass(eq=False)
class Seq2SeqModel(TransformersModel):
    """A loaded encoder-decoder (T5, BART...): its sessions are ``seq2seq.Seq2SeqScorer``s
    (the prompt through the encoder once, decoder tokens scored and cached); chains only, over
    the whole vocabulary (``seq2seq.check_ladder`` refuses trees and draft vocabularies)."""

    scores_trees: ClassVar[bool] = False
    encoder_decoder: ClassVar[bool] = True

    def session(self, name: str, vocab: int | None = None) -> Any:
        """A fresh encoder-decoder scorer (``vocab`` must be None)."""
        from csdraft.models.seq2seq import Seq2SeqScorer

        if vocab is not None:
            raise UsageError(f"{self.ref}: an encoder-decoder has no draft vocabulary; drop vocab")
        return Seq2SeqScorer(self.model, name)

    def next_logits(self, context: Sequence[int], prompt_tokens: int | None = None) -> torch.Tensor:
        """float32 logits of the token after ``context``, its first ``prompt_tokens`` the input
        (None: all of it, so the logits of the first output token)."""
        from csdraft.models.seq2seq import next_logits

        return next_logits(self.model, context, prompt_tokens)

    @property
    def context_length(self) -> None:
        """None: input and output have limits of their own (``seq2seq.length_problem``)."""
        return None
