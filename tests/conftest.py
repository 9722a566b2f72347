"""Shared fixtures: tiny randomly initialised causal LMs and their reference greedy decoding.

Every model here is float32, in eval mode and built from a fixed seed (without touching the
global torch RNG), so the exactness tests compare like with like. ``initializer_range`` is
larger than the transformers default so that logits are spread out: near-ties between the two
best tokens, where a block forward pass and a one-token forward pass may round differently,
become rare. Where a test still sees a divergence, ``greedy_margin`` reports the gap between the
target's two best logits there, so a near-tie is told apart from a bug.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import cache

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ARCHS = ("llama", "qwen2", "gpt2")
"""Architectures whose KV cache ``HFRung`` crops correctly (GPT-2 checked in test_engine)."""

SMALL_VOCAB = 48
LARGE_VOCAB = 2048


def build_model(
    arch: str,
    vocab: int,
    *,
    hidden: int = 16,
    layers: int = 1,
    seed: int = 0,
    init_range: float = 0.3,
) -> torch.nn.Module:
    """A tiny random causal LM of one architecture, with no eos/bos/pad token configured."""
    special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if arch in ("llama", "qwen2"):
        config_cls, cls = {
            "llama": (LlamaConfig, LlamaForCausalLM),
            "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        }[arch]
        config = config_cls(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
            initializer_range=init_range,
            **special,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=layers,
            n_head=2,
            n_positions=512,
            initializer_range=init_range,
            **special,
        )
        cls = GPT2LMHeadModel
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.float().eval()


def perturb(model: torch.nn.Module, noise: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with Gaussian noise of standard deviation ``noise`` on every weight:
    a drafter that agrees with the target often, but not always."""
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in twin.parameters():
            param.add_(noise * torch.randn(param.shape, generator=gen))
    return twin.eval()


@torch.inference_mode()
def reference_greedy(
    model: torch.nn.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    eos_id: int | None = None,
) -> list[int]:
    """The target's own greedy decoding through ``model.generate`` (eos disabled by default)."""
    ids = torch.tensor([list(prompt)], dtype=torch.long)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        eos_token_id=eos_id,
        pad_token_id=0 if eos_id is None else eos_id,
    )
    return out[0, len(prompt) :].tolist()


@torch.inference_mode()
def greedy_margin(model: torch.nn.Module, context: Sequence[int]) -> float:
    """Gap between the two best next-token logits of ``model`` after ``context``."""
    logits = model(torch.tensor([list(context)], dtype=torch.long)).logits[0, -1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def divergence_report(
    model: torch.nn.Module, prompt: Sequence[int], got: Sequence[int], want: Sequence[int]
) -> str:
    """Where two generations part, and the target's top-2 logit margin there."""
    i = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if i is None:
        return f"lengths differ: got {len(got)} tokens, want {len(want)}"
    margin = greedy_margin(model, list(prompt) + list(want[:i]))
    return (
        f"diverged at new token {i}: got {got[i]}, want {want[i]}; target top-2 logit margin "
        f"there {margin:.3g} ({'near-tie' if margin < 1e-4 else 'not a near-tie: a bug'})"
    )


class Zoo:
    """Tiny models built once per session, and their reference greedy decodings (cached)."""

    def __init__(self) -> None:
        self._refs: dict[tuple[int, tuple[int, ...], int | None], list[int]] = {}

    @cache  # noqa: B019 - the zoo lives for the whole session
    def model(
        self,
        arch: str,
        vocab: int,
        hidden: int = 16,
        layers: int = 1,
        seed: int = 0,
        init_range: float = 0.3,
    ) -> torch.nn.Module:
        return build_model(
            arch, vocab, hidden=hidden, layers=layers, seed=seed, init_range=init_range
        )

    @cache  # noqa: B019
    def noisy(self, base: torch.nn.Module, noise: float, seed: int = 1) -> torch.nn.Module:
        return perturb(base, noise, seed)

    def reference(
        self,
        model: torch.nn.Module,
        prompt: Sequence[int],
        max_new_tokens: int,
        eos_id: int | None = None,
    ) -> list[int]:
        """Greedy reference, computed once per (model, prompt, eos) for the longest length
        asked so far (a shorter greedy decoding is a prefix of a longer one)."""
        key = (id(model), tuple(int(t) for t in prompt), eos_id)
        have = self._refs.get(key)
        if have is None or (len(have) < max_new_tokens and not _ended(have, eos_id)):
            have = reference_greedy(model, prompt, max(max_new_tokens, 32), eos_id)
            self._refs[key] = have
        return have[:max_new_tokens]

    divergence = staticmethod(divergence_report)
    margin = staticmethod(greedy_margin)


def _ended(tokens: list[int], eos_id: int | None) -> bool:
    return eos_id is not None and bool(tokens) and tokens[-1] == eos_id


@pytest.fixture(scope="session")
def zoo() -> Zoo:
    """Session-wide cache of tiny models and reference decodings."""
    return Zoo()


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_model(arch, vocab, hidden=16, layers=1, seed=0)`` builds a fresh model."""
    return build_model


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one intra-op thread: on a busy 2-core machine the thread
    pool costs far more than it saves for 16-wide layers (about 1 ms against 25-40 ms per
    forward pass here). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
